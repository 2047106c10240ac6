"""Hypothesis strategies for hostile OTLP requests: deep AnyValues, NaN/inf, odd ids and timestamps,
duplicate keys, many and huge attributes. Each strategy builds real protobuf messages."""

from __future__ import annotations

from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

U64 = 2**64 - 1
timestamps = st.sampled_from(
    [0, 1, 1_700_000_000_000_000_000, 4_102_444_800_000_000_000, 2**63 - 1, U64]
) | st.integers(0, U64)
doubles = (
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, -1e308, 5e-324]) | st.floats()
)
ints = st.sampled_from([0, -1, 2**63 - 1, -(2**63)]) | st.integers(-(2**63), 2**63 - 1)
keys = st.sampled_from(
    [
        "service.name",
        "http.response.status_code",
        "duration_ms",
        "url.path",
        "",
        "a.b",
        "http.request.method",
        "exception.message",
        "log.record.uid",
        "k",
    ]
) | st.text(max_size=20)
ids = st.sampled_from(
    [b"", bytes(8), bytes(16), b"\x01" * 8, b"\x01" * 16, b"\xff" * 5, b"\x00" * 17]
) | st.binary(max_size=20)
text = st.text(max_size=50) | st.sampled_from(["x" * 70_000, "\u0000", "\ud7ff\ue000", "é" * 100])


def fill(target: AnyValue, spec: tuple) -> None:
    """Build the AnyValue described by `spec` in place (CopyFrom would hit upb's depth limit on deep values)."""
    kind = spec[0]
    if kind == "deep":
        _, depth, how, leaf = spec
        cur = target
        for i in range(depth):
            if how == "array" or (how == "mixed" and i % 2):
                cur = cur.array_value.values.add()
            else:
                kv = cur.kvlist_value.values.add()
                kv.key = f"k{i}"
                cur = kv.value
        cur.double_value = leaf
    elif kind in ("array", "kvlist"):
        if kind == "array":
            target.array_value.SetInParent()
        else:
            target.kvlist_value.SetInParent()
        for key, item in spec[1]:
            if kind == "array":
                fill(target.array_value.values.add(), item)
            else:
                kv = target.kvlist_value.values.add()
                kv.key = key
                fill(kv.value, item)
    elif kind != "empty":
        setattr(target, kind, spec[1])


def deep_value(depth: int, how: str = "mixed") -> AnyValue:
    value = AnyValue()
    fill(value, ("deep", depth, how, 1.5))
    return value


_LEAVES = [("string_value", "v"), ("int_value", 3), ("empty",), ("double_value", float("nan"))]


@st.composite
def any_values(draw, max_leaves: int = 4) -> tuple:
    """A spec for `fill`."""
    kind = draw(
        st.sampled_from(["str", "int", "double", "bool", "bytes", "empty", "array", "kvlist", "deep"])
    )
    if kind == "str":
        return ("string_value", draw(text))
    if kind == "int":
        return ("int_value", draw(ints))
    if kind == "double":
        return ("double_value", draw(doubles))
    if kind == "bool":
        return ("bool_value", draw(st.booleans()))
    if kind == "bytes":
        return ("bytes_value", draw(st.binary(max_size=40)))  # invalid UTF-8 in a bytes field
    if kind == "empty":
        return ("empty",)
    if kind == "deep":  # kvlist/array 90-130 levels deep
        return (
            "deep",
            draw(st.integers(90, 130)),
            draw(st.sampled_from(["array", "kvlist", "mixed"])),
            draw(doubles),
        )
    items = [
        (draw(st.sampled_from(["a", "a", "b"])), draw(st.sampled_from(_LEAVES)))  # duplicate keys too
        for _ in range(draw(st.integers(0, max_leaves)))
    ]
    return (kind, items)


@st.composite
def attributes(draw) -> list[tuple[str, tuple]]:
    mode = draw(st.sampled_from(["few", "few", "duplicates", "many"]))
    if mode == "many":  # huge attribute counts
        n = draw(st.integers(1000, 3000))
        return [(f"attr.{i % 1500}", ("int_value", i)) for i in range(n)]
    out = [(draw(keys), draw(any_values())) for _ in range(draw(st.integers(0, 6)))]
    if mode == "duplicates" and out:
        out += [(out[0][0], draw(any_values()))]
    return out


def add_attributes(repeated, attrs: list[tuple[str, tuple]]) -> None:
    for key, spec in attrs:
        kv = repeated.add()
        kv.key = key
        fill(kv.value, spec)


def _resource(draw, target) -> None:
    add_attributes(target.attributes, draw(attributes()))
    if draw(st.booleans()):
        add_attributes(target.attributes, [("service.name", draw(any_values()))])


@st.composite
def logs_requests(draw) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rl = req.resource_logs.add()
        _resource(draw, rl.resource)
        for _ in range(draw(st.integers(0, 2))):
            sl = rl.scope_logs.add()
            sl.scope.name = draw(st.sampled_from(["app", "otad", "", "x" * 300]))
            for _ in range(draw(st.integers(0, 4))):
                lr = sl.log_records.add(
                    time_unix_nano=draw(timestamps),
                    observed_time_unix_nano=draw(timestamps),
                    severity_number=draw(st.integers(0, 30)),
                    severity_text=draw(text),
                    trace_id=draw(ids),
                    span_id=draw(ids),
                    flags=draw(st.integers(0, 2**32 - 1)),
                    event_name=draw(st.sampled_from(["", "otad.anomaly", "x"])),
                )
                fill(lr.body, draw(any_values()))
                add_attributes(lr.attributes, draw(attributes()))
    return req


@st.composite
def traces_requests(draw) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rs = req.resource_spans.add()
        _resource(draw, rs.resource)
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(st.sampled_from(["tracer", "otad", ""]))
            for _ in range(draw(st.integers(0, 4))):
                sp = ss.spans.add(
                    trace_id=draw(ids),
                    span_id=draw(ids),
                    parent_span_id=draw(ids),
                    name=draw(text),
                    kind=draw(st.integers(0, 9)),
                    start_time_unix_nano=draw(timestamps),
                    end_time_unix_nano=draw(timestamps),
                )
                sp.status.code = draw(st.integers(0, 5))
                sp.status.message = draw(text)
                add_attributes(sp.attributes, draw(attributes()))
                for _ in range(draw(st.integers(0, 2))):
                    ev = sp.events.add(time_unix_nano=draw(timestamps), name=draw(text))
                    add_attributes(ev.attributes, draw(attributes()))
                for _ in range(draw(st.integers(0, 1))):
                    sp.links.add(trace_id=draw(ids), span_id=draw(ids))
    return req


def _point(draw, point, exemplar: bool = True) -> None:
    point.start_time_unix_nano = draw(timestamps)
    point.time_unix_nano = draw(timestamps)
    add_attributes(point.attributes, draw(attributes()))
    point.flags = draw(st.sampled_from([0, 1, 2, 3]))


@st.composite
def metrics_requests(draw) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rm = req.resource_metrics.add()
        _resource(draw, rm.resource)
        for _ in range(draw(st.integers(0, 2))):
            sm = rm.scope_metrics.add()
            sm.scope.name = draw(st.sampled_from(["meter", "otad"]))
            for _ in range(draw(st.integers(0, 3))):
                m = sm.metrics.add(name=draw(text), unit=draw(st.sampled_from(["ms", "s", "By", "", "{x}"])))
                kind = draw(st.sampled_from(["gauge", "sum", "histogram", "exp", "summary", "none"]))
                temporality = draw(st.sampled_from(list(AggregationTemporality.values()) + [7]))
                for _ in range(draw(st.integers(0, 3))):
                    if kind in ("gauge", "sum"):
                        body = m.gauge if kind == "gauge" else m.sum
                        if kind == "sum":
                            m.sum.aggregation_temporality = temporality
                            m.sum.is_monotonic = draw(st.booleans())
                        p = body.data_points.add()
                        if draw(st.booleans()):
                            p.as_double = draw(doubles)
                        elif draw(st.booleans()):
                            p.as_int = draw(ints)
                    elif kind == "histogram":
                        m.histogram.aggregation_temporality = temporality
                        p = m.histogram.data_points.add(count=draw(st.integers(0, U64)), sum=draw(doubles))
                        p.explicit_bounds.extend(draw(st.lists(doubles, max_size=5)))
                        p.bucket_counts.extend(draw(st.lists(st.integers(0, U64), max_size=7)))
                        if draw(st.booleans()):
                            p.min, p.max = draw(doubles), draw(doubles)
                    elif kind == "exp":
                        m.exponential_histogram.aggregation_temporality = temporality
                        p = m.exponential_histogram.data_points.add(
                            count=draw(st.integers(0, U64)),
                            sum=draw(doubles),
                            scale=draw(st.integers(-(2**31), 2**31 - 1)),
                            zero_count=draw(st.integers(0, U64)),
                        )
                        p.positive.offset = draw(st.integers(-(2**31), 2**31 - 1))
                        p.positive.bucket_counts.extend(draw(st.lists(st.integers(0, U64), max_size=5)))
                        p.negative.bucket_counts.extend(draw(st.lists(st.integers(0, U64), max_size=3)))
                    elif kind == "summary":
                        p = m.summary.data_points.add(count=draw(st.integers(0, U64)), sum=draw(doubles))
                        for _ in range(draw(st.integers(0, 3))):
                            p.quantile_values.add(quantile=draw(doubles), value=draw(doubles))
                    else:
                        break
                    _point(draw, p)
    return req


def count_items(signal: str, request) -> int:
    """Records in a request: log records, spans or data points (what partial_success counts)."""
    if signal == "logs":
        return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
    if signal == "traces":
        return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
    total = 0
    for r in request.resource_metrics:
        for s in r.scope_metrics:
            for m in s.metrics:
                kind = m.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(m, kind).data_points)
    return total
