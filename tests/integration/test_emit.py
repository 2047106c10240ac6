"""The anomaly emitter: the event contract (docs/contracts.md) and OTLP client behaviour against a real gRPC sink."""

from __future__ import annotations

import json
import logging
import time

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from model.schema import Anomaly, Row, content_uid
from receiver.emit import AnomalyEmitter
from receiver.events import (
    ERROR_SCORE,
    EVENT_NAME,
    MAX_BODY_BYTES,
    OTAD_SCOPE,
    AnomalyEvent,
    build_event,
    build_request,
    finding,
)
from tests.helpers import free_port
from tests.otlp_sink import OtlpSink

pytestmark = pytest.mark.integration

VERSION = "0.1.0"


def events(anomalies: list[Anomaly]) -> list[AnomalyEvent]:
    return [AnomalyEvent.of(a, VERSION) for a in anomalies]


TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
RESOURCE = {
    "service.name": "payments",
    "host.name": "pay-1",
    "process.pid": 4242,
    "cpu.share": 0.5,
    "k8s.canary": True,
}


def make_anomaly(
    uid: str = "u1",
    score: float = 80.0,
    resource: dict | None = None,
    trace: bool = True,
    message: str = "card declined for user 1234",
    evidence=None,
) -> Anomaly:
    row = Row(
        uid=uid,
        signal="logs",
        time_unix_nano=1_700_000_000_123_456_789,
        service="payments",
        class_uid=6999,
        activity_id=1,
        severity_id=4,
        status_id=2,
        fields={"message": message},
        trace_id=TRACE if trace else "",
        span_id=SPAN if trace else "",
        resource=dict(RESOURCE if resource is None else resource),
    )
    return Anomaly(
        row=row,
        score=score,
        raw_score=1.25,
        threshold=70.0,
        detector="tabular-resnet-knn",
        model_version="m-2024-01",
        explanation="The message template was never seen for payments.",
        neighbors=("n1", "n2", "n3"),
        evidence=evidence if evidence is not None else (("template", "card declined <*>", "paid <*>"),),
        detected_unix_nano=1_700_000_005_000_000_000,
    )


def attrs(kvs) -> dict:
    return {kv.key: kv.value for kv in kvs}


def plain(kvs) -> dict:
    """Attributes as Python values (int_value decoded as int, not as JSON's decimal string)."""
    out = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind != "array_value" else MessageToDict(kv.value)
    return out


@pytest.fixture
def sink():
    s = OtlpSink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def emitters():
    made: list[AnomalyEmitter] = []

    def make(endpoint, **kw) -> AnomalyEmitter:
        kw.setdefault("version", VERSION)
        emitter = AnomalyEmitter(endpoint, **kw)
        made.append(emitter)
        return emitter

    yield make
    for emitter in made:
        emitter.shutdown(1.0)


# ---------------------------------------------------------------- the event


def test_event_matches_the_contract():
    anomaly = make_anomaly()
    resource, record = build_event(AnomalyEvent.of(anomaly, VERSION))

    assert record.event_name == EVENT_NAME == "otad.anomaly"
    assert record.time_unix_nano == anomaly.row.time_unix_nano
    assert record.observed_time_unix_nano == anomaly.detected_unix_nano
    assert record.trace_id == bytes.fromhex(TRACE) and record.span_id == bytes.fromhex(SPAN)
    assert (record.severity_number, record.severity_text) == (13, "WARN")
    assert plain(resource.attributes) == RESOURCE
    typed = attrs(resource.attributes)
    assert typed["process.pid"].WhichOneof("value") == "int_value"
    assert typed["cpu.share"].WhichOneof("value") == "double_value"
    assert typed["k8s.canary"].WhichOneof("value") == "bool_value"

    a = attrs(record.attributes)
    kinds = {k: v.WhichOneof("value") for k, v in a.items()}
    assert kinds == {
        "anomaly.score": "double_value",
        "anomaly.raw_score": "double_value",
        "anomaly.threshold": "double_value",
        "anomaly.detector": "string_value",
        "anomaly.model.version": "string_value",
        "anomaly.source.signal": "string_value",
        "anomaly.source.uid": "string_value",
        "anomaly.source.ocsf.class_uid": "int_value",
        "anomaly.explanation": "string_value",
        "anomaly.neighbors": "array_value",
        "anomaly.finding.uid": "string_value",
        "anomaly.finding.count": "int_value",
    }
    assert "event.name" not in a  # the deprecated attribute only with OTAD_EVENT_NAME_ATTRIBUTE=true
    _, named = build_event(AnomalyEvent.of(anomaly, VERSION), name_attribute=True)
    assert attrs(named.attributes)["event.name"].string_value == EVENT_NAME
    assert a["anomaly.finding.count"].int_value == 1
    assert (
        a["anomaly.score"].double_value,
        a["anomaly.raw_score"].double_value,
        a["anomaly.threshold"].double_value,
    ) == (80.0, 1.25, 70.0)
    assert a["anomaly.detector"].string_value == "tabular-resnet-knn"
    assert a["anomaly.model.version"].string_value == "m-2024-01"
    assert a["anomaly.source.signal"].string_value == "logs"
    assert a["anomaly.source.uid"].string_value == "u1"
    assert a["anomaly.source.ocsf.class_uid"].int_value == 6999
    assert a["anomaly.explanation"].string_value == anomaly.explanation
    assert [v.string_value for v in a["anomaly.neighbors"].array_value.values] == ["n1", "n2", "n3"]

    body = json.loads(record.body.string_value)
    assert body == finding(anomaly, VERSION)
    assert (body["class_uid"], body["type_uid"], body["category_uid"], body["activity_id"]) == (
        2004,
        200401,
        2,
        1,
    )
    assert (body["severity_id"], body["status_id"], body["is_alert"]) == (3, 1, True)
    assert body["time"] == anomaly.row.time_unix_nano // 1_000_000
    assert body["confidence_score"] == body["risk_score"] == 80
    assert body["metadata"] == {
        "product": {"name": "otad", "vendor_name": "otad", "version": VERSION},
        "version": "1.8.0",
    }
    info = body["finding_info"]
    assert info["uid"] == content_uid("u1", "m-2024-01")
    assert info["title"] == "Unusual log record from payments (score 80/100): card declined for user 1234"
    assert info["desc"] == anomaly.explanation
    assert info["analytic"] == {
        "type_id": 4,
        "type": "Learning (ML/DL)",
        "name": "tabular-resnet-knn",
        "version": "m-2024-01",
    }
    assert info["created_time"] == anomaly.detected_unix_nano // 1_000_000
    assert info["related_events"] == [{"uid": "u1", "type_uid": 699901, "trace_uid": TRACE}]
    analysis = body["anomaly_analyses"][0]
    assert analysis["analysis_targets"] == [{"name": "payments", "type": "service"}]
    assert analysis["anomalies"][0] == {
        "observation_parameter": "embedding k-NN distance",
        "observation_type": "Distribution Analysis",
        "observed_pattern": "RARE",
        "observations": [{"value": "1.25"}],
    }
    assert analysis["anomalies"][1]["observations"] == [{"value": "card declined <*>"}]
    assert analysis["baselines"] == [
        {"observation_parameter": "threshold", "observations": [{"value": "70.0"}]},
        {"observation_parameter": "template", "observations": [{"value": "paid <*>"}]},
    ]
    assert body["trace"] == {"uid": TRACE, "span": {"uid": SPAN}}
    assert body["unmapped"] == {"anomaly.source.signal": "logs"}
    assert (body["confidence_id"], body["confidence"], body["count"]) == (2, "Medium", 1)
    assert info["first_seen_time"] == info["last_seen_time"] == body["start_time"] == body["end_time"]
    assert body["evidences"] == [{"data": {"message": "card declined for user 1234"}, "name": "payments"}]
    assert body["resources"] == [{"type": "service", "name": "payments"}, {"type": "host", "name": "pay-1"}]


def test_top_band_is_error_and_high():
    _, record = build_event(AnomalyEvent.of(make_anomaly(score=ERROR_SCORE + 5), VERSION))
    assert (record.severity_number, record.severity_text) == (17, "ERROR")
    body = json.loads(record.body.string_value)
    assert body["severity_id"] == 4
    assert body["anomaly_analyses"][0]["anomalies"][0]["observed_pattern"] == "UNSEEN"
    _, edge = build_event(AnomalyEvent.of(make_anomaly(score=ERROR_SCORE), VERSION))
    assert edge.severity_number == 17


def test_missing_service_name_and_ids():
    resource, record = build_event(
        AnomalyEvent.of(make_anomaly(resource={"host.name": "h"}, trace=False), VERSION)
    )
    assert plain(resource.attributes) == {"host.name": "h", "service.name": "payments"}
    assert record.trace_id == b"" and record.span_id == b""
    body = json.loads(record.body.string_value)
    assert "trace" not in body and "trace_uid" not in body["finding_info"]["related_events"][0]


def test_body_stays_small_and_title_one_line():
    huge = "x" * 50_000
    evidence = tuple((f"f{i}" * 40, huge, huge) for i in range(200))
    anomaly = make_anomaly(message="line one\nline two " + huge, evidence=evidence)
    _, record = build_event(AnomalyEvent.of(anomaly, VERSION))
    assert len(record.body.string_value.encode()) < MAX_BODY_BYTES
    title = json.loads(record.body.string_value)["finding_info"]["title"]
    assert "\n" not in title and title.startswith(
        "Unusual log record from payments (score 80/100): line one line"
    )
    assert len(title) < 160


def test_request_groups_events_by_resource():
    other = {"service.name": "checkout"}
    request = build_request(
        events([make_anomaly("a"), make_anomaly("b", resource=other), make_anomaly("c")]), VERSION
    )
    assert len(request.resource_logs) == 2
    first, second = request.resource_logs
    assert plain(first.resource.attributes)["service.name"] == "payments"
    assert [
        attrs(r.attributes)["anomaly.source.uid"].string_value for r in first.scope_logs[0].log_records
    ] == ["a", "c"]
    assert len(second.scope_logs[0].log_records) == 1
    for rl in request.resource_logs:
        assert len(rl.scope_logs) == 1
        assert (rl.scope_logs[0].scope.name, rl.scope_logs[0].scope.version) == (OTAD_SCOPE, VERSION)


# ---------------------------------------------------------------- the export


def test_delivers_to_a_real_otlp_endpoint(sink, emitters):
    results: list[tuple[str, int]] = []
    emitter = emitters(
        sink.endpoint, headers={"X-Tenant": "t1"}, on_result=lambda o, n: results.append((o, n))
    )
    emitter.start()
    anomalies = [make_anomaly("a"), make_anomaly("b", score=97.0)]
    emitter.emit(events(anomalies))
    assert emitter.flush(5.0)
    received = sink.log_records()
    expected = [build_event(AnomalyEvent.of(a, VERSION)) for a in anomalies]
    assert [(r, rec) for r, _, rec in received] == expected
    assert all((s.name, s.version) == ("otad", VERSION) for _, s, _ in received)
    assert ("x-tenant", "t1") in sink.calls_for("logs")[0].metadata
    assert emitter.stats["sent"] == 2 and results == [("sent", 2)]


def test_retries_unavailable_after_the_retry_info_delay(sink, emitters):
    sink.fail_next(1, grpc.StatusCode.UNAVAILABLE, retry_delay_s=0.6)
    emitter = emitters(sink.endpoint, timeout_s=5.0)
    emitter.start()
    emitter.emit(events([make_anomaly()]))
    assert emitter.flush(5.0)
    calls = sink.calls_for("logs")
    assert [c.code for c in calls] == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK]
    assert calls[1].at - calls[0].at >= 0.6
    assert calls[1].peer == calls[0].peer  # a server that answers with RetryInfo keeps its connection
    assert len(sink.log_records()) == 1
    assert (emitter.stats["sent"], emitter.stats["retries"], emitter.stats["failed"]) == (1, 1, 0)


@pytest.mark.parametrize(
    ("code", "delay", "retried"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.2, True),
        (grpc.StatusCode.INVALID_ARGUMENT, None, False),
        (grpc.StatusCode.UNAVAILABLE, None, True),
    ],
)
def test_retryable_codes(sink, emitters, code, delay, retried):
    sink.fail_next(1, code, retry_delay_s=delay)
    emitter = emitters(sink.endpoint, timeout_s=5.0)
    emitter.start()
    emitter.emit(events([make_anomaly()]))
    assert emitter.flush(5.0)
    assert len(sink.calls_for("logs")) == (2 if retried else 1)
    assert emitter.stats["sent"] == (1 if retried else 0)
    assert emitter.stats["failed"] == (0 if retried else 1)


def test_partial_success_is_logged_counted_and_not_retried(sink, emitters, caplog):
    results: list[tuple[str, int]] = []
    sink.partial_next(2, "2 records lacked a body")
    emitter = emitters(sink.endpoint, on_result=lambda o, n: results.append((o, n)))
    emitter.start()
    with caplog.at_level(logging.WARNING, logger="receiver.emit"):
        emitter.emit(events([make_anomaly("a"), make_anomaly("b"), make_anomaly("c")]))
        assert emitter.flush(5.0)
    assert len(sink.calls_for("logs")) == 1
    assert emitter.stats["partial_rejected"] == 2 and emitter.stats["retries"] == 0
    assert ("partial", 2) in results and ("sent", 1) in results
    assert any(
        "rejected_log_records=2" in r.getMessage() and "lacked a body" in r.getMessage()
        for r in caplog.records
    )


def test_endpoint_down_fails_within_the_deadline_then_recovers(emitters, caplog):
    port = free_port()
    emitter = emitters(f"localhost:{port}", timeout_s=1.0)
    emitter.start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="receiver.emit"):
        emitter.emit(events([make_anomaly("lost")]))
        assert emitter.flush(5.0)
    assert time.monotonic() - started < 2.0
    assert emitter.stats["failed"] == 1 and emitter.stats["retries"] >= 1
    line = next(r.getMessage() for r in caplog.records if "could not export" in r.getMessage())
    assert f"localhost:{port}" in line and "UNAVAILABLE" in line and "remain stored" in line

    back = OtlpSink()
    back.start(port)
    try:
        emitter.timeout_s = 8.0
        emitter.emit(events([make_anomaly("next")]))
        assert emitter.flush(10.0)
        assert emitter.stats["sent"] == 1
        assert [attrs(r.attributes)["anomaly.source.uid"].string_value for _, _, r in back.log_records()] == [
            "next"
        ]
    finally:
        back.stop()


def test_an_endpoint_that_comes_back_gets_the_next_event_at_once(emitters):
    """After seconds of refused connections gRPC waits up to its reconnect backoff (5 s here) before it tries
    again, and fails every call in between at once: the emitter must not let that outlast its own deadline."""
    port = free_port()
    emitter = emitters(f"localhost:{port}", timeout_s=6.0)
    emitter.start()
    emitter.emit(events([make_anomaly("while-down")]))
    assert emitter.flush(10.0)
    assert emitter.stats["failed"] == 1 and emitter.stats["retries"] >= 3
    back = OtlpSink()
    back.start(port)
    try:
        emitter.timeout_s = 1.0
        for uid in ("back-1", "back-2", "back-3"):
            emitter.emit(events([make_anomaly(uid)]))
            assert emitter.flush(5.0)
        assert emitter.stats["sent"] == 3, emitter.stats
    finally:
        back.stop()


def test_shutdown_cuts_backoff_short(sink, emitters):
    sink.fail_next(1, grpc.StatusCode.UNAVAILABLE, retry_delay_s=10.0)
    emitter = emitters(sink.endpoint, timeout_s=30.0)
    emitter.start()
    emitter.emit(events([make_anomaly()]))
    assert sink.wait_for(lambda: len(sink.calls) == 1, timeout=5.0)
    time.sleep(0.1)  # the worker is now waiting out the RetryInfo delay
    started = time.monotonic()
    emitter.shutdown(5.0)
    assert time.monotonic() - started < 1.0
    assert emitter.stats["failed"] == 1 and len(sink.calls) == 1


def test_buffer_overflow_drops_the_oldest(emitters, caplog):
    results: list[tuple[str, int]] = []
    emitter = emitters(
        "localhost:1", max_buffer=5, batch_size=5, on_result=lambda o, n: results.append((o, n))
    )
    with caplog.at_level(logging.WARNING, logger="receiver.emit"):
        emitter.emit(events([make_anomaly(str(i)) for i in range(8)]))
    assert emitter.stats["dropped"] == 3 and results == [("dropped", 3)]
    assert [e.anomaly.row.uid for e in emitter._buffer] == ["3", "4", "5", "6", "7"]
    assert sum("dropped 3 anomaly events" in r.getMessage() for r in caplog.records) == 1
    assert "remain stored" in caplog.records[0].getMessage()


def test_without_endpoint_events_are_stored_only():
    emitter = AnomalyEmitter(None, version=VERSION)
    emitter.start()
    emitter.emit(events([make_anomaly(), make_anomaly("b")]))
    assert emitter.flush(0.1)
    assert emitter.stats["stored_only"] == 2 and emitter.stats["sent"] == 0
    emitter.shutdown()
    emitter.shutdown()


def test_shutdown_is_safe_before_start_and_twice():
    emitter = AnomalyEmitter("localhost:1", version=VERSION)
    emitter.shutdown(0.1)
    emitter.shutdown(0.1)
    emitter.start()  # after shutdown: a no-op
    assert emitter._thread is None


def test_bad_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="batch_size"):
        AnomalyEmitter("localhost:1", version=VERSION, batch_size=100, max_buffer=10)
    with pytest.raises(ValueError, match="timeout_s"):
        AnomalyEmitter("localhost:1", version=VERSION, timeout_s=0)


# ---------------------------------------------------------------- findings at a real sink


def test_one_incident_reaches_the_sink_as_a_few_updates_of_one_finding(sink, emitters):
    """300 anomalies of one pattern in 5 minutes, and one of another: the sink gets one finding per pattern, a
    bounded number of events, the last with the full count, and no source record named twice."""
    from dataclasses import replace

    from receiver.aggregate import EventLimits, FindingAggregator

    aggregator = FindingAggregator(EventLimits(window_s=120, max_per_window=2, max_per_minute=60), VERSION)
    emitter = emitters(sink.endpoint)
    emitter.aggregator = aggregator
    emitter.start()
    base = make_anomaly()
    t0 = base.row.time_unix_nano
    burst = [
        replace(base, row=replace(base.row, uid=f"b{i}", time_unix_nano=t0 + i * 1_000_000_000))
        for i in range(300)
    ]
    other = make_anomaly("other", resource={"service.name": "cart"})
    other = replace(other, row=replace(other.row, service="cart", time_unix_nano=t0 + 10**9))
    for i in range(0, 300, 25):  # batches as the pipeline hands them over
        _, send = aggregator.add(burst[i : i + 25] + ([other] if i == 0 else []))
        emitter.emit(send)
        emitter.emit(aggregator.advance(burst[i + 24].row.time_ms))
    emitter.emit(aggregator.advance(burst[-1].row.time_ms + 600_000))  # quiet since: the findings close
    assert emitter.flush(5.0)
    bodies = [json.loads(rec.body.string_value) for _, _, rec in sink.log_records()]
    by_finding: dict[str, list[dict]] = {}
    for body in bodies:
        by_finding.setdefault(body["finding_info"]["uid"], []).append(body)
    assert len(by_finding) == 2
    (incident,) = [b for b in by_finding.values() if b[0]["resources"][0]["name"] == "payments"]
    assert 2 <= len(incident) <= 2 * 3 + 1  # 300 s of anomalies, 2 events per 120 s window, and the last word
    assert [b["activity_id"] for b in incident] == [1] + [2] * (len(incident) - 1)
    assert incident[-1]["count"] == 300
    assert incident[-1]["finding_info"]["last_seen_time"] == burst[-1].row.time_ms
    named = [r["uid"] for b in incident for r in b["finding_info"]["related_events"]]
    assert len(named) == len(set(named)) and set(named) <= {a.row.uid for a in burst}  # each at most once
    assert all(len(b["finding_info"]["related_events"]) <= 50 for b in incident)  # bounded; `count` has all
    for _, _, rec in sink.log_records():
        assert rec.event_name == EVENT_NAME and "event.name" not in attrs(rec.attributes)


def test_otel_resource_attributes_join_the_source_resource_without_overriding_it():
    request = build_request(
        events([make_anomaly()]), VERSION, {"deployment.environment.name": "prod", "host.name": "otad-0"}
    )
    resource = plain(request.resource_logs[0].resource.attributes)
    assert resource["deployment.environment.name"] == "prod"  # added: the source did not say
    assert resource["host.name"] == "pay-1" and resource["service.name"] == "payments"  # the source's own
