"""Map to rows, metrics: one OTLP data point -> one METRIC_OBSERVATION row; cumulative series become deltas."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from model.schema import METRIC_OBSERVATION, Row, Value, content_uid, metric_point_uid
from receiver.rows.common import RejectError, ResourceContext, any_value, column_value, resource_value

NO_RECORDED_VALUE = 1  # DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
QUANTILES = (("metric.p50", 0.5), ("metric.p95", 0.95), ("metric.p99", 0.99))
_TEMPORALITY: dict[int, str] = {
    AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA: "delta",
    AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
}


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """What every point of one metric shares."""

    name: str
    unit: str
    kind: str  # gauge | sum | histogram | exponential_histogram | summary
    temporality: str | None  # delta | cumulative; None for gauges, summaries and unspecified
    monotonic: bool | None  # sums only


def metric_info(metric: Metric) -> tuple[MetricInfo, list] | None:
    """The metric's shared facts and its data points; None when the metric carries no data."""
    kind = metric.WhichOneof("data")
    if kind is None:
        return None
    data = getattr(metric, kind)
    temporality = _TEMPORALITY.get(getattr(data, "aggregation_temporality", 0))
    if kind == "summary":
        temporality = "cumulative"  # OTLP summaries are cumulative by definition
    monotonic = data.is_monotonic if kind == "sum" else None
    return MetricInfo(metric.name, metric.unit, kind, temporality, monotonic), data.data_points


class SeriesState:
    """The last two points of each cumulative series, bounded (least recently updated evicted), thread-safe."""

    def __init__(self, max_series: int) -> None:
        if max_series < 1:
            raise ValueError(f"max_series must be >= 1, got {max_series}")
        self.max_series = max_series
        self._points: OrderedDict[tuple, tuple[tuple | None, tuple]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._points)

    def delta(
        self, key: tuple, start: int, time_unix_nano: int, values: tuple[float, ...], monotonic: int
    ) -> tuple[tuple[float, ...], float | None] | None:
        """(values minus the series' previous point, seconds since it), or None for a first point.

        The first `monotonic` values are counters: a decrease means the counter was reset, and so does a
        newer start time; after a reset the delta is the new value. A re-sent latest point (a client retry)
        gets the same answer as the first time; an older point gets None and leaves the state alone.
        """
        point = (start, time_unix_nano, values)
        with self._lock:
            entry = self._points.get(key)
            if entry is None:
                self._points[key] = (None, point)
                if len(self._points) > self.max_series:
                    self._points.popitem(last=False)
                return None
            previous, last = entry
            if point == last:
                base = previous
            elif time_unix_nano <= last[1]:
                return None
            else:
                base = last
                self._points[key] = (last, point)
                self._points.move_to_end(key)
        if base is None:
            return None
        base_start, base_time, base_values = base
        reset = (start > base_start > 0) or len(values) != len(base_values)
        deltas = values if reset else tuple(v - b for v, b in zip(values, base_values, strict=True))
        if not reset and any(d < 0 for d in deltas[:monotonic]):
            reset, deltas = True, values
        since = start if reset and start >= base_time else base_time
        seconds = (time_unix_nano - since) / 1e9 if time_unix_nano > since else None
        return deltas, seconds


def _finite(*values: float) -> None:
    for value in values:
        if not math.isfinite(value):
            raise RejectError("non-finite value")


def bucket_quantile(
    q: float, bounds: list[float], counts: list[float], lo: float | None, hi: float | None
) -> float | None:
    """Linear interpolation inside the explicit bucket that holds the q-th observation (as Prometheus does)."""
    total = sum(counts)
    if total <= 0 or not bounds:
        return None
    rank, seen = q * total, 0.0
    for i, count in enumerate(counts):
        if count <= 0 or seen + count < rank:
            seen += max(count, 0)
            continue
        lower = bounds[i - 1] if i > 0 else (lo if lo is not None else min(0.0, bounds[0]))
        upper = bounds[i] if i < len(bounds) else (hi if hi is not None else bounds[-1])
        if lo is not None:
            lower = max(lower, lo)
        if hi is not None:
            upper = min(upper, hi)
        if upper <= lower:
            return upper
        return lower + (upper - lower) * (rank - seen) / count
    return bounds[-1] if hi is None else hi


def _stats(fields: dict[str, Value], count: float, total: float | None, seconds: float | None) -> None:
    fields["metric.count"] = count
    if total is not None:
        fields["metric.sum"] = total
        if count > 0:
            fields["metric.mean"] = fields["metric.value"] = total / count
    if seconds:
        fields["metric.rate"] = count / seconds


def _number(point, info: MetricInfo, fields: dict[str, Value], state: SeriesState, key: tuple) -> None:
    kind = point.WhichOneof("value")
    if kind is None:
        raise RejectError("missing value")
    value = float(getattr(point, kind))
    _finite(value)
    if info.kind == "gauge" or info.temporality is None:
        fields["metric.value"] = value
        return
    if info.temporality == "delta":
        fields["metric.value"] = value
        start, end = point.start_time_unix_nano, point.time_unix_nano
        if start and end > start:
            fields["metric.rate"] = value / ((end - start) / 1e9)
        return
    fields["metric.cumulative"] = value
    found = state.delta(
        key, point.start_time_unix_nano, point.time_unix_nano, (value,), 1 if info.monotonic else 0
    )
    if found is not None:
        (delta,), seconds = found
        fields["metric.value"] = delta
        if seconds:
            fields["metric.rate"] = delta / seconds


def _histogram(point, info: MetricInfo, fields: dict[str, Value], state: SeriesState, key: tuple) -> None:
    bounds, counts = list(point.explicit_bounds), [float(c) for c in point.bucket_counts]
    total = point.sum if point.HasField("sum") else None
    lo = point.min if point.HasField("min") else None
    hi = point.max if point.HasField("max") else None
    _finite(*bounds, *(v for v in (total, lo, hi) if v is not None))
    if counts and len(counts) != len(bounds) + 1:
        raise RejectError(
            f"bucket_counts length {len(counts)} does not match explicit_bounds length {len(bounds)}"
        )
    if lo is not None:
        fields["metric.min"] = lo
    if hi is not None:
        fields["metric.max"] = hi
    count, seconds = float(point.count), None
    start, end = point.start_time_unix_nano, point.time_unix_nano
    if info.temporality == "cumulative":
        fields["metric.cumulative_count"] = count
        if total is not None:
            fields["metric.cumulative_sum"] = total
        found = state.delta(key, start, end, (count, *counts, total or 0.0), len(counts) + 1)
        if found is None:
            return
        deltas, seconds = found
        count, counts, total = deltas[0], list(deltas[1:-1]), (deltas[-1] if total is not None else None)
    elif start and end > start:
        seconds = (end - start) / 1e9
    _stats(fields, count, total, seconds)
    for column, q in QUANTILES:
        value = bucket_quantile(q, bounds, counts, lo, hi)
        if value is not None:
            fields[column] = value


def _exponential(point, info: MetricInfo, fields: dict[str, Value], state: SeriesState, key: tuple) -> None:
    total = point.sum if point.HasField("sum") else None
    lo = point.min if point.HasField("min") else None
    hi = point.max if point.HasField("max") else None
    _finite(*(v for v in (total, lo, hi) if v is not None))
    if lo is not None:
        fields["metric.min"] = lo
    if hi is not None:
        fields["metric.max"] = hi
    _counted(point, info, fields, state, key, float(point.count), total)


def _summary(point, info: MetricInfo, fields: dict[str, Value], state: SeriesState, key: tuple) -> None:
    _finite(point.sum, *(qv.value for qv in point.quantile_values))
    for qv in point.quantile_values:
        column = (
            "metric.min"
            if qv.quantile == 0
            else "metric.max"
            if qv.quantile == 1
            else (f"metric.p{qv.quantile * 100:g}")
        )
        fields[column] = qv.value
    _counted(point, info, fields, state, key, float(point.count), point.sum)


def _counted(
    point,
    info: MetricInfo,
    fields: dict[str, Value],
    state: SeriesState,
    key: tuple,
    count: float,
    total: float | None,
) -> None:
    """count/sum/mean of a summary or exponential histogram; cumulative ones become per-series deltas."""
    start, end = point.start_time_unix_nano, point.time_unix_nano
    seconds = (end - start) / 1e9 if start and end > start else None
    if info.temporality == "cumulative":
        fields["metric.cumulative_count"] = count
        if total is not None:
            fields["metric.cumulative_sum"] = total
        found = state.delta(key, start, end, (count, total or 0.0), 1)
        if found is None:
            return
        (count, delta_sum), seconds = found
        total = delta_sum if total is not None else None
    _stats(fields, count, total, seconds)


_BY_KIND = {
    "gauge": _number,
    "sum": _number,
    "histogram": _histogram,
    "exponential_histogram": _exponential,
    "summary": _summary,
}


def map_point(
    point,
    info: MetricInfo,
    ctx: ResourceContext,
    scope_name: str,
    state: SeriesState,
    received_unix_nano: int,
) -> Row | None:
    """One data point as a row; None when flagged NO_RECORDED_VALUE. Raises RejectError for bad values."""
    if point.flags & NO_RECORDED_VALUE:
        return None
    attrs = {kv.key: any_value(kv.value) for kv in point.attributes}
    identity = {key: resource_value(value) for key, value in attrs.items() if value is not None}
    series = content_uid(ctx.service, info.name, sorted(identity.items()))
    fields: dict[str, Value] = {"message": info.name, "metric.name": info.name, "metric.type": info.kind}
    if info.unit:
        fields["metric.unit"] = info.unit
    if info.monotonic is not None:
        fields["metric.monotonic"] = int(info.monotonic)
    if info.temporality is not None:
        fields["metric.temporality"] = info.temporality
    fields["metric.series"] = series
    if scope_name:
        fields["scope.name"] = scope_name
    if ctx.hostname is not None:
        fields["device.hostname"] = ctx.hostname
    for key, value in attrs.items():
        column = column_value(value)
        if column is not None:
            fields["unmapped." + key] = column
    _BY_KIND[info.kind](point, info, fields, state, (ctx.key, scope_name, info.name, series))
    for column, value in fields.items():  # finite inputs can still overflow (1e308 bounds, deltas, means)
        if isinstance(value, float) and not math.isfinite(value):
            raise RejectError(f"{column} overflows to a non-finite value")
    time_unix_nano = point.time_unix_nano
    return Row(
        uid=metric_point_uid(ctx.service, info.name, identity, time_unix_nano),
        signal="metrics",
        time_unix_nano=time_unix_nano or received_unix_nano,
        service=ctx.service,
        class_uid=METRIC_OBSERVATION,
        activity_id=0,
        severity_id=1,
        status_id=0,
        fields=fields,
        resource=dict(ctx.resource),
    )
