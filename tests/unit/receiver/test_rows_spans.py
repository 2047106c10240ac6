"""Row mapper: spans (trace profile columns, class, status, rejections of bad ids)."""

from __future__ import annotations

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from model.schema import API_ACTIVITY, HTTP_ACTIVITY
from receiver.rows.mapper import Rejection, RowMapper
from tests.unit.receiver.rows_helpers import SPAN, T0, TRACE, traces_request

PARENT = bytes.fromhex("00f067aa0ba902b7")


def one_span(**spec):
    batch = RowMapper().map_traces(traces_request(spec), received_unix_nano=42)
    assert not batch.rejections, batch.rejections
    return batch.rows[0]


def test_http_server_span_maps_trace_profile_columns():
    row = one_span(
        kind=Span.SPAN_KIND_SERVER,
        parent_span_id=PARENT,
        attrs={"http.request.method": "POST", "url.path": "/pay", "http.response.status_code": 201},
    )
    assert row.signal == "traces" and row.uid == SPAN.hex() == row.span_id
    assert row.trace_id == TRACE.hex() == row.fields["trace.uid"]
    assert row.time_unix_nano == T0
    assert (row.class_uid, row.activity_id, row.status_id, row.severity_id) == (HTTP_ACTIVITY, 6, 1, 1)
    f = row.fields
    assert f["trace.span.uid"] == SPAN.hex() and f["trace.span.parent_uid"] == PARENT.hex()
    assert f["trace.span.kind"] == "SERVER" and f["trace.span.operation"] == "GET /cart"
    assert f["message"] == "GET /cart" and f["duration"] == 12.5
    assert f["status_code"] == "201" and f["http_response.code"] == 201
    assert (f["trace.span.events"], f["trace.span.exception"]) == (0, 0)


def test_root_span_has_no_parent_column():
    assert "trace.span.parent_uid" not in one_span().fields


@pytest.mark.parametrize(
    ("status", "status_code", "status_id", "severity_id"),
    [
        (None, "UNSET", 1, 1),
        ((Status.STATUS_CODE_OK, ""), "OK", 1, 1),
        ((Status.STATUS_CODE_ERROR, "boom"), "ERROR", 2, 4),
    ],
)
def test_span_status(status, status_code, status_id, severity_id):
    spec = {} if status is None else {"status": status}
    row = one_span(**spec)
    assert (row.fields["status_code"], row.status_id, row.severity_id) == (
        status_code,
        status_id,
        severity_id,
    )
    assert row.fields.get("status_detail") == (status[1] or None if status else None)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (Span.SPAN_KIND_UNSPECIFIED, "UNSPECIFIED"),
        (Span.SPAN_KIND_INTERNAL, "INTERNAL"),
        (Span.SPAN_KIND_CLIENT, "CLIENT"),
        (Span.SPAN_KIND_PRODUCER, "PRODUCER"),
        (Span.SPAN_KIND_CONSUMER, "CONSUMER"),
    ],
)
def test_span_kind(kind, name):
    assert one_span(kind=kind).fields["trace.span.kind"] == name


def test_rpc_client_span_is_api_activity():
    row = one_span(
        name="cart.Cart/GetCart",
        kind=Span.SPAN_KIND_CLIENT,
        attrs={
            "rpc.system": "grpc",
            "rpc.service": "cart.Cart",
            "rpc.method": "GetCart",
            "server.address": "cart",
            "server.port": 7070,
        },
    )
    assert (row.class_uid, row.activity_id) == (API_ACTIVITY, 2)
    f = row.fields
    assert (f["api.operation"], f["api.service.name"]) == ("GetCart", "cart.Cart")
    assert f["dst_endpoint.svc_name"] == "cart" and f["dst_endpoint.port"] == 7070
    assert f["unmapped.rpc.system"] == "grpc"


def test_internal_span_uses_its_name_as_api_operation_and_db_columns():
    row = one_span(
        name="SELECT orders", attrs={"db.system.name": "postgresql", "db.operation.name": "SELECT"}
    )
    assert row.class_uid == API_ACTIVITY and row.activity_id == 0
    assert row.fields["api.operation"] == "SELECT orders"
    assert (row.fields["db.system"], row.fields["db.operation"]) == ("postgresql", "SELECT")


def test_exception_event_is_counted_and_fills_error_columns():
    row = one_span(
        events=[("log", {}), ("exception", {"exception.type": "ValueError", "exception.message": "bad"})],
        status=(Status.STATUS_CODE_ERROR, "bad"),
    )
    f = row.fields
    assert (f["trace.span.events"], f["trace.span.exception"]) == (2, 1)
    assert (f["error.type"], f["error.message"], f["status_detail"]) == ("ValueError", "bad", "bad")


def test_negative_duration_is_clamped_and_zero_start_falls_back():
    row = one_span(start_time_unix_nano=T0, end_time_unix_nano=T0 - 5)
    assert row.fields["duration"] == 0.0
    assert one_span(start_time_unix_nano=0, end_time_unix_nano=0).time_unix_nano == 42


def test_bad_span_ids_are_rejected_and_other_spans_survive():
    request = traces_request(
        {"name": "good"},
        {"name": "short trace", "trace_id": b"\x01" * 5},
        {"name": "zero trace", "trace_id": bytes(16)},
        {"name": "long span", "span_id": b"\x01" * 9},
        {"name": "zero span", "span_id": bytes(8)},
        {"name": "good2", "span_id": b"\x02" * 8},
    )
    batch = RowMapper().map_traces(request)
    assert [r.fields["message"] for r in batch.rows] == ["good", "good2"]
    assert batch.rejections == [
        Rejection("resource 0, scope 0, span 1", "invalid trace_id length 5"),
        Rejection("resource 0, scope 0, span 2", "missing or all-zero trace_id"),
        Rejection("resource 0, scope 0, span 3", "invalid span_id length 9"),
        Rejection("resource 0, scope 0, span 4", "missing or all-zero span_id"),
    ]
    assert len(batch.rows) + len(batch.rejections) + batch.ignored == batch.total == 6
    assert batch.error_message("spans").startswith(
        "4/6 spans rejected: invalid trace_id length 5 (first at "
        "resource 0, scope 0, span 1); and 3 other reasons"
    )


def test_span_uids_are_stable_and_otad_scope_is_ignored():
    request = traces_request({"name": "a"}, {"name": "b", "span_id": b"\x03" * 8})
    assert (
        [r.uid for r in RowMapper().map_traces(request).rows]
        == [r.uid for r in RowMapper().map_traces(request).rows]
        == [SPAN.hex(), "03" * 8]
    )
    batch = RowMapper().map_traces(traces_request({"name": "a"}, scope="otad"))
    assert (batch.rows, batch.ignored, batch.total) == ([], 1, 1)


@pytest.mark.parametrize(
    ("kind", "attrs", "failed"),
    [
        (Span.SPAN_KIND_SERVER, {"http.response.status_code": 503}, True),
        (Span.SPAN_KIND_CLIENT, {"http.status_code": 500}, True),
        (Span.SPAN_KIND_SERVER, {"http.response.status_code": 404}, False),  # the caller's mistake
        (Span.SPAN_KIND_CLIENT, {"http.response.status_code": 401}, False),
        (Span.SPAN_KIND_SERVER, {"rpc.grpc.status_code": 14}, True),  # UNAVAILABLE
        (Span.SPAN_KIND_CLIENT, {"rpc.grpc.status_code": 4}, True),  # DEADLINE_EXCEEDED
        (Span.SPAN_KIND_SERVER, {"rpc.grpc.status_code": 5}, False),  # NOT_FOUND
        (Span.SPAN_KIND_CLIENT, {"rpc.grpc.status_code": 0}, False),
        (Span.SPAN_KIND_SERVER, {"rpc.response.status_code": "DEADLINE_EXCEEDED"}, True),  # newer conventions
        (Span.SPAN_KIND_CLIENT, {"rpc.response.status_code": "internal"}, True),
        (Span.SPAN_KIND_CLIENT, {"rpc.response.status_code": "UNAUTHENTICATED"}, False),
        (Span.SPAN_KIND_CLIENT, {"rpc.response.status_code": "13"}, True),
        (Span.SPAN_KIND_CLIENT, {"rpc.response.status_code": "not a code"}, False),
        (Span.SPAN_KIND_CLIENT, {"db.system.name": "postgresql", "error.type": "57014"}, True),  # no code
        (
            Span.SPAN_KIND_CLIENT,
            {"http.response.status_code": 404, "error.type": "404"},
            False,
        ),  # code decides
        (Span.SPAN_KIND_CLIENT, {"db.system.name": "postgresql"}, False),
    ],
)
def test_unset_status_is_read_from_the_semantic_conventions(kind, attrs, failed):
    """An instrumentation that leaves the status unset still reports a failure of the callee (5xx, the
    server-side gRPC error codes); the caller's own outcomes (4xx, NOT_FOUND, UNAUTHENTICATED) stay successes."""
    row = one_span(kind=kind, attrs=attrs)
    assert (row.status_id, row.severity_id) == ((2, 4) if failed else (1, 1))


def test_an_explicit_ok_status_stands_over_the_conventions():
    row = one_span(
        kind=Span.SPAN_KIND_SERVER,
        attrs={"http.response.status_code": 500},
        status=(Status.STATUS_CODE_OK, ""),
    )
    assert (row.status_id, row.severity_id, row.fields["status_code"]) == (1, 1, "500")
