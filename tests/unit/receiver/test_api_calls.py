"""otad's API without a server: messages from stored records, feature deltas, page tokens, the audit identity,
the status of each failure, HTTP routing and the CLI's arguments."""

from __future__ import annotations

import argparse

import grpc
import pytest

from receiver.api import convert
from receiver.api.calls import _decode_token, _encode_token
from receiver.api.server import ApiHttp, _HttpError, identity, status_of
from receiver.cli_api import _duration_s, register
from storage import StorageError


def test_row_round_trip_keeps_each_value_type():
    row = {
        "uid": "r1",
        "signal": "logs",
        "time_unix_nano": 5,
        "service": "checkout",
        "class_uid": 6999,
        "activity_id": 1,
        "severity_id": 2,
        "status_id": 0,
        "fields": {"message": "ok", "http_response.code": 200, "duration": 1.5, "cached": True},
    }
    msg = convert.row_message(row)
    back = convert.row_from_message(msg)
    assert back.fields == row["fields"] and back.service == "checkout" and back.uid == "r1"
    assert msg.fields["cached"].bool_value is True and msg.fields["http_response.code"].int_value == 200


def test_feature_deltas_compare_with_the_neighbours():
    row = {"fields": {"duration": 30000.0, "status": "ok", "route": "/pay", "extra": "x"}}
    neighbors = [
        {"fields": {"duration": 20.0 + i, "status": "ok", "route": "/cart", "user": "u"}} for i in range(5)
    ]
    deltas = {d.feature: (d.observed, d.typical) for d in convert.feature_deltas(row, neighbors)}
    assert deltas["duration"] == ("3e+04", "22")
    assert deltas["route"] == ("/pay", "/cart")
    assert deltas["extra"] == ("x", "absent") and deltas["user"] == ("absent", "u")
    assert "status" not in deltas
    assert convert.feature_deltas(row, []) == []


def test_anomaly_message_from_a_stored_record():
    record = {
        "uid": "f1",
        "source_uid": "r1",
        "signal": "traces",
        "service": "auth",
        "time_ms": 1000,
        "detected_ms": 2000,
        "score": 72.5,
        "threshold": 60.0,
        "model_version": "v1",
        "explanation": "Unusual span",
        "event": {
            "detector": "knn+latency",
            "neighbors": ["a", "b"],
            "raw_score": 1e-4,
            "suppressed_by": "fb1",
        },
    }
    msg = convert.anomaly_message(record)
    assert msg.time_unix_nano == 1_000_000_000 and msg.detected_unix_nano == 2_000_000_000
    assert (
        list(msg.neighbor_uids) == ["a", "b"] and msg.detector == "knn+latency" and msg.suppressed_by == "fb1"
    )


def test_model_message_takes_seconds_or_nanoseconds():
    info = {"version": "v1", "created": 1_700_000_000.5, "rows": 10, "quality": {"auc": 0.9, "x": None}}
    msg = convert.model_message(info)
    assert msg.created_unix_nano == 1_700_000_000_500_000_000 and msg.quality["auc"] == 0.9
    assert convert.struct({"nan": float("nan"), "nested": {"t": (1, 2)}})["nan"] == "nan"


def test_page_tokens_round_trip_and_refuse_garbage():
    token = _encode_token({"detected_ms": 123, "uid": "abc"})
    assert _decode_token(token) == (123, "abc")
    with pytest.raises(ValueError, match="page_token"):
        _decode_token("not-a-token")


def test_identity_is_a_fingerprint_never_the_token():
    who = identity("Bearer s3cret")
    assert who.startswith("token:") and len(who) == len("token:") + 12 and "s3cret" not in who
    assert identity(None) == "" and identity("Basic abc") == ""


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (LookupError("no such"), grpc.StatusCode.NOT_FOUND),
        (ValueError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (RuntimeError("busy"), grpc.StatusCode.FAILED_PRECONDITION),
        (NotImplementedError("none"), grpc.StatusCode.UNIMPLEMENTED),
        (StorageError("down"), grpc.StatusCode.UNAVAILABLE),
        (ZeroDivisionError(), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_of_each_failure(exc, code):
    assert status_of(exc)[0] == code


def test_http_paths_name_service_and_method():
    assert ApiHttp._method("/v1/otad/AnomalyService/ListAnomalies").name == "ListAnomalies"
    assert ApiHttp._method("/v1/otad/otad.v1.ModelService/Rollback").name == "Rollback"
    with pytest.raises(_HttpError) as err:
        ApiHttp._method("/v1/otad/AnomalyService/Nope")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_cli_commands_and_durations():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["feedback", "suppress", "u1", "--ttl", "2h", "--service", "*"])
    assert (args.action, args.ttl, args.service) == ("suppress", 7200, "*")
    args = parser.parse_args(["models", "rollback", "v7", "--http", "https://otad:4318", "--json"])
    assert (args.action, args.version, args.http, args.json) == ("rollback", "v7", "https://otad:4318", True)
    assert parser.parse_args(["models"]).action == "list"
    assert _duration_s("30s") == 30 and _duration_s("7d") == 604800 and _duration_s("90") == 90
    with pytest.raises(argparse.ArgumentTypeError):
        _duration_s("soon")
