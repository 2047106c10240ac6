"""Fuzz the OTLP/JSON readers with hostile requests written as OTLP/JSON: the light-message path gives exactly the
batches (rows with their value types, rejections, ignored counts) or the error of the json_format path."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings

from receiver.otlp.otlpjson import OtlpJsonError, from_dict, from_dict_light, to_json_line
from receiver.rows.mapper import RowMapper
from tests.fuzz.strategies import logs_requests, metrics_requests, traces_requests

SCALE = float(os.environ.get("OTAD_FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=int(60 * SCALE),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RECEIVED = 1_700_000_000_000_000_000
SIGNAL = {
    "ExportLogsServiceRequest": "logs",
    "ExportTraceServiceRequest": "traces",
    "ExportMetricsServiceRequest": "metrics",
}


def both(line: str) -> tuple[str, str]:
    """repr of the batch (or of the error) through json_format and through the light path, each on fresh state."""
    results = []
    for light in (False, True):
        data = json.loads(line)  # from_dict rewrites ids in place: each path gets its own copy
        try:
            if light:
                signal, request = from_dict_light(data)
            else:
                request = from_dict(data)
                signal = SIGNAL[type(request).__name__]
        except OtlpJsonError as exc:
            results.append(f"error: {exc}")
            continue
        mapper = RowMapper()
        method = getattr(mapper, f"map_{signal}")
        results.append(
            repr([method(request, RECEIVED), method(request, RECEIVED + 1)])
        )  # twice: series state
    return results[0], results[1]


def check(request) -> None:
    old, new = both(to_json_line(request))
    assert new == old


@FUZZ
@given(logs_requests())
def test_logs_json_light_path_equals_json_format(request):
    check(request)


@FUZZ
@given(traces_requests())
def test_traces_json_light_path_equals_json_format(request):
    check(request)


@FUZZ
@given(metrics_requests())
def test_metrics_json_light_path_equals_json_format(request):
    check(request)
