"""Hand-built OTLP log requests for tests: access-log style normal traffic and slow, failing outliers."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

Record = tuple[int, str, dict, int]  # (time_unix_nano, body, attributes, severity_number)


def kv(key: str, value) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def log_request(records: list[Record], service: str = "checkout") -> logs_pb.ExportLogsServiceRequest:
    """One resource (`service.name`), one scope; every record carries the same trace and span id."""
    request = logs_pb.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(kv("service.name", service))
    scope_logs = resource_logs.scope_logs.add()
    for t, body, attributes, severity in records:
        record = scope_logs.log_records.add(
            time_unix_nano=t,
            severity_number=severity,
            trace_id=bytes(range(1, 17)),
            span_id=bytes(range(1, 9)),
        )
        record.body.string_value = body
        record.attributes.extend(kv(k, v) for k, v in attributes.items())
    return request


def normal_logs(
    n: int, start: int, rng: random.Random, tag: str, *, duration_attr: bool = False
) -> list[Record]:
    """`GET /cart/N served in X ms`, 20 ms apart, uids `<tag>-<i>`."""
    out = []
    for i in range(n):
        ms = rng.lognormvariate(3.0, 0.3)
        path = f"/cart/{rng.randint(1, 500)}"
        attributes = {
            "http.request.method": "GET",
            "url.path": path,
            "http.response.status_code": 200,
            "log.record.uid": f"{tag}-{i}",
        }
        if duration_attr:
            attributes["duration_ms"] = ms
        out.append((start + i * 20_000_000, f"GET {path} served in {ms:.1f} ms", attributes, 9))
    return out


def slow_failures(n: int, start: int, *, duration_attr: bool = False) -> list[Record]:
    """`GET /cart/77 failed after 30123.0 ms` with status 500 and ERROR severity, uids `slow-<i>`."""
    out = []
    for i in range(n):
        attributes = {
            "http.request.method": "GET",
            "url.path": "/cart/77",
            "http.response.status_code": 500,
            "log.record.uid": f"slow-{i}",
        }
        if duration_attr:
            attributes["duration_ms"] = 30123.0
        out.append((start + i, "GET /cart/77 failed after 30123.0 ms", attributes, 17))
    return out
