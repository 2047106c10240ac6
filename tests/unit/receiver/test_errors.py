"""Every status otad answers is chosen in receiver/otlp/errors.py: the refusal table agrees with the OTLP mapping."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from receiver.otlp import errors

ROOT = Path(__file__).resolve().parents[3]

# Where OTLP/HTTP has a more precise status than the gRPC code's default mapping.
HTTP_ONLY = {"unsupported_encoding": 415, "unsupported_media_type": 415, "method_not_allowed": 405}


@pytest.mark.parametrize("reason", sorted(errors.REFUSALS))
def test_each_refusal_has_the_otlp_status_of_its_grpc_code(reason):
    code, status = errors.REFUSALS[reason]
    assert status == HTTP_ONLY.get(reason, errors.http_status(errors.Outcome(code=code)))
    outcome = errors.refusal(reason, "why")
    assert outcome.code == code and outcome.message == "why" and not outcome.ok


def test_retryable_refusals_are_exactly_the_overload_ones():
    retryable = {r for r, (code, _) in errors.REFUSALS.items() if code == grpc.StatusCode.UNAVAILABLE}
    assert retryable == {"overloaded"}
    assert errors.COUNTED_REFUSALS <= set(errors.REFUSALS)


def test_the_transports_spell_no_status_of_their_own():
    """A status literal in a transport module would bypass the table."""
    for name in ("http_server.py", "grpc_server.py"):
        text = (ROOT / "receiver" / "otlp" / name).read_text()
        assert not re.search(r"_Refusal\(\d{3}", text), name
        assert "StatusCode.INVALID_ARGUMENT" not in text, name
