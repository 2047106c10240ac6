"""Row mapper: metric data points (gauge, sums and their deltas, histograms, summaries, rejections)."""

from __future__ import annotations

import math

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from model.schema import METRIC_OBSERVATION, metric_point_uid
from receiver.rows.mapper import Rejection, RowMapper
from tests.unit.receiver.rows_helpers import T0, kvs, metrics_request

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
S = 1_000_000_000


def gauge(name="queue.depth", *values, attrs=None, unit="1"):
    metric = Metric(name=name, unit=unit)
    for i, value in enumerate(values):
        point = metric.gauge.data_points.add(time_unix_nano=T0 + i * S, attributes=kvs(attrs or {}))
        if isinstance(value, int):
            point.as_int = value
        else:
            point.as_double = value
    return metric


def counter(value, t, *, temporality=CUMULATIVE, monotonic=True, start=T0 - 60 * S, attrs=None):
    metric = Metric(name="http.requests", unit="{request}")
    metric.sum.aggregation_temporality = temporality
    metric.sum.is_monotonic = monotonic
    metric.sum.data_points.add(
        start_time_unix_nano=start,
        time_unix_nano=t,
        as_double=value,
        attributes=kvs(attrs or {"route": "/cart"}),
    )
    return metric


def histogram(count, total, buckets, t, *, temporality=DELTA, bounds=(10.0, 20.0, 50.0), lo=None, hi=None):
    metric = Metric(name="http.server.request.duration", unit="ms")
    metric.histogram.aggregation_temporality = temporality
    point = metric.histogram.data_points.add(
        start_time_unix_nano=T0 - 10 * S,
        time_unix_nano=t,
        count=count,
        sum=total,
        bucket_counts=buckets,
        explicit_bounds=bounds,
    )
    if lo is not None:
        point.min = lo
    if hi is not None:
        point.max = hi
    return metric


def rows_of(mapper, *metrics):
    batch = mapper.map_metrics(metrics_request(*metrics), received_unix_nano=42)
    assert len(batch.rows) + len(batch.rejections) + batch.ignored == batch.total
    return batch


def test_gauge_points_and_common_columns():
    batch = rows_of(
        RowMapper(), gauge("queue.depth", 3, 4.5, attrs={"queue": "orders", "shard": 2, "hot": True})
    )
    first, second = batch.rows
    assert (first.class_uid, first.activity_id, first.severity_id, first.status_id) == (
        METRIC_OBSERVATION,
        0,
        1,
        0,
    )
    f = first.fields
    assert (f["metric.name"], f["message"], f["metric.type"], f["metric.unit"]) == (
        "queue.depth",
        "queue.depth",
        "gauge",
        "1",
    )
    assert f["metric.value"] == 3.0 and second.fields["metric.value"] == 4.5
    assert (f["unmapped.queue"], f["unmapped.shard"], f["unmapped.hot"]) == ("orders", 2, 1)
    assert "metric.temporality" not in f and "metric.monotonic" not in f
    assert f["metric.series"] == second.fields["metric.series"]
    assert first.uid == metric_point_uid(
        "checkout", "queue.depth", {"queue": "orders", "shard": 2, "hot": True}, T0
    )
    assert (
        first.uid != second.uid and first.time_unix_nano == T0 and first.fields["device.hostname"] == "node-1"
    )


def test_series_key_depends_on_attributes_not_on_their_order():
    a = rows_of(RowMapper(), gauge("g", 1, attrs={"x": "1", "y": "2"})).rows[0]
    b = rows_of(RowMapper(), gauge("g", 1, attrs={"y": "2", "x": "1"})).rows[0]
    c = rows_of(RowMapper(), gauge("g", 1, attrs={"x": "1", "y": "3"})).rows[0]
    assert a.fields["metric.series"] == b.fields["metric.series"] != c.fields["metric.series"]
    assert a.uid == b.uid != c.uid


def test_delta_sum_value_and_rate():
    row = rows_of(RowMapper(), counter(30.0, T0, temporality=DELTA, start=T0 - 10 * S)).rows[0]
    f = row.fields
    assert (f["metric.value"], f["metric.rate"], f["metric.temporality"], f["metric.monotonic"]) == (
        30.0,
        3.0,
        "delta",
        1,
    )


def test_cumulative_sum_becomes_delta_and_rate_across_requests():
    mapper = RowMapper()
    first = rows_of(mapper, counter(100.0, T0)).rows[0].fields
    assert "metric.value" not in first and first["metric.cumulative"] == 100.0 and "metric.rate" not in first
    second = rows_of(mapper, counter(130.0, T0 + 10 * S)).rows[0].fields
    assert (second["metric.value"], second["metric.rate"], second["metric.cumulative"]) == (30.0, 3.0, 130.0)
    assert second["metric.temporality"] == "cumulative"
    # another series (other attributes) starts on its own
    other = rows_of(mapper, counter(5.0, T0 + 10 * S, attrs={"route": "/pay"})).rows[0].fields
    assert "metric.value" not in other
    assert mapper.series_count == 2


def test_counter_reset_makes_the_new_value_the_delta():
    mapper = RowMapper()
    rows_of(mapper, counter(100.0, T0))
    reset = rows_of(mapper, counter(7.0, T0 + 5 * S)).rows[0].fields
    assert reset["metric.value"] == 7.0 and reset["metric.rate"] == pytest.approx(7.0 / 5)
    # a newer start time is a reset too, even when the value went up
    restarted = rows_of(mapper, counter(50.0, T0 + 15 * S, start=T0 + 10 * S)).rows[0].fields
    assert restarted["metric.value"] == 50.0 and restarted["metric.rate"] == pytest.approx(10.0)


def test_non_monotonic_cumulative_sum_may_go_down():
    mapper = RowMapper()
    rows_of(mapper, counter(10.0, T0, monotonic=False))
    row = rows_of(mapper, counter(4.0, T0 + 2 * S, monotonic=False)).rows[0].fields
    assert (row["metric.value"], row["metric.rate"], row["metric.monotonic"]) == (-6.0, -3.0, 0)


def test_retried_cumulative_point_gets_the_same_delta_and_older_points_none():
    mapper = RowMapper()
    rows_of(mapper, counter(100.0, T0))
    once = rows_of(mapper, counter(130.0, T0 + 10 * S)).rows[0]
    again = rows_of(mapper, counter(130.0, T0 + 10 * S)).rows[0]
    assert once.uid == again.uid and again.fields["metric.value"] == 30.0
    late = rows_of(mapper, counter(120.0, T0 + 5 * S)).rows[0].fields
    assert "metric.value" not in late
    assert rows_of(mapper, counter(150.0, T0 + 20 * S)).rows[0].fields["metric.value"] == 20.0


def test_series_state_is_bounded_and_evicts_the_oldest():
    mapper = RowMapper(max_series=2)
    for route in ("/a", "/b", "/c"):
        rows_of(mapper, counter(1.0, T0, attrs={"route": route}))
    assert mapper.series_count == 2
    assert "metric.value" not in rows_of(mapper, counter(2.0, T0 + S, attrs={"route": "/a"})).rows[0].fields
    assert rows_of(mapper, counter(2.0, T0 + S, attrs={"route": "/c"})).rows[0].fields["metric.value"] == 1.0
    with pytest.raises(ValueError, match="max_series"):
        RowMapper(max_series=0)


def test_delta_histogram_stats_and_interpolated_quantiles():
    row = rows_of(RowMapper(), histogram(100, 2000.0, [50, 30, 15, 5], T0, lo=1.0, hi=80.0)).rows[0]
    f = row.fields
    assert (f["metric.count"], f["metric.sum"], f["metric.mean"], f["metric.value"]) == (
        100.0,
        2000.0,
        20.0,
        20.0,
    )
    assert (f["metric.min"], f["metric.max"], f["metric.temporality"]) == (1.0, 80.0, "delta")
    assert f["metric.rate"] == pytest.approx(10.0)
    assert f["metric.p50"] == pytest.approx(10.0)  # 50th of 100 is the top of bucket (1, 10]
    assert f["metric.p95"] == pytest.approx(50.0)  # end of bucket (20, 50]
    assert f["metric.p99"] == pytest.approx(50.0 + 30.0 * 4 / 5)  # inside (50, max=80]
    no_bounds = rows_of(RowMapper(), histogram(4, 8.0, [4], T0, bounds=())).rows[0].fields
    assert no_bounds["metric.mean"] == 2.0 and "metric.p50" not in no_bounds


def test_cumulative_histogram_uses_per_series_deltas():
    mapper = RowMapper()
    first = rows_of(mapper, histogram(10, 100.0, [10, 0, 0, 0], T0, temporality=CUMULATIVE)).rows[0].fields
    assert (first["metric.cumulative_count"], first["metric.cumulative_sum"]) == (10.0, 100.0)
    assert "metric.count" not in first and "metric.p50" not in first and "metric.value" not in first
    second = rows_of(mapper, histogram(20, 400.0, [10, 0, 10, 0], T0 + 10 * S, temporality=CUMULATIVE))
    f = second.rows[0].fields
    assert (f["metric.count"], f["metric.sum"], f["metric.mean"], f["metric.rate"]) == (
        10.0,
        300.0,
        30.0,
        1.0,
    )
    assert f["metric.p50"] == pytest.approx(35.0)  # all ten new observations fell in (20, 50]


def test_summary_quantiles_and_cumulative_count():
    metric = Metric(name="rpc.latency", unit="s")
    point = metric.summary.data_points.add(start_time_unix_nano=T0 - S, time_unix_nano=T0, count=4, sum=2.0)
    for q, v in ((0.0, 0.1), (0.5, 0.4), (0.95, 0.9), (0.99, 0.95), (0.999, 0.99), (1.0, 1.0)):
        point.quantile_values.add(quantile=q, value=v)
    f = rows_of(RowMapper(), metric).rows[0].fields
    assert (f["metric.p50"], f["metric.p95"], f["metric.p99"], f["metric.p99.9"]) == (0.4, 0.9, 0.95, 0.99)
    assert (f["metric.min"], f["metric.max"], f["metric.type"]) == (0.1, 1.0, "summary")
    assert (f["metric.cumulative_count"], f["metric.cumulative_sum"]) == (4.0, 2.0)


def test_exponential_histogram_count_sum_mean():
    metric = Metric(name="latency")
    metric.exponential_histogram.aggregation_temporality = DELTA
    metric.exponential_histogram.data_points.add(time_unix_nano=T0, count=4, sum=10.0, scale=1)
    f = rows_of(RowMapper(), metric).rows[0].fields
    assert (f["metric.type"], f["metric.count"], f["metric.sum"], f["metric.mean"]) == (
        "exponential_histogram",
        4.0,
        10.0,
        2.5,
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected_and_the_rest_kept(bad):
    batch = rows_of(RowMapper(), gauge("g", 1.0, bad, 3.0))
    assert [r.fields["metric.value"] for r in batch.rows] == [1.0, 3.0]
    assert batch.rejections == [Rejection("resource 0, scope 0, metric 0, point 1", "non-finite value")]
    hist = rows_of(RowMapper(), histogram(1, bad, [1, 0, 0, 0], T0))
    assert hist.rejections[0].reason == "non-finite value" and not hist.rows


def test_no_recorded_value_points_are_ignored_and_malformed_buckets_rejected():
    metric = gauge("g", 1.0, 2.0)
    metric.gauge.data_points[1].flags = 1
    batch = rows_of(RowMapper(), metric, histogram(3, 3.0, [1, 2], T0))
    assert (len(batch.rows), batch.ignored, batch.total) == (1, 1, 3)
    assert batch.rejections[0].index == "resource 0, scope 0, metric 1, point 0"
    assert "bucket_counts length 2" in batch.rejections[0].reason
    assert batch.error_message("data points").startswith("1/3 data points rejected: bucket_counts length 2")


def test_point_without_value_is_rejected_and_time_falls_back():
    metric = Metric(name="g")
    metric.gauge.data_points.add(time_unix_nano=T0)
    metric.gauge.data_points.add(time_unix_nano=0, as_int=1)
    batch = rows_of(RowMapper(), metric)
    assert batch.rejections[0].reason == "missing value"
    assert batch.rows[0].time_unix_nano == 42
