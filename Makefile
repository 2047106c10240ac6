# otad: `make run` serves on embedded Milvus Lite, `make test` runs every test, `make test-fast` the unit tests,
# `make lint` ruff and mypy. Each sets up $(VENV) first, from requirements.lock (every package pinned with hashes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.locked
STAMP  := $(VENV)/.installed

# torch is installed first and is not in requirements.lock: whether pip brings the CPU build or a multi-GB CUDA
# build depends on the index, not on the version pin. Empty: pip's own index and links (which have the CPU build
# on the CI machine); elsewhere: make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_VERSION   := 2.13.0
TORCH_INDEX_URL ?=
TORCH_INDEX      = $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))

SRC  := receiver model storage sim
LINT := $(SRC) tests benchmarks

.PHONY: setup run test test-fast lint lock proto bench demo clean

# torch, then everything in requirements.lock; then otad itself (editable, no dependency resolution).
$(DEPS): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	touch $(DEPS)

$(STAMP): $(DEPS) pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check || { echo "requirements.lock is behind pyproject.toml: run make lock"; exit 1; }
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/otad serve

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The unit tests only (pytest -m unit): about a minute on 2 cores. `make test` runs every marker.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit tests

# All three run and report; the target fails if any of them does.
lint: $(STAMP)
	@status=0; \
	$(BIN)/ruff check $(LINT) || status=1; \
	$(BIN)/ruff format --check $(LINT) || status=1; \
	$(BIN)/mypy $(SRC) || status=1; \
	exit $$status

# Re-pin requirements.lock after editing dependencies in pyproject.toml (options: [tool.pip-tools] there). Needs
# the CPU torch at hand, or TORCH_INDEX_URL as for setup: a lock resolved against a CUDA torch is refused.
lock: $(DEPS)
	$(BIN)/pip-compile --quiet $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) pyproject.toml
	@! grep -nE '^(nvidia-|triton==)' requirements.lock || { \
		echo "requirements.lock pins CUDA packages: run make lock TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"; \
		exit 1; }

# otad's own API: regenerate receiver/api/gen/ from proto/otad/v1/*.proto (grpcio-tools) and lint the .proto
# files with buf (docs/api.md). tests/unit/receiver/test_api_proto.py fails when the committed code is stale.
proto: $(STAMP)
	$(BIN)/python proto/generate.py
	cd proto && ../$(BIN)/buf lint

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py

# The whole path through a real Collector: otad simulate -> rotel -> otad -> a sink that prints each anomaly event
# as it arrives (a few minutes; options: $(BIN)/otad demo --help).
demo: $(STAMP)
	$(BIN)/otad demo

clean:
	rm -rf $(VENV) otad-data .pytest_cache .mypy_cache
