"""Map to rows, traces: one OTLP Span -> one HTTP Activity or API Activity row with the OCSF trace profile."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from model.schema import API_ACTIVITY, HTTP_ACTIVITY, Row, Value
from receiver.rows.common import (
    HTTP,
    RejectError,
    ResourceContext,
    any_value,
    api_activity,
    hex_id,
    http_activity,
    map_attributes,
)

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_NAMES = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}
# gRPC codes that are the callee's failure: the conventions' error set for server spans (UNKNOWN,
# DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
GRPC_CODES = (
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS PERMISSION_DENIED "
    "RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS "
    "UNAUTHENTICATED"
).split()
GRPC_CODE_BY_NAME = {name: code for code, name in enumerate(GRPC_CODES)}


def _grpc_code(attrs: dict[str, object]) -> int | None:
    """The RPC status code as gRPC's number: `rpc.grpc.status_code` (an int) or the newer
    `rpc.response.status_code` (a code name such as "UNAVAILABLE", any case, or its number as text)."""
    value = attrs.get("rpc.grpc.status_code", attrs.get("rpc.response.status_code"))
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().upper()
        return int(text) if text.isdigit() else GRPC_CODE_BY_NAME.get(text)
    return None


def _unset_is_error(http_code: object, grpc_code: int | None, error_type: object) -> bool:
    """Whether a span whose instrumentation left its status unset failed. A status code decides when the span
    has one: an HTTP 5xx or a gRPC code of the server-side error set, on any span kind. The conventions also
    fail a client span for a 4xx or any other gRPC code, but those are the caller's own outcome (a wrong
    password, an unknown id): ordinary traffic that would drown the failures of the system in the failure rate
    otad watches. Without a code (a database or messaging call), `error.type`, which instrumentations set
    when the operation ended in an error, decides."""
    if isinstance(http_code, int):
        return http_code >= 500
    if grpc_code is not None:
        return grpc_code in GRPC_SERVER_ERRORS
    return isinstance(error_type, str) and bool(error_type.strip())


def _exception_event(span: Span, fields: dict[str, Value]) -> int:
    """1 when the span has an `exception` event; its type/message fill error.* when attributes lack them."""
    for event in span.events:
        if event.name == "exception":
            for kv in event.attributes:
                if kv.key == "exception.type" and "error.type" not in fields:
                    fields["error.type"] = str(any_value(kv.value))
                elif kv.key == "exception.message" and "error.message" not in fields:
                    fields["error.message"] = str(any_value(kv.value))
            return 1
    return 0


def map_span(span: Span, ctx: ResourceContext, scope_name: str, received_unix_nano: int) -> Row:
    """One span as a row. Raises RejectError when the trace or span id is missing, all zero or mis-sized."""
    trace_id = hex_id(span.trace_id, "trace_id", 16)
    span_id = hex_id(span.span_id, "span_id", 8)
    if not trace_id:
        raise RejectError("missing or all-zero trace_id")
    if not span_id:
        raise RejectError("missing or all-zero span_id")
    parent = span.parent_span_id
    parent_id = parent.hex() if parent and any(parent) else ""

    fields: dict[str, Value] = {}
    ranks: dict[str, int] = {}
    attrs = {kv.key: any_value(kv.value) for kv in span.attributes}
    hints = map_attributes(attrs, fields, ranks) if attrs else 0
    kind = SPAN_KINDS.get(span.kind, "UNSPECIFIED")
    name = span.name
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    status = span.status.code
    fields["message"] = name
    fields["trace.uid"] = trace_id
    fields["trace.span.uid"] = span_id
    if parent_id:
        fields["trace.span.parent_uid"] = parent_id
    fields["trace.span.kind"] = kind
    fields["trace.span.operation"] = name
    fields["duration"] = max(0, end - start) / 1e6 if start and end else 0.0
    fields["trace.span.events"] = len(span.events)
    fields["trace.span.exception"] = _exception_event(span, fields) if span.events else 0
    if span.status.message:
        fields["status_detail"] = span.status.message
    code = fields.get("http_response.code")
    fields["status_code"] = str(code) if isinstance(code, int) else STATUS_NAMES.get(status, "UNSET")
    if kind == "CLIENT" and "dst_endpoint.svc_name" not in fields:
        server = attrs.get("server.address") or attrs.get("net.peer.name")
        if isinstance(server, str) and server:
            fields["dst_endpoint.svc_name"] = server
    if scope_name:
        fields["scope.name"] = scope_name
    if ctx.hostname is not None:
        fields["device.hostname"] = ctx.hostname

    if hints & HTTP:
        class_uid = HTTP_ACTIVITY
        activity_id = http_activity(fields.get("http_request.http_method"))
    else:
        class_uid = API_ACTIVITY
        fields.setdefault("api.operation", name)
        activity_id = api_activity(fields.get("http_request.http_method"), fields["api.operation"])
    error = status == Status.STATUS_CODE_ERROR
    if status == Status.STATUS_CODE_UNSET:  # an explicit OK stands; unset is read from the conventions
        error = _unset_is_error(fields.get("http_response.code"), _grpc_code(attrs), attrs.get("error.type"))
    return Row(
        uid=span_id,
        signal="traces",
        time_unix_nano=start or end or received_unix_nano,
        service=ctx.service,
        class_uid=class_uid,
        activity_id=activity_id,
        severity_id=4 if error else 1,
        status_id=2 if error else 1,
        fields=fields,
        trace_id=trace_id,
        span_id=span_id,
        resource=dict(ctx.resource),
    )
