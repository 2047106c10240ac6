"""Row mapper: logs (class rules, bodies, severity table, uids, time fallbacks) and the batch contract."""

from __future__ import annotations

import json

import pytest

from model.schema import (
    API_ACTIVITY,
    APPLICATION_ERROR,
    APPLICATION_LOG,
    AUTHENTICATION,
    HTTP_ACTIVITY,
    content_uid,
)
from receiver.rows.mapper import MappedBatch, Rejection, RowMapper
from tests.unit.receiver.rows_helpers import SPAN, T0, TRACE, logs_request


def one_row(**record):
    batch = RowMapper().map_logs(logs_request(record), received_unix_nano=42)
    assert not batch.rejections, batch.rejections
    assert len(batch.rows) == 1
    return batch.rows[0]


@pytest.mark.parametrize(
    ("record", "class_uid", "activity_id", "status_id"),
    [
        (
            {
                "body": "GET /cart 200",
                "attrs": {"http.request.method": "GET", "http.response.status_code": 200},
            },
            HTTP_ACTIVITY,
            3,
            1,
        ),
        (
            {"body": "POST /pay", "attrs": {"http.method": "POST", "http.status_code": 503}},
            HTTP_ACTIVITY,
            6,
            2,
        ),
        (
            {"body": "weird", "attrs": {"http.request.method": "BREW", "http.response.status_code": 404}},
            HTTP_ACTIVITY,
            99,
            2,
        ),
        ({"body": "no method", "attrs": {"url.path": "/x"}}, HTTP_ACTIVITY, 0, 0),
        ({"body": "user bob logged in successfully", "attrs": {"user.name": "bob"}}, AUTHENTICATION, 1, 1),
        ({"body": "login failed: invalid password for bob"}, AUTHENTICATION, 1, 2),
        ({"body": "session closed", "event_name": "user.logout"}, AUTHENTICATION, 2, 0),
        ({"body": "check", "attrs": {"auth.result": "denied"}}, AUTHENTICATION, 0, 2),
        ({"body": "call", "attrs": {"rpc.service": "Cart", "rpc.method": "GetCart"}}, API_ACTIVITY, 2, 0),
        ({"body": "call", "attrs": {"rpc.method": "DeleteItem"}, "severity_number": 17}, API_ACTIVITY, 4, 2),
        ({"body": "db down", "severity_number": 17}, APPLICATION_ERROR, 1, 2),
        ({"body": "oops", "attrs": {"exception.type": "KeyError"}}, APPLICATION_ERROR, 1, 0),
        ({"body": "oops", "attrs": {"error.type": "timeout"}}, APPLICATION_ERROR, 1, 0),
        ({"body": "cart has 3 items", "severity_number": 9}, APPLICATION_LOG, 0, 0),
    ],
)
def test_log_class_activity_and_status(record, class_uid, activity_id, status_id):
    row = one_row(**record)
    assert (row.class_uid, row.activity_id, row.status_id) == (class_uid, activity_id, status_id)


def test_http_wins_over_error_severity_and_auth_words():
    row = one_row(
        body="POST /reset-password failed",
        severity_number=17,
        attrs={"http.request.method": "POST", "http.response.status_code": 500},
    )
    assert (row.class_uid, row.activity_id, row.status_id) == (HTTP_ACTIVITY, 6, 2)
    # ... but an event named as a login is an Authentication event even with HTTP attributes.
    row = one_row(
        event_name="user.login", attrs={"http.request.method": "POST", "http.response.status_code": 401}
    )
    assert (row.class_uid, row.activity_id, row.status_id) == (AUTHENTICATION, 1, 2)


def test_http_columns_from_new_and_old_semantic_conventions():
    row = one_row(
        body="req",
        attrs={
            "http.request.method": "GET",
            "http.method": "POST",
            "url.full": "https://shop.example:8443/a/b?q=1",
            "http.target": "/old?x=1",
            "user_agent.original": "curl/8",
            "http.request.body.size": 10,
            "http.response.status_code": "404",
            "http.response_content_length": 99,
            "http.route": "/a/{id}",
            "client.address": "10.1.2.3",
            "client.port": 5555,
            "client.geo.country.iso_code": "DE",
            "server.port": 8443,
            "enduser.id": "u-1",
            "session.id": "s-9",
        },
    )
    f = row.fields
    assert f["http_request.http_method"] == "GET"  # the new name wins over http.method
    assert f["http_request.url.path"] == "/old"  # http.target (query stripped) outranks url.full's path
    assert f["http_request.url.hostname"] == "shop.example"
    assert f["http_request.user_agent"] == "curl/8"
    assert f["http_request.length"] == 10
    assert f["http_response.code"] == 404 and f["status_code"] == "404"
    assert f["http_response.length"] == 99
    assert f["http_request.route"] == "/a/{id}"
    assert (f["src_endpoint.ip"], f["src_endpoint.port"], f["src_endpoint.location.country"]) == (
        "10.1.2.3",
        5555,
        "DE",
    )
    assert f["dst_endpoint.port"] == 8443
    assert (f["actor.user.name"], f["actor.session.uid"]) == ("u-1", "s-9")
    assert not any(k.startswith("unmapped.") for k in f), f  # mapped attributes are not repeated


def test_unmapped_attributes_keep_their_types():
    row = one_row(
        body="x",
        attrs={
            "retries": 3,
            "ratio": 0.25,
            "cached": True,
            "region": "eu",
            "tags": ["a", 1],
            "ctx": {"k": "v"},
            "blob": b"\x01\xff",
            "is_anomaly": True,
            "anomaly_type": "latency",
            "label": 1,
            "ground_truth": "x",
        },
    )
    f = row.fields
    assert f["unmapped.retries"] == 3 and isinstance(f["unmapped.retries"], int)
    assert f["unmapped.ratio"] == 0.25
    assert f["unmapped.cached"] == 1 and type(f["unmapped.cached"]) is int
    assert f["unmapped.region"] == "eu"
    assert f["unmapped.tags"] == '["a",1]'
    assert f["unmapped.ctx"] == '{"k":"v"}'
    assert f["unmapped.blob"] == "01ff"
    # label-like fields are kept (the feature contract excludes them), never dropped here
    assert (f["unmapped.is_anomaly"], f["unmapped.anomaly_type"], f["unmapped.label"]) == (1, "latency", 1)
    assert f["unmapped.ground_truth"] == "x"


def test_common_fields_resource_and_ids():
    row = one_row(body="hello", severity_text="INFO", severity_number=9, trace_id=TRACE, span_id=SPAN)
    assert row.service == "checkout" and row.signal == "logs"
    assert row.resource == {"service.name": "checkout", "host.name": "node-1", "k8s.labels": '["a","b"]'}
    assert row.fields["device.hostname"] == "node-1" and row.fields["scope.name"] == "app"
    assert row.fields["message"] == "hello" and row.fields["severity_text"] == "INFO"
    assert row.trace_id == TRACE.hex() and row.span_id == SPAN.hex() and row.trace_id == row.trace_id.lower()
    assert "status_code" not in row.fields and "duration" not in row.fields  # absent stays absent


def test_unknown_service_and_zero_ids():
    batch = RowMapper().map_logs(
        logs_request({"body": "x", "trace_id": bytes(16), "span_id": bytes(8)}, resource={})
    )
    row = batch.rows[0]
    assert row.service == "unknown_service" and row.trace_id == "" and row.span_id == ""
    assert "device.hostname" not in row.fields


@pytest.mark.parametrize(
    ("number", "text", "severity_id"),
    [
        (0, "", 0),
        (1, "", 1),
        (4, "", 1),
        (5, "", 1),
        (8, "", 1),
        (9, "", 1),
        (12, "", 1),
        (13, "", 3),
        (16, "", 3),
        (17, "", 4),
        (20, "", 4),
        (21, "", 6),
        (24, "", 6),
        (9, "ERROR", 1),
        (0, "TRACE", 1),
        (0, "debug", 1),
        (0, "INFO", 1),
        (0, "WARN", 3),
        (0, "Warning", 3),
        (0, "ERROR", 4),
        (0, "FATAL", 6),
        (0, "CRITICAL", 6),
        (0, "INFO2", 1),
        (0, "chatty", 0),
    ],
)
def test_severity_table(number, text, severity_id):
    row = one_row(body="x", severity_number=number, severity_text=text)
    assert row.severity_id == severity_id


def test_error_severity_text_alone_makes_an_application_error():
    row = one_row(body="disk full", severity_text="ERROR")
    assert (row.class_uid, row.status_id, row.severity_id) == (APPLICATION_ERROR, 2, 4)


def test_plain_json_body_keys_are_treated_like_attributes():
    body = json.dumps(
        {
            "msg": "GET done",
            "http": {"method": "GET", "status_code": 200},
            "user.name": "ann",
            "latency_ms": 12.5,
            "deep": {"a": {"b": 1}},
            "level": "warn",
        }
    )
    row = one_row(body=body, attrs={"user.name": "attr-wins"})
    f = row.fields
    assert f["message"] == "GET done"
    assert (row.class_uid, row.activity_id, row.status_id) == (HTTP_ACTIVITY, 3, 1)
    assert f["http_request.http_method"] == "GET" and f["http_response.code"] == 200
    assert f["actor.user.name"] == "attr-wins"  # record attributes beat body keys
    assert f["unmapped.latency_ms"] == 12.5 and f["unmapped.deep.a.b"] == 1
    assert f["severity_text"] == "warn" and row.severity_id == 3  # level used when the record has none


def test_kvlist_body_is_structured_and_message_falls_back_to_compact_json():
    row = one_row(body={"user.name": "zed", "items": 3})
    assert row.fields["actor.user.name"] == "zed" and row.fields["unmapped.items"] == 3
    assert row.fields["message"] == '{"user.name":"zed","items":3}'


def test_non_json_and_oversized_bodies_stay_text():
    assert one_row(body="{not json").fields["message"] == "{not json"
    big = json.dumps({"message": "m", "pad": "x" * 70_000})
    row = one_row(body=big)
    # Not parsed (over the JSON body limit): kept as text, its prefix within the stored-message bound.
    assert big.startswith(row.fields["message"]) and "unmapped.pad" not in row.fields
    assert "message" in row.fields["otad.truncated"]


def test_json_nesting_deeper_than_eight_levels_becomes_a_json_string():
    deep: dict = {"leaf": 1}
    for _ in range(10):
        deep = {"n": deep}
    row = one_row(body=json.dumps({"message": "m", "root": deep}))
    keys = [k for k in row.fields if k.startswith("unmapped.root")]
    assert len(keys) == 1 and keys[0].count(".") == 8  # "unmapped." + 7 more levels of keys
    assert json.loads(row.fields[keys[0]])  # the rest kept whole, as JSON


def test_ocsf_shaped_json_body():
    body = {
        "class_uid": 3002,
        "activity_id": 2,
        "severity_id": 2,
        "status_id": 1,
        "time": 1_700_000_123_456,
        "message": "bob logged off",
        "type_uid": 300202,
        "status": "Success",
        "actor": {"user": {"name": "bob"}},
        "src_endpoint": {"ip": "1.2.3.4"},
        "http_request": {"http_method": "GET", "url": {"path": "/bye"}},
        "duration": 7,
        "observables": [{"name": "ip"}],
    }
    row = one_row(body=json.dumps(body), time_unix_nano=0, observed_time_unix_nano=5)
    assert (row.class_uid, row.activity_id, row.severity_id, row.status_id) == (3002, 2, 2, 1)
    assert row.time_unix_nano == 1_700_000_123_456 * 1_000_000
    f = row.fields
    assert f["message"] == "bob logged off"
    assert f["actor.user.name"] == "bob" and f["src_endpoint.ip"] == "1.2.3.4"
    assert f["http_request.http_method"] == "GET" and f["http_request.url.path"] == "/bye"
    assert f["duration"] == 7.0 and isinstance(f["duration"], float)
    assert f["observables"] == '[{"name":"ip"}]'
    assert "type_uid" not in f and "status" not in f and "class_uid" not in f


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"time_unix_nano": 7, "observed_time_unix_nano": 9}, 7),
        ({"time_unix_nano": 0, "observed_time_unix_nano": 9}, 9),
        ({"time_unix_nano": 0, "observed_time_unix_nano": 0}, 42),
    ],
)
def test_time_fallbacks(record, expected):
    assert one_row(body="x", **record).time_unix_nano == expected


def test_time_falls_back_to_now_without_received_time():
    batch = RowMapper().map_logs(logs_request({"body": "x", "time_unix_nano": 0}))
    assert batch.rows[0].time_unix_nano > T0


def test_uid_from_log_record_uid_or_stable_content_hash():
    assert one_row(body="x", attrs={"log.record.uid": "01J9Z"}).uid == "01J9Z"
    request = logs_request(
        {"body": "a", "attrs": {"k": 1}}, {"body": "b", "attrs": {"k": 1}}, {"body": "a", "attrs": {"k": 2}}
    )
    first = [r.uid for r in RowMapper().map_logs(request, received_unix_nano=1).rows]
    second = [r.uid for r in RowMapper().map_logs(request, received_unix_nano=999).rows]
    assert first == second and len(set(first)) == 3
    assert first[0] == content_uid("checkout", T0, 0, "", "a", {"k": 1}, "", "")


def test_otad_own_events_are_ignored_and_counted():
    request = logs_request(
        {"body": "a", "event_name": "otad.anomaly"},
        {"body": "b"},
        {"body": "c", "attrs": {"event.name": "otad.anomaly"}},
    )
    batch = RowMapper().map_logs(request)
    assert (len(batch.rows), batch.ignored, batch.total) == (1, 2, 3)
    batch = RowMapper().map_logs(logs_request({"body": "a"}, {"body": "b"}, scope="otad"))
    assert (len(batch.rows), batch.ignored, batch.total) == (0, 2, 2)


def test_bad_ids_are_rejected_with_their_index_and_the_rest_survive():
    request = logs_request(
        {"body": "ok"},
        {"body": "bad", "trace_id": b"\x01" * 5},
        {"body": "ok2"},
        {"body": "bad2", "span_id": b"\x01" * 3},
    )
    batch = RowMapper().map_logs(request)
    assert [r.fields["message"] for r in batch.rows] == ["ok", "ok2"]
    assert batch.rejections == [
        Rejection("resource 0, scope 0, record 1", "invalid trace_id length 5"),
        Rejection("resource 0, scope 0, record 3", "invalid span_id length 3"),
    ]
    assert len(batch.rows) + len(batch.rejections) + batch.ignored == batch.total == 4
    assert batch.error_message("log records") == (
        "2/4 log records rejected: invalid trace_id length 5 (first at resource 0, scope 0, record 1)"
        "; and 1 other reason"
    )


def test_an_exception_while_mapping_one_item_becomes_a_rejection(monkeypatch):
    import receiver.rows.logs as rows_logs

    real = rows_logs.parse_body

    def flaky(record):
        if record.body.string_value == "boom":
            raise KeyError("surprise")
        return real(record)

    monkeypatch.setattr(rows_logs, "parse_body", flaky)
    monkeypatch.setattr("receiver.rows.mapper.map_log_record", rows_logs.map_log_record)
    batch = RowMapper().map_logs(logs_request({"body": "a"}, {"body": "boom"}, {"body": "c"}))
    assert len(batch.rows) == 2 and batch.total == 3
    assert batch.rejections[0].index == "resource 0, scope 0, record 1"
    assert "KeyError" in batch.rejections[0].reason and "surprise" in batch.rejections[0].reason


def test_error_message_is_empty_without_rejections():
    assert MappedBatch(rows=[], rejections=[], total=3).error_message("log records") == ""
