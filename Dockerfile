# syntax=docker/dockerfile:1
# otad container image: `docker build -t otad:0.1.0 .`
#
# Two stages: `build` installs otad and its pinned dependencies (with the CPU-only torch wheel) into a venv at
# /opt/otad; the runtime stage copies only that venv onto a clean python:3.11-slim, runs as uid 10001 and never
# writes outside /var/lib/otad (data: models, Milvus Lite, spool), $HOME and /tmp, so it runs with
# readOnlyRootFilesystem (the Helm chart mounts emptyDirs on $HOME and /tmp).
# Probes: OTLP/gRPC port 4317 serves grpc.health.v1 (Kubernetes native `grpc:` probes); HTTP :9464 serves
# /healthz, /readyz and /metrics. There is deliberately no HEALTHCHECK with curl (no curl in the image).
#
# Base image: python:3.11-slim; for reproducible releases pass a digest, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/otad
ENV PATH=/opt/otad/bin:$PATH

# The CPU build of torch, pinned and installed first: a bare `torch` from PyPI pulls a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
# README.md* : the glob keeps the build working before the README exists (pyproject.toml names it).
COPY pyproject.toml README.md* ./
COPY receiver/ receiver/
COPY model/ model/
COPY storage/ storage/
# Every other dependency is pinned in pyproject.toml; torch is already satisfied by the CPU wheel above.
RUN pip install . && python -c "import receiver.cli, torch; assert not torch.cuda.is_available()"

# -------------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="otad" \
      org.opencontainers.image.description="Anomaly detection for OpenTelemetry data" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

# A fixed non-root uid/gid (10001) so the chart's securityContext (runAsUser/fsGroup) matches the image.
RUN groupadd --system --gid 10001 otad \
 && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /home/otad --create-home \
      --shell /usr/sbin/nologin otad \
 && mkdir -p /var/lib/otad \
 && chown 10001:10001 /var/lib/otad

COPY --from=build /opt/otad /opt/otad

# Listen on all interfaces inside the container (otad's own defaults bind localhost); data on the volume.
ENV PATH=/opt/otad/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/otad \
    MPLCONFIGDIR=/tmp/matplotlib \
    OTAD_DATA_DIR=/var/lib/otad \
    OTAD_GRPC_ENDPOINT=0.0.0.0:4317 \
    OTAD_HTTP_ENDPOINT=0.0.0.0:4318 \
    OTAD_QUERY_ENDPOINT=0.0.0.0:4320 \
    OTAD_METRICS_ENDPOINT=0.0.0.0:9464

VOLUME ["/var/lib/otad"]
WORKDIR /var/lib/otad
USER 10001:10001

# 4317 OTLP/gRPC (+ grpc.health.v1), 4318 OTLP/HTTP, 4320 otad query API (gRPC), 9464 /metrics /healthz /readyz
EXPOSE 4317 4318 4320 9464

ENTRYPOINT ["otad"]
CMD ["serve"]
