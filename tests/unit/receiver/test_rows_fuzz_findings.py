"""Regressions for what the fuzzers (tests/fuzz) found in the row mapper."""

from __future__ import annotations

import math

from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from receiver.rows.mapper import RowMapper
from tests.unit.receiver.rows_helpers import T0, logs_request, metrics_request


def test_non_finite_double_attributes_become_categories_not_numbers():
    batch = RowMapper().map_logs(
        logs_request(
            {
                "body": "x",
                "attrs": {"ratio": float("nan"), "up": float("inf"), "down": float("-inf"), "ok": 0.5},
            }
        )
    )
    fields = batch.rows[0].fields
    assert (fields["unmapped.ratio"], fields["unmapped.up"], fields["unmapped.down"]) == (
        "nan",
        "inf",
        "-inf",
    )
    assert fields["unmapped.ok"] == 0.5
    assert all(math.isfinite(v) for v in fields.values() if isinstance(v, float))


def test_histogram_whose_finite_bounds_overflow_is_rejected_with_the_column_named():
    metric = Metric(name="latency", unit="ms")
    metric.histogram.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    point = metric.histogram.data_points.add(time_unix_nano=T0, count=2, sum=0.0)
    point.explicit_bounds.extend([-1e308, 1e308])  # finite, but their difference is +inf
    point.bucket_counts.extend([0, 2, 0])
    good = Metric(name="latency", unit="ms")
    good.gauge.data_points.add(time_unix_nano=T0, as_double=3.0)
    batch = RowMapper().map_metrics(metrics_request(metric, good))
    assert len(batch.rows) == 1 and len(batch.rejections) == 1
    assert "overflows to a non-finite value" in batch.rejections[0].reason
    assert batch.rejections[0].index.endswith("metric 0, point 0")
