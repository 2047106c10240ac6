"""Shared test setup: every test is marked by its folder, and torch keeps to the CI machine's cores.

Shared helpers are imported as `tests.<module>` (pyproject's `pythonpath = ["."]`), never through sys.path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent

# Each folder of tests/ names the marker its tests carry (declared in pyproject.toml); `make test-fast` runs `-m unit`.
FOLDERS = ("unit", "integration", "e2e", "reliability", "conformance", "fuzz", "helm")

torch.set_num_threads(2)

# Every Service listens on OTAD_QUERY_ENDPOINT too, and a port in use is an error (no SO_REUSEPORT): tests (and
# the services they start, in-process or as children, at any fixture scope) get a free port, never the default
# 4320 of a Service beside them. Tests of the default set it themselves.
os.environ["OTAD_QUERY_ENDPOINT"] = "localhost:0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the folder's marker to each test (markers a module sets itself stay); a test elsewhere is an error."""
    stray = []
    for item in items:
        parts = item.path.relative_to(TESTS).parts if item.path.is_relative_to(TESTS) else ()
        if len(parts) > 1 and parts[0] in FOLDERS:
            item.add_marker(parts[0])
        else:
            stray.append(item.nodeid)
    if stray:
        raise pytest.UsageError(
            f"{len(stray)} test(s) outside tests/{{{','.join(FOLDERS)}}}/, so without a "
            f"marker; move them into one of those folders: {', '.join(stray[:5])}"
        )
