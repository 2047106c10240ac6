"""Fuzz the row mapper with hostile requests: it never raises, accounts for every item, names the first
offending item, and every row it returns can be stored (JSON) and re-read."""

from __future__ import annotations

import json
import math
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from model.schema import row_from_dict, row_to_dict
from receiver.rows.mapper import RowMapper
from tests.fuzz.strategies import count_items, logs_requests, metrics_requests, traces_requests

SCALE = float(os.environ.get("OTAD_FUZZ_SCALE", "1"))  # e.g. 20 for a long local run; CI keeps 1 (< 60 s)
FUZZ = settings(
    max_examples=int(60 * SCALE),
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOUN = {"logs": "log records", "traces": "spans", "metrics": "data points"}
RECEIVED = 1_700_000_000_000_000_000


def check(signal: str, request, mapper: RowMapper | None = None) -> None:
    mapper = mapper or RowMapper()
    batch = getattr(mapper, f"map_{signal}")(request, RECEIVED)
    total = count_items(signal, request)
    assert batch.total == total
    assert len(batch.rows) + len(batch.rejections) + batch.ignored == total
    if batch.rejections:
        message = batch.error_message(NOUN[signal])
        first = batch.rejections[0]
        assert message.startswith(f"{len(batch.rejections)}/{total} {NOUN[signal]} rejected")
        assert f"(first at {first.index})" in message and first.index.startswith("resource ")
    for row in batch.rows:
        assert row.signal == signal and isinstance(row.uid, str) and 0 < len(row.uid) <= 128
        assert 0 <= row.time_unix_nano < 2**64
        text = json.dumps(row_to_dict(row), default=str, allow_nan=True)  # what storage writes
        back = row_from_dict(json.loads(text))
        assert back.uid == row.uid
        for value in row.fields.values():
            assert isinstance(value, str | int | float | bool) or value is None
            if isinstance(value, float):
                assert math.isfinite(value), (row.fields, value)
    again = getattr(RowMapper(), f"map_{signal}")(request, RECEIVED)
    if signal != "metrics":  # (cumulative metrics depend on the previous point of the series)
        assert [r.uid for r in again.rows] == [r.uid for r in batch.rows]  # replays re-map to the same uids


@FUZZ
@given(logs_requests())
def test_logs(request):
    check("logs", request)


@FUZZ
@given(traces_requests())
def test_traces(request):
    check("traces", request)


@FUZZ
@given(metrics_requests())
def test_metrics(request):
    check("metrics", request)


@settings(max_examples=int(40 * SCALE), deadline=2000)
@given(st.lists(metrics_requests(), min_size=2, max_size=3))
def test_metrics_series_state_survives_hostile_sequences(requests):
    mapper = RowMapper(max_series=8)
    for request in requests:
        check("metrics", request, mapper)
    assert mapper.series_count <= 8


@settings(max_examples=int(150 * SCALE), deadline=1000)
@given(
    st.binary(max_size=512),
    st.sampled_from([ExportLogsServiceRequest, ExportTraceServiceRequest, ExportMetricsServiceRequest]),
)
def test_random_bytes_either_fail_to_decode_or_map_cleanly(data, cls):
    try:
        request = cls.FromString(data)
    except Exception as exc:  # the gRPC layer answers INVALID_ARGUMENT for these (test_fuzz_grpc)
        assert type(exc).__name__ == "DecodeError"
        return
    signal = {ExportLogsServiceRequest: "logs", ExportTraceServiceRequest: "traces"}.get(cls, "metrics")
    check(signal, request)
