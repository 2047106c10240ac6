"""Bounds on stored fields: every mapped row fits what storage holds, is marked when cut, and is counted."""

from __future__ import annotations

import json
import re

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from model.schema import content_uid, row_to_dict
from receiver.metrics import Metrics
from receiver.otlp import handler as export_module
from receiver.otlp.grpc_server import OtlpGrpcServer
from receiver.otlp.handler import SIGNALS, ExportHandler
from receiver.rows import bounds as rb
from receiver.rows.common import ATTRIBUTE_COLUMNS, resource_context
from receiver.rows.logs import map_log_record
from receiver.rows.mapper import RowMapper
from storage import collection
from tests.unit.receiver.rows_helpers import RESOURCE, T0, kvs, logs_request, metrics_request, traces_request

MIB = 1024 * 1024
HEX32 = re.compile(r"[0-9a-f]{32}")


def row_bytes(row) -> int:
    """What storage writes (storage/collection.py `encode_row`)."""
    return len(json.dumps(row_to_dict(row), separators=(",", ":"), default=str).encode())


def map_one(*records, resource=None):
    batch = RowMapper().map_logs(logs_request(*records, resource=resource), received_unix_nano=42)
    assert not batch.rejections and len(batch.rows) == len(records)
    for row in batch.rows:
        assert row_bytes(row) <= rb.ROW_BUDGET
        assert len(row.uid.encode()) <= collection.UID_MAX
        assert len(row.service.encode()) <= collection.SERVICE_MAX
    return batch


def test_limits_match_storage():
    assert (rb.UID_MAX, rb.SERVICE_MAX, rb.TRACE_ID_MAX, rb.ROW_MAX) == (
        collection.UID_MAX,
        collection.SERVICE_MAX,
        collection.TRACE_ID_MAX,
        collection.ROW_MAX,
    )
    assert rb.TRACE_ID_MAX >= 32  # hex_id only lets 16-byte trace ids (32 hex) and 8-byte span ids through


def test_a_normal_record_is_unchanged_and_unmarked():
    record = {
        "body": "GET /cart took 12 ms",
        "severity_number": 9,
        "attrs": {"http.request.method": "GET", "log.record.uid": "0f" * 16, "thread": "w-1"},
    }
    batch = map_one(record)
    request = logs_request(record)
    ctx = resource_context(request.resource_logs[0].resource)
    expected = map_log_record(request.resource_logs[0].scope_logs[0].log_records[0], ctx, "app", 42)
    assert row_to_dict(batch.rows[0]) == row_to_dict(expected)
    assert rb.MARKER not in batch.rows[0].fields and batch.bounded == {} and batch.bounded_rows == 0


@pytest.mark.parametrize("uid", ["u" * 100, "é" * 33])  # 100 bytes; 33 characters but 66 bytes
def test_an_over_long_uid_becomes_a_stable_hash_and_the_original_is_kept(uid):
    record = {"body": "hi", "attrs": {"log.record.uid": uid}}
    first, again = map_one(record), map_one(record)
    row = first.rows[0]
    assert HEX32.fullmatch(row.uid) and row.uid == content_uid("uid", uid)
    assert again.rows[0].uid == row.uid  # a client retry or a spool replay stores the same row
    assert row.fields["metadata.uid"] == uid
    assert row.fields[rb.MARKER] == "uid"
    assert first.bounded == {"uid": 1}


def test_a_64_byte_uid_is_kept():
    row = map_one({"body": "hi", "attrs": {"log.record.uid": "a" * 64}}).rows[0]
    assert row.uid == "a" * 64 and rb.MARKER not in row.fields


@pytest.mark.parametrize("char", ["x", "é", "\U0001f600", "\x01"])  # 1, 2 and 4 UTF-8 bytes; JSON \\u escapes
def test_a_10_mib_body_is_cut_keeping_time_severity_and_the_message_start(char):
    body = "start " + char * (10 * MIB // len(char.encode()))
    batch = map_one({"body": body, "severity_number": 17, "attrs": {"http.request.method": "POST"}})
    row = batch.rows[0]
    message = row.fields["message"]
    assert body.startswith(message) and len(message) > 1000
    assert len(message.encode()) <= rb.MESSAGE_MAX
    assert (row.time_unix_nano, row.severity_id, row.service) == (T0, 4, "checkout")
    assert row.fields["http_request.http_method"] == "POST"
    assert "message" in row.fields[rb.MARKER].split(",")
    assert batch.bounded["message"] == 1


def test_10000_attributes_keep_the_mapped_columns_first():
    attrs = {f"custom.{i}": "v" * 20 for i in range(10_000)}
    attrs |= {"http.request.method": "GET", "url.path": "/cart", "http.response.status_code": 503}
    batch = map_one({"body": "busy", "attrs": attrs})
    row = batch.rows[0]
    assert len(row.fields) <= rb.FIELDS_MAX + 1
    assert row.fields["http_request.http_method"] == "GET" and row.fields["http_request.url.path"] == "/cart"
    assert row.fields["http_response.code"] == 503 and row.fields["message"] == "busy"
    assert row.fields["unmapped.custom.0"] == "v" * 20  # the first unmapped ones stay, in order
    assert row.fields[rb.MARKER] == "attributes"
    assert batch.bounded == {"attributes": 1}
    assert "attributes (1, 10007 fields -> 128)" in batch.bounded_message("log records")


def test_long_values_and_keys_are_cut_on_a_character_boundary():
    attrs = {"note": "é" * 600, "k" * 300: "x", "k" * 300 + "2": "y"}
    row = map_one({"body": "b", "attrs": attrs}).rows[0]
    assert row.fields["unmapped.note"] == "é" * 512  # 1024 bytes, never half a character
    long_keys = [key for key in row.fields if key.startswith("unmapped.kkk")]
    assert len(long_keys) == 2 and all(len(key.encode()) <= rb.KEY_MAX for key in long_keys)
    assert row.fields[rb.MARKER] == "attributes"


def test_many_small_values_that_escape_large_still_fit():
    """Each value is within its limit, but astral characters take 12 JSON bytes: the estimate must catch it."""
    attrs = {f"a{i}": "\U0001f600" * 250 for i in range(100)} | {"user.id": "bob"}
    batch = map_one({"body": "emoji", "attrs": attrs})
    row = batch.rows[0]
    assert row.fields["actor.user.name"] == "bob" and row.fields["message"] == "emoji"
    assert (
        row.fields[rb.MARKER] == "attributes"
        and "dropped to fit the row" in batch.bounded_notes["attributes"]
    )


def test_an_oversized_resource_is_bounded_on_every_row():
    resource = {
        "service.name": "svc-" + "s" * 1000,
        **{f"r{i}": "\x01" * 2000 for i in range(100)},
        "host.name": "node-7",
    }
    batch = map_one({"body": "one"}, {"body": "two"}, resource=resource)
    first, second = batch.rows
    assert first.service == second.service and first.service.startswith("svc-sss")
    assert re.search(r"~[0-9a-f]{8}$", first.service) and len(first.service.encode()) <= rb.SERVICE_MAX
    assert len(first.resource) <= rb.RESOURCE_MAX
    assert first.fields["device.hostname"] == "node-7"
    assert first.fields[rb.MARKER] == "service,resource" == second.fields[rb.MARKER]
    assert batch.bounded == {"service": 2, "resource": 2}
    assert map_one({"body": "one"}, {"body": "two"}, resource=resource).rows[0].service == first.service


def test_an_ocsf_body_cannot_fake_the_marker_or_a_huge_time():
    body = json.dumps({"class_uid": 6003, "time": 10**30, "message": "m", "otad": {"truncated": "uid"}})
    row = map_one({"body": body, "time_unix_nano": 0, "observed_time_unix_nano": T0}).rows[0]
    assert rb.MARKER not in row.fields and row.time_unix_nano == T0 and row.class_uid == 6003
    plain = map_one(
        {"body": json.dumps({"msg": "m", "big": 10**30, "http.response.status_code": 10**25})}
    ).rows[0]
    assert plain.fields["unmapped.big"] == str(10**30)  # integer columns stay int64; a larger one is text
    assert "http_response.code" not in plain.fields


def test_spans_and_metrics_are_bounded_too():
    span = {"name": "op-" + "n" * 20_000, "attrs": {f"a{i}": "v" * 900 for i in range(200)}}
    batch = RowMapper().map_traces(traces_request(span), received_unix_nano=42)
    row = batch.rows[0]
    assert row_bytes(row) <= rb.ROW_BUDGET and row.trace_id and row.span_id == row.uid
    assert row.fields["trace.span.kind"] and row.fields["message"].startswith("op-nnn")
    assert set(row.fields[rb.MARKER].split(",")) == {"message", "attributes"}

    metric = Metric(name="m" * 50_000, unit="1")
    metric.gauge.data_points.add(time_unix_nano=T0, as_double=1.5, attributes=kvs({"big": "x" * 5000}))
    batch = RowMapper().map_metrics(metrics_request(metric), received_unix_nano=42)
    row = batch.rows[0]
    assert row_bytes(row) <= rb.ROW_BUDGET and row.fields["metric.value"] == 1.5
    assert len(row.fields["metric.name"].encode()) == rb.VALUE_MAX and row.time_unix_nano == T0


def test_the_core_columns_cover_what_the_mappers_write():
    """CORE is restated in rows_bounds.py; a column added to a mapper must be added there too."""
    attrs = {
        key: "GET"
        if "method" in key
        else 200
        if "code" in key or "size" in key or "length" in key or "port" in key
        else "x"
        for key in ATTRIBUTE_COLUMNS
    }
    logs = (
        RowMapper()
        .map_logs(logs_request({"body": "b", "severity_text": "WARN", "event_name": "e", "attrs": attrs}), 42)
        .rows
    )
    spans = (
        RowMapper()
        .map_traces(
            traces_request(
                {
                    "attrs": attrs,
                    "kind": 3,
                    "status": (2, "boom"),
                    "events": [("exception", {"exception.type": "E"})],
                    "parent_span_id": b"\x01" * 8,
                },
                {"attrs": {"rpc.method": "Get"}, "kind": 3},
            ),
            42,
        )
        .rows
    )
    histogram = Metric(name="h", unit="ms")
    histogram.histogram.aggregation_temporality = 1
    histogram.histogram.data_points.add(
        start_time_unix_nano=T0 - 10**9,
        time_unix_nano=T0,
        count=4,
        sum=10.0,
        bucket_counts=[1, 3],
        explicit_bounds=[5.0],
        min=1.0,
        max=9.0,
    )
    counter = Metric(name="c", unit="1")
    counter.sum.aggregation_temporality, counter.sum.is_monotonic = 2, True
    for t, value in ((T0, 1.0), (T0 + 10**9, 3.0)):
        counter.sum.data_points.add(start_time_unix_nano=T0 - 10**9, time_unix_nano=t, as_double=value)
    metrics = RowMapper().map_metrics(metrics_request(histogram, counter), 42).rows
    written = {key for row in logs + spans + metrics for key in row.fields if not key.startswith("unmapped.")}
    assert written <= rb.CORE, written - rb.CORE


def test_cut_helpers():
    assert (
        rb.cut_utf8("aé€😀", 7) == "aé€"
        and rb.cut_utf8("aé€😀", 6) == "aé€"
        and rb.cut_utf8("aé€😀", 5) == "aé"
    )
    assert rb.cut_utf8("plain", 3) == "pla"
    assert rb.cut_json('a"b', 5) == 'a"' and rb.cut_json("😀😀", 13) == "" and rb.cut_json("😀😀", 14) == "😀"
    assert rb.short_hash("x" * 300, 64) == rb.short_hash("x" * 300, 64) != rb.short_hash("x" * 301, 64)


values = st.text(max_size=300) | st.sampled_from(["\x00" * 3000, "😀" * 2000, "é" * 9000, "x" * 70_000])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.dictionaries(st.text(max_size=200), values, max_size=60), values, values)
def test_hostile_records_always_fit_and_keep_their_identity(attrs, body, service):
    batch = map_one(
        {"body": body, "severity_number": 13, "attrs": attrs}, resource={"service.name": service, **RESOURCE}
    )
    row = batch.rows[0]
    assert row.time_unix_nano == T0 and row.severity_id == 3
    assert isinstance(row.fields.get("message"), str) and body.startswith(row.fields["message"])
    assert (rb.MARKER in row.fields) == bool(batch.bounded)


class _Pipeline:
    """A consumer that keeps every row (the pipeline's storage is not what this test is about)."""

    def __init__(self):
        self.rows = []

    def consume(self, received):
        self.rows.extend(received.rows)


def _bounded(metrics: Metrics, field: str) -> float:
    return (
        metrics.registry.get_sample_value("otad_bounded_items_total", {"signal": "logs", "field": field})
        or 0.0
    )


def test_export_counts_and_logs_bounded_items_and_answers_ok(monkeypatch):
    warned = []
    monkeypatch.setattr(export_module, "warn_limited", lambda log, key, msg, *args: warned.append(msg % args))
    metrics, pipeline = Metrics(), _Pipeline()
    handler = ExportHandler(pipeline, RowMapper(), metrics, retry_after_s=1)
    request = logs_request(
        {"body": "a", "attrs": {"log.record.uid": "u" * 100}},
        {"body": "b", "attrs": {"log.record.uid": "v" * 100}},
        {"body": "c", "attrs": {f"k{i}": i for i in range(500)}},
        {"body": "fine"},
    )
    outcome = handler.export(SIGNALS["logs"], request, "grpc")
    assert outcome.rejected == 0 and outcome.message == "" and len(pipeline.rows) == 4
    assert (_bounded(metrics, "uid"), _bounded(metrics, "attributes")) == (2.0, 1.0)
    assert warned == [
        "3 log records stored with bounded fields: uid (2, over 64 bytes, replaced by a hash), "
        "attributes (1, 503 fields -> 128)"
    ]


def test_a_bounded_record_over_grpc_is_answered_ok_and_counted():
    metrics = Metrics()
    server = OtlpGrpcServer("localhost:0", ExportHandler(_Pipeline(), RowMapper(), metrics, retry_after_s=1))
    server.start()
    channel = grpc.insecure_channel(f"localhost:{server.port}")
    try:
        request = logs_request({"body": "x" * (2 * MIB), "attrs": {"log.record.uid": "u" * 100}})
        response = LogsServiceStub(channel).Export(request, timeout=10)
    finally:
        channel.close()
        server.stop(1)
    assert not response.HasField("partial_success")
    assert (_bounded(metrics, "uid"), _bounded(metrics, "message")) == (1.0, 1.0)
