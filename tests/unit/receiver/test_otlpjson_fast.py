"""The fast OTLP/JSON reader (light messages) gives the same rows, rejections and errors as the json_format path."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from receiver import jsonfiles
from receiver.cli import read_rows
from receiver.otlp import otlpjson
from receiver.otlp.otlpjson import OtlpJsonError, read_file, read_file_light, to_json_line
from receiver.otlp.otlpjson_fast import LightMessage, light_class
from receiver.rows.mapper import RowMapper
from sim import simulate
from tests.unit.receiver.rows_helpers import T0, logs_request, metrics_request, traces_request

RECEIVED = 1_800_000_000_000_000_000
SIGNAL = {
    ExportLogsServiceRequest: "logs",
    ExportTraceServiceRequest: "traces",
    ExportMetricsServiceRequest: "metrics",
}
TRACE_HEX, SPAN_HEX = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def old_batches(path: Path) -> list[tuple[int, str, str]]:
    """(line, signal, repr of the mapped batch) through json_format and protobuf requests (the previous reader)."""
    mapper, out = RowMapper(), []
    for lineno, request in read_file(path):
        signal = SIGNAL[type(request)]
        out.append((lineno, signal, repr(getattr(mapper, f"map_{signal}")(request, RECEIVED))))
    return out


def new_batches(path: Path) -> list[tuple[int, str, str]]:
    mapper, out = RowMapper(), []
    for lineno, signal, request in read_file_light(path):
        out.append((lineno, signal, repr(getattr(mapper, f"map_{signal}")(request, RECEIVED))))
    return out


def scoped(signal: str, items: list[dict], resource: dict | None = None, **extra) -> dict:
    """An OTLP/JSON request with one resource and one scope holding `items`."""
    top, scopes, key = {
        "logs": ("resourceLogs", "scopeLogs", "logRecords"),
        "traces": ("resourceSpans", "scopeSpans", "spans"),
        "metrics": ("resourceMetrics", "scopeMetrics", "metrics"),
    }[signal]
    res = (
        resource
        if resource is not None
        else {
            "attributes": [
                {"key": "service.name", "value": {"stringValue": "checkout"}},
                {"key": "host.name", "value": {"stringValue": "node-1"}},
            ]
        }
    )
    return {
        top: [{"resource": res, scopes: [{"scope": {"name": "app", "version": "1"}, key: items}], **extra}]
    }


def s(text: str) -> dict:
    return {"stringValue": text}


def attr(key: str, value: dict) -> dict:
    return {"key": key, "value": value}


def point(**fields) -> dict:
    return {
        "startTimeUnixNano": str(T0),
        "timeUnixNano": str(T0 + 10**9),
        "attributes": [attr("route", s("/cart"))],
        **fields,
    }


# Hand-written OTLP/JSON: the shapes a Collector writes plus every variant json_format accepts.
EDGE_REQUESTS = [
    scoped("logs", [{}]),  # an empty record: no time, no body, no ids
    scoped(
        "logs",
        [
            {
                "timeUnixNano": T0,
                "observedTimeUnixNano": str(T0 + 1),
                "severityNumber": "SEVERITY_NUMBER_ERROR",
                "severityText": "ERROR",
                "traceId": TRACE_HEX.upper(),
                "spanId": SPAN_HEX,
                "body": s('{"msg": "login failed", "user": "ida", "nested": {"a": [1, 2]}}'),
                "attributes": [
                    attr("http.response.status_code", {"intValue": "503"}),
                    attr("http.request.method", s("POST")),
                    attr("duration", {"doubleValue": 12}),
                    attr("retry", {"boolValue": False}),
                    attr("raw", {"bytesValue": "3q2+7w=="}),
                    attr("raw_url", {"bytesValue": "3q2-7w"}),
                    attr("tags", {"arrayValue": {"values": [s("a"), {"intValue": 7}, {}]}}),
                    attr(
                        "ctx",
                        {"kvlistValue": {"values": [attr("k", s("v")), attr("n", {"kvlistValue": {}})]}},
                    ),
                    attr("empty", {}),
                    attr("blank", s("")),
                    attr("", s("no key")),
                    {"key": "no value"},
                    attr("nul", s("\u0000é\U0001f600")),
                ],
                "flags": 1,
                "droppedAttributesCount": "2",
                "eventName": "user.login",
            }
        ],
    ),
    scoped(
        "logs",
        [
            {
                "timeUnixNano": str(T0),
                "severityNumber": 9,
                "body": {
                    "kvlistValue": {"values": [attr("message", s("GET /cart 200")), attr("level", s("warn"))]}
                },
            },
            {"timeUnixNano": str(T0), "body": {"arrayValue": {"values": [s("x"), {"doubleValue": 1.5}]}}},
            {"timeUnixNano": str(T0), "body": {"intValue": 42}, "severityText": "debug2"},
            {
                "timeUnixNano": str(T0),
                "body": s(
                    '{"class_uid": 3002, "activity_id": 1, "time": 1700000000000,'
                    ' "message": "ocsf", "user": {"name": "bo"}}'
                ),
            },
            {"timeUnixNano": str(T0), "eventName": "otad.anomaly"},
            {"timeUnixNano": str(T0), "traceId": "abcd"},  # bad length: a rejection
            {"timeUnixNano": str(T0), "traceId": "", "spanId": "0000000000000000"},
        ],
        schemaUrl="https://opentelemetry.io/schemas/1.30.0",
    ),
    {"resourceLogs": [{"resource": {}, "scopeLogs": [{"scope": {"name": "otad"}, "logRecords": [{}]}]}]},
    {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": s("no resource")}]}]}], "unknownTop": {"x": 1}},
    # unknown fields anywhere are ignored (a newer Collector); ids under them must still be hex
    scoped(
        "logs",
        [
            {
                "timeUnixNano": str(T0),
                "futureField": {"spanId": SPAN_HEX, "deep": [{"traceId": TRACE_HEX}]},
                "futureList": [1, 2],
                "futureNull": None,
            }
        ],
        resource={"attributes": [], "entityRefs": [{"type": "service", "idKeys": ["service.name"]}]},
    ),
    scoped(
        "traces",
        [
            {
                "traceId": TRACE_HEX,
                "spanId": SPAN_HEX,
                "parentSpanId": "",
                "name": "GET /cart",
                "kind": "SPAN_KIND_SERVER",
                "startTimeUnixNano": str(T0),
                "endTimeUnixNano": T0 + 12_500_000,
                "attributes": [
                    attr("http.request.method", s("GET")),
                    attr("url.path", s("/cart")),
                    attr("http.response.status_code", {"intValue": 200}),
                ],
                "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
                "flags": 256,
                "traceState": "a=b",
                "droppedEventsCount": 0,
                "droppedLinksCount": "0",
                "events": [
                    {
                        "name": "exception",
                        "timeUnixNano": str(T0),
                        "attributes": [
                            attr("exception.type", s("ValueError")),
                            attr("exception.message", s("bad")),
                        ],
                    }
                ],
                "links": [{"traceId": TRACE_HEX, "spanId": SPAN_HEX, "attributes": [], "flags": 1}],
            },
            {
                "traceId": TRACE_HEX,
                "spanId": "b7ad6b7169203332",
                "parentSpanId": SPAN_HEX,
                "name": "rpc",
                "kind": 3,
                "startTimeUnixNano": str(T0),
                "status": {"code": 1},
                "attributes": [attr("rpc.method", s("GetCart")), attr("server.address", s("cart"))],
            },
            {"spanId": SPAN_HEX, "name": "no trace id"},  # a rejection
            {"traceId": TRACE_HEX, "spanId": SPAN_HEX, "kind": 99, "status": {"code": 7}},
        ],
    ),
    scoped(
        "metrics",
        [
            {
                "name": "queue.depth",
                "unit": "1",
                "description": "d",
                "gauge": {
                    "dataPoints": [
                        point(asDouble=5),
                        point(asInt="7"),
                        point(asInt=-3),
                        point(asDouble=0.25),
                        point(),
                        point(asDouble=1.0, flags=1),
                    ]
                },
            },
            {
                "name": "requests",
                "unit": "{request}",
                "sum": {
                    "aggregationTemporality": "AGGREGATION_TEMPORALITY_CUMULATIVE",
                    "isMonotonic": True,
                    "dataPoints": [point(asInt="100")],
                },
            },
            {"name": "bytes", "sum": {"aggregationTemporality": 1, "dataPoints": [point(asDouble=2048.5)]}},
            {
                "name": "latency",
                "unit": "ms",
                "histogram": {
                    "aggregationTemporality": 1,
                    "dataPoints": [
                        point(
                            count="10",
                            sum=123.5,
                            min=1,
                            max=80.0,
                            bucketCounts=["1", 4, "5"],
                            explicitBounds=[5, 25.0],
                            exemplars=[
                                {
                                    "timeUnixNano": str(T0),
                                    "asDouble": 3.0,
                                    "traceId": TRACE_HEX,
                                    "spanId": SPAN_HEX,
                                    "filteredAttributes": [attr("user", s("ida"))],
                                }
                            ],
                        )
                    ],
                },
            },
            {
                "name": "latency.cumulative",
                "unit": "ms",
                "histogram": {
                    "aggregationTemporality": 2,
                    "dataPoints": [point(count=4, bucketCounts=[4, 0], explicitBounds=[10])],
                },
            },
            {
                "name": "bad.buckets",
                "histogram": {
                    "aggregationTemporality": 1,
                    "dataPoints": [point(count=3, bucketCounts=[3], explicitBounds=[1, 2])],
                },
            },
            {
                "name": "sizes",
                "exponentialHistogram": {
                    "aggregationTemporality": 1,
                    "dataPoints": [
                        point(
                            count="6",
                            sum=12.0,
                            scale=2,
                            zeroCount="1",
                            zeroThreshold=0.001,
                            min=0,
                            max=9.5,
                            positive={"offset": -1, "bucketCounts": ["2", 3]},
                            negative={},
                        )
                    ],
                },
            },
            {
                "name": "rpc.duration",
                "summary": {
                    "dataPoints": [
                        point(
                            count="5",
                            sum=50,
                            quantileValues=[
                                {"quantile": 0, "value": 1},
                                {"quantile": 0.5, "value": 9.5},
                                {"quantile": 0.99, "value": 40},
                                {"quantile": 1, "value": 41},
                            ],
                        )
                    ]
                },
            },
            {"name": "no.data"},
            {"name": "with.metadata", "metadata": [attr("k", s("v"))], "gauge": {"dataPoints": []}},
        ],
    ),
    # the same cumulative series later: its delta depends on the state the previous line left
    scoped(
        "metrics",
        [
            {
                "name": "requests",
                "unit": "{request}",
                "sum": {
                    "aggregationTemporality": 2,
                    "isMonotonic": True,
                    "dataPoints": [point(asInt=160, timeUnixNano=str(T0 + 61 * 10**9))],
                },
            },
            {
                "name": "latency.cumulative",
                "unit": "ms",
                "histogram": {
                    "aggregationTemporality": 2,
                    "dataPoints": [
                        point(
                            count=9,
                            bucketCounts=[6, 3],
                            explicitBounds=[10],
                            timeUnixNano=str(T0 + 61 * 10**9),
                        )
                    ],
                },
            },
            {
                "name": "rpc.duration",
                "summary": {"dataPoints": [point(count=8, sum=80.5, timeUnixNano=str(T0 + 61 * 10**9))]},
            },
        ],
    ),
    # what only json_format decodes (the light path hands these over): proto field names, nulls, "NaN", enum
    # names it does not know (ignored), negative int64 strings, oneof members given twice as null
    {
        "resourceLogs": [
            {
                "scope_logs": [
                    {
                        "log_records": [
                            {
                                "time_unix_nano": str(T0),
                                "body": s("snake"),
                                "trace_id": "AAECAwQFBgcICQoLDA0ODw==",
                            }
                        ]
                    }
                ]
            }
        ]
    },
    scoped("logs", [{"timeUnixNano": str(T0), "body": None, "severityNumber": "SEVERITY_NUMBER_LOUD"}]),
    scoped(
        "metrics",
        [
            {
                "name": "nan",
                "gauge": {
                    "dataPoints": [
                        point(asDouble="NaN"),
                        point(asDouble="-Infinity"),
                        point(asInt="-5"),
                        point(asDouble="1.5"),
                    ]
                },
            }
        ],
    ),
    scoped(
        "logs",
        [
            {
                "timeUnixNano": 1.7e18,
                "attributes": [
                    attr("x", {"stringValue": None, "intValue": 3}),
                    attr("ratio", {"doubleValue": True}),
                ],
            }
        ],
    ),
    scoped("traces", [{"traceId": TRACE_HEX, "spanId": SPAN_HEX, "kind": 2**40, "status": {"code": -5}}]),
]

# Lines both readers must refuse with the same OtlpJsonError message (naming the line).
BAD_LINES = [
    "not json",
    "[]",
    "{}",
    json.dumps({"resourceLogs": [], "resourceSpans": []}),
    json.dumps({"resourceLogs": {"scopeLogs": []}}),
    json.dumps(scoped("logs", [{"traceId": "zz"}])),
    json.dumps({"resourceLogs": [{"futureField": {"spanId": "not hex"}}]}),
    json.dumps(scoped("logs", [{"timeUnixNano": "abc"}])),
    json.dumps(scoped("logs", [{"timeUnixNano": "-1"}])),
    json.dumps(scoped("logs", [{"timeUnixNano": str(2**64)}])),
    json.dumps(scoped("logs", [{"severityText": 5}])),
    json.dumps(scoped("logs", [{"body": {"stringValue": "a", "intValue": "1"}}])),
    json.dumps(scoped("logs", [{"body": {"boolValue": "true"}}])),
    json.dumps(scoped("logs", [{"attributes": [attr("x", {"intValue": True})]}])),
    json.dumps(scoped("logs", [{"attributes": [None]}])),
    json.dumps(scoped("logs", [{"body": s("\ud800")}])),
    json.dumps(scoped("traces", [{"name": ["x"]}])),
    json.dumps(
        scoped(
            "metrics",
            [{"name": "m", "gauge": {"dataPoints": [point(asDouble=1)]}, "sum": {"dataPoints": []}}],
        )
    ),
    json.dumps(scoped("metrics", [{"name": "m", "gauge": {"dataPoints": [point(asInt=1.5)]}}])),
    '{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"doubleValue": NaN}}]}]}]}',
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """A simulated file-exporter file (logs, spans, gauges, sums, histograms) plus the hand-written requests."""
    out = tmp_path_factory.mktemp("sim")
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    assert (
        simulate.run(
            parser.parse_args(
                [
                    "--output-dir",
                    str(out),
                    "--duration",
                    "600",
                    "--rate",
                    "2",
                    "--anomaly-rate",
                    "0.3",
                    "--seed",
                    "11",
                ]
            )
        )
        == 0
    )
    requests = [
        logs_request({"body": "built by protobuf", "severity_number": 13, "attrs": {"n": [1, {"k": b"x"}]}}),
        traces_request({"attrs": {"http.request.method": "GET"}, "status": (Status.STATUS_CODE_OK, "")}),
        metrics_request(
            Metric(
                name="exp",
                exponential_histogram={
                    "aggregation_temporality": 2,
                    "data_points": [
                        {"count": 3, "sum": 4.5, "time_unix_nano": T0, "positive": {"bucket_counts": [1, 2]}}
                    ],
                },
            ),
            Metric(
                name="sum",
                summary={
                    "data_points": [
                        {
                            "count": 2,
                            "sum": 3.0,
                            "time_unix_nano": T0,
                            "quantile_values": [{"quantile": 0.5, "value": 1}],
                        }
                    ]
                },
            ),
        ),
    ]
    lines = (out / "otlp.jsonl").read_text(encoding="utf-8").splitlines()
    extra = [to_json_line(r) for r in requests] + ["", "   "] + [json.dumps(r) for r in EDGE_REQUESTS]
    return write(out / "mixed.jsonl", lines[:40] + extra + lines[40:] + ["\t"])


def test_simulated_and_edge_case_requests_map_to_identical_rows(simulated):
    old, new = old_batches(simulated), new_batches(simulated)
    assert [(line, signal) for line, signal, _ in new] == [(line, signal) for line, signal, _ in old]
    assert {signal for _, signal, _ in new} == {"logs", "traces", "metrics"}
    for before, after in zip(old, new, strict=True):
        assert after == before  # repr: every row field, value and type (5 vs 5.0), rejections, ignored counts
    text = "\n".join(batch for _, _, batch in new)
    for kind in ("gauge", "sum", "histogram", "exponential_histogram", "summary"):
        assert f"'metric.type': '{kind}'" in text
    assert "rejected" not in text and "Rejection(index=" in text  # the bad items are rejections, not errors


def test_read_rows_equals_the_previous_reader_and_restores_the_collector(simulated, tmp_path):
    sim = write(tmp_path / "sim.jsonl", [line for line in simulated.read_text().splitlines()[:-40]])
    previous, mapper = [], RowMapper()
    for _, request in read_file(sim):
        previous.extend(getattr(mapper, f"map_{SIGNAL[type(request)]}")(request).rows)
    previous.sort(key=lambda r: r.time_unix_nano)
    assert gc.isenabled()
    rows = read_rows([sim])
    assert gc.isenabled()
    assert len(rows) == len(previous) > 1000
    assert repr(rows[:1000]) == repr(
        previous[:1000]
    )  # rows with a time (all of the simulated ones) are equal


def test_collector_shaped_lines_need_no_json_format(simulated, monkeypatch):
    calls = []
    parse = otlpjson.parse
    monkeypatch.setattr(otlpjson, "parse", lambda data, kind: calls.append(kind) or parse(data, kind))
    requests = list(read_file_light(simulated))
    assert len(calls) == 5  # only the last five hand-written requests (snake_case names, nulls, "NaN", ...)
    assert sum(not isinstance(r, LightMessage) for _, _, r in requests) == 5


@pytest.mark.parametrize("bad", BAD_LINES)
def test_bad_lines_raise_the_same_error_naming_the_line(tmp_path, bad):
    path = write(
        tmp_path / "bad.jsonl", [json.dumps(scoped("logs", [{}])), "", bad, json.dumps(scoped("logs", []))]
    )
    with pytest.raises(OtlpJsonError) as old:
        old_batches(path)
    with pytest.raises(OtlpJsonError) as new:
        new_batches(path)
    assert str(new.value) == str(old.value)
    assert str(new.value).startswith(f"{path}:3: ")


def test_light_messages_read_like_protobuf_defaults():
    span = light_class("opentelemetry.proto.trace.v1.Span")()
    assert (span.trace_id, span.name, span.kind, span.start_time_unix_nano, span.status.code) == (
        b"",
        "",
        0,
        0,
        0,
    )
    assert list(span.attributes) == [] and len(span.events) == 0
    assert not span.HasField("status")
    value = light_class("opentelemetry.proto.common.v1.AnyValue")()
    assert value.WhichOneof("value") is None and value.string_value == "" and value.int_value == 0
    point = light_class("opentelemetry.proto.metrics.v1.HistogramDataPoint")()
    assert not point.HasField("sum") and point.sum == 0.0


def test_parallel_read_gives_the_same_rows_warnings_and_errors(simulated, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(jsonfiles, "CHUNK_BYTES", 50_000)  # many chunks, metric lines spread over them
    caplog.set_level(logging.WARNING, logger="receiver.jsonfiles")
    start = time.time_ns()
    one = jsonfiles.read_rows([simulated, simulated], workers=0)
    warnings = [r.getMessage() for r in caplog.records]
    caplog.clear()
    many = jsonfiles.read_rows([simulated, simulated], workers=2)
    assert [r.getMessage() for r in caplog.records] == warnings and len(warnings) > 2
    # rows without a time take the time they were read, so compare those by everything else
    received = {id(r) for r in one + many if r.time_unix_nano >= start}
    assert len(one) == len(many) > 2000
    assert repr([r for r in one if id(r) not in received]) == repr([r for r in many if id(r) not in received])

    lines = simulated.read_text(encoding="utf-8").splitlines()
    at = len(lines) * 2 // 3
    bad = write(tmp_path / "bad.jsonl", lines[:at] + ["{not json"] + lines[at:])
    with pytest.raises(OtlpJsonError, match=f"^{bad}:{at + 1}: "):
        jsonfiles.read_rows([bad], workers=2)


def test_parallel_workers_do_not_fork_from_this_process():
    # a worker forked from a process running threads can inherit a held lock and wait forever; the pool's
    # workers come from a fork server instead, so their parent is not this process
    with jsonfiles._pool(1) as pool:
        assert pool.apply(os.getppid) != os.getpid()
