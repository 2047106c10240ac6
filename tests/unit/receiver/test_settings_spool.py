"""Spool and shutdown settings: defaults, and bad values stop start-up with one sentence naming the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from receiver.cli import load_settings
from receiver.settings import Settings


def test_defaults():
    s = Settings()
    assert (s.spool_enabled, s.spool_fsync, s.spool_fsync_interval_ms) == (True, "interval", 10)
    assert (s.spool_max_bytes, s.spool_segment_bytes, s.shutdown_grace_s) == (1 << 30, 64 << 20, 20.0)


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("OTAD_SPOOL_FSYNC", "always")
    monkeypatch.setenv("OTAD_SPOOL_ENABLED", "false")
    monkeypatch.setenv("OTAD_SHUTDOWN_GRACE_S", "3.5")
    s = Settings()
    assert (s.spool_fsync, s.spool_enabled, s.shutdown_grace_s) == ("always", False, 3.5)


def test_unknown_fsync_policy_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("OTAD_SPOOL_FSYNC", "sometimes")
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "OTAD_SPOOL_FSYNC" in err and "'always', 'interval' or 'never'" in err


def test_segment_larger_than_the_spool_is_refused():
    with pytest.raises(ValidationError, match="OTAD_SPOOL_SEGMENT_BYTES .* must be <= OTAD_SPOOL_MAX_BYTES"):
        Settings(spool_max_bytes=2 << 20, spool_segment_bytes=4 << 20)
