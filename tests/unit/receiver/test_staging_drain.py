"""The backlog drain's log line when the store fails under it: an error while serving, an info line at
shutdown (the store closes under the drain; the rows stay staged and the drain resumes at the next start).

The store is a stand-in whose queries raise StorageError: what is tested is the drain's handling of that
error, which a real Milvus Lite would only produce by being closed mid-query."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest

from receiver.staging import Staging
from storage import StorageError


class _ClosedStore:
    def existing_row_uids(self, version, uids):
        raise StorageError("query otad_rows_v1: the Milvus store is closed")


def _staging(stop: threading.Event) -> Staging:
    staging = Staging.__new__(Staging)  # only what _drain touches
    staging.store = _ClosedStore()  # type: ignore[assignment]
    staging._stop = stop
    staging._staged = lambda: [SimpleNamespace(uid="r1")]  # type: ignore[method-assign,assignment,list-item]
    return staging


@pytest.mark.parametrize(("stopping", "level"), [(False, logging.ERROR), (True, logging.INFO)])
def test_a_store_error_under_the_drain_is_an_error_only_while_serving(caplog, stopping, level):
    stop = threading.Event()
    if stopping:
        stop.set()
    staging = _staging(stop)
    with caplog.at_level(logging.INFO, logger="receiver.staging"):
        staging._drain("v1")
    (record,) = [r for r in caplog.records if "draining the backlog stopped" in r.getMessage()]
    assert record.levelno == level
    assert "resumes at the next start" in record.getMessage()
