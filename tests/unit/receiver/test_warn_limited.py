"""Refusal warnings are rate-limited per kind, with a count of what was suppressed."""

from __future__ import annotations

import logging

from receiver import ratelog as export


def test_repeats_are_suppressed_and_counted(caplog, monkeypatch):
    clock = iter([100.0, 101.0, 102.0, 111.0])
    monkeypatch.setattr(export.time, "monotonic", lambda: next(clock))
    log = logging.getLogger("test.warn_limited")
    with caplog.at_level(logging.WARNING, logger="test.warn_limited"):
        for _ in range(4):
            export.warn_limited(log, "unit-test-key", "refused %s", "x")
    assert [r.getMessage() for r in caplog.records] == [
        "refused x",
        "refused x (2 similar messages suppressed)",
    ]
