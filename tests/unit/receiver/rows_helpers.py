"""Builders of real OTLP protobuf requests for the row-mapper tests."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN = bytes.fromhex("b7ad6b7169203331")
T0 = 1_700_000_000_000_000_000


def any_value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=kvs(value)))
    return AnyValue(string_value=value)


def kvs(attrs: dict) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


RESOURCE = {"service.name": "checkout", "host.name": "node-1", "k8s.labels": ["a", "b"]}


def logs_request(
    *records: dict, resource: dict | None = None, scope: str = "app"
) -> ExportLogsServiceRequest:
    """One resource, one scope; each record dict holds LogRecord fields plus `attrs` and `body`."""
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend(kvs(RESOURCE if resource is None else resource))
    sl = rl.scope_logs.add()
    sl.scope.name = scope
    for spec in records:
        spec = dict(spec)
        record = sl.log_records.add()
        record.attributes.extend(kvs(spec.pop("attrs", {})))
        if "body" in spec:
            record.body.CopyFrom(any_value(spec.pop("body")))
        spec.setdefault("time_unix_nano", T0)
        for key, value in spec.items():
            setattr(record, key, value)
    return request


def traces_request(*spans: dict, scope: str = "tracer") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(kvs(RESOURCE))
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    for spec in spans:
        spec = dict(spec)
        span = ss.spans.add()
        span.attributes.extend(kvs(spec.pop("attrs", {})))
        for name, attrs in spec.pop("events", []):
            event = span.events.add()
            event.name = name
            event.attributes.extend(kvs(attrs))
        status = spec.pop("status", None)
        if status is not None:
            span.status.code = status[0]
            span.status.message = status[1]
        spec.setdefault("trace_id", TRACE)
        spec.setdefault("span_id", SPAN)
        spec.setdefault("start_time_unix_nano", T0)
        spec.setdefault("end_time_unix_nano", T0 + 12_500_000)
        spec.setdefault("name", "GET /cart")
        for key, value in spec.items():
            setattr(span, key, value)
    return request


def metrics_request(*metrics, resource: dict | None = None) -> ExportMetricsServiceRequest:
    """`metrics` are opentelemetry.proto.metrics.v1 Metric messages."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend(kvs(RESOURCE if resource is None else resource))
    sm = rm.scope_metrics.add()
    sm.scope.name = "meter"
    sm.metrics.extend(metrics)
    return request
