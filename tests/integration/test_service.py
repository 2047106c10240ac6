"""The service in-process: real gRPC server on port 0, real Milvus Lite in a temp dir, real training,
and a real OTLP sink receiving the anomaly events. Covers the OTLP outcomes and the cold start."""

from __future__ import annotations

import gc
import gzip  # noqa: F401  (gzip is exercised through grpc.Compression.Gzip)
import json
import os
import time
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from receiver.service import Service
from receiver.settings import Settings
from tests.otlp_sink import OtlpSink

pytestmark = pytest.mark.integration
T0 = 1_762_041_600_000_000_000


def _kv(key, value):
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def logs_request(records, service="checkout"):
    """records: list of (time_ns, body, attrs, severity_number)."""
    req = logs_pb.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(_kv("service.name", service))
    sl = rl.scope_logs.add()
    for t, body, attrs, sev in records:
        lr = sl.log_records.add(time_unix_nano=t, severity_number=sev)
        lr.body.string_value = body
        lr.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return req


def normal_records(n, start, step_ns=20_000_000, seed=0):
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        ms = rng.lognormvariate(3.0, 0.3)
        out.append(
            (
                start + i * step_ns,
                f"GET /cart/{rng.randint(1, 500)} served in {ms:.1f} ms",
                {
                    "http.request.method": "GET",
                    "url.path": f"/cart/{rng.randint(1, 500)}",
                    "http.response.status_code": 200,
                    "duration_ms": ms,
                    "log.record.uid": f"n{seed}-{i}",
                },
                9,
            )
        )
    return out


@pytest.fixture
def sink():
    with OtlpSink() as s:
        yield s


def make_service(tmp_path, sink, **overrides):
    settings = Settings(
        data_dir=tmp_path / "data",
        grpc_endpoint="localhost:0",
        http_endpoint="localhost:0",
        metrics_endpoint="localhost:0",
        export_endpoint=sink.endpoint,
        bootstrap_rows=600,
        train_epochs=4,
        batch_wait_ms=20,
        **overrides,
    )
    service = Service(settings)
    service.start()
    return service


@pytest.fixture
def service(tmp_path, sink):
    svc = make_service(tmp_path, sink)
    yield svc
    svc.stop(5)


def stubs(service):
    channel = grpc.insecure_channel(f"localhost:{service.grpc_port}")
    return channel, logs_grpc.LogsServiceStub(channel), trace_grpc.TraceServiceStub(channel)


def test_health_and_empty_request(service):
    channel, logs, _ = stubs(service)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    response = logs.Export(logs_pb.ExportLogsServiceRequest(), timeout=5)
    assert not response.HasField("partial_success")
    url = f"http://localhost:{service.health.port}"
    # The heap alive at start is out of the cyclic collector's view: full collections walked ~600k objects and
    # stalled every Export call for 250 ms (model/heap.py).
    assert gc.get_freeze_count() > 10_000 and gc.get_threshold()[0] == 20_000
    own = os.getpriority(os.PRIO_PROCESS, 0)  # the Milvus Lite child yields the CPU to the receiver
    assert os.getpriority(os.PRIO_PROCESS, service.lite.proc.pid) == min(
        own + service.settings.background_nice, 19
    )
    status = json.loads(urllib.request.urlopen(url + "/healthz", timeout=5).read())
    assert status["state"] == "collecting" and status["bootstrap_rows"] == 600
    assert b"otad_receiver_accepted_log_records" in urllib.request.urlopen(url + "/metrics", timeout=5).read()


def test_gzip_logs_are_accepted_and_counted(service):
    _, logs, _ = stubs(service)
    response = logs.Export(logs_request(normal_records(50, T0)), timeout=5, compression=grpc.Compression.Gzip)
    assert not response.HasField("partial_success")
    assert service.pipeline.wait_idle(10)
    assert service.store.count_backlog() == 50
    # A retry of the same request does not duplicate rows (ids derive from content / log.record.uid).
    logs.Export(logs_request(normal_records(50, T0)), timeout=5)
    assert service.pipeline.wait_idle(10)
    assert service.store.count_backlog() == 50


def test_partial_success_names_the_first_bad_span(service):
    _, _, traces = stubs(service)
    req = trace_pb.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    ss.spans.add(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        name="ok",
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 1000,
    )
    ss.spans.add(trace_id=b"\x01\x02", span_id=bytes(range(1, 9)), name="bad", start_time_unix_nano=T0)
    response = traces.Export(req, timeout=5)
    assert response.partial_success.rejected_spans == 1
    assert "1/2 spans rejected" in response.partial_success.error_message
    assert (
        "record 1" in response.partial_success.error_message
        or "span 1" in response.partial_success.error_message
    )


def test_wholly_invalid_request_is_invalid_argument(service):
    _, _, traces = stubs(service)
    req = trace_pb.ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01", span_id=b"\x02", name="bad")
    with pytest.raises(grpc.RpcError) as err:
        traces.Export(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_full_queue_answers_unavailable_with_retry_info(tmp_path, sink):
    svc = make_service(tmp_path, sink, queue_rows=1000, batch_rows=1000)
    try:
        _, logs, _ = stubs(svc)
        with pytest.raises(grpc.RpcError) as err:
            logs.Export(logs_request(normal_records(1200, T0)), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(err.value)
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info) and info.retry_delay.seconds == 5
    finally:
        svc.stop(5)


def test_cold_start_trains_then_emits_anomaly_events(service, sink):
    _, logs, _ = stubs(service)
    for part in range(3):  # 600 rows = bootstrap 600: training starts in the background
        logs.Export(logs_request(normal_records(200, T0 + part * 200 * 20_000_000, seed=part)), timeout=5)
    assert service.pipeline.wait_idle(10)
    assert service.pipeline.state == "training", service.pipeline.status()
    # Staged while the model trains: drained into it afterwards.
    logs.Export(logs_request(normal_records(200, T0 + 3 * 200 * 20_000_000, seed=3)), timeout=5)
    deadline = time.monotonic() + 120
    while service.pipeline.state != "scoring" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert service.pipeline.state == "scoring", service.pipeline.status()
    start = T0 + 900 * 20_000_000
    normal = normal_records(100, start, seed=9)
    slow = [
        (
            start + 50 * 20_000_000 + 1,
            "GET /cart/77 served in 30123.0 ms",
            {
                "http.request.method": "GET",
                "url.path": "/cart/77",
                "http.response.status_code": 200,
                "duration_ms": 30123.0,
                "log.record.uid": "slow-1",
            },
            9,
        )
    ]
    logs.Export(logs_request(normal + slow), timeout=5)
    assert service.pipeline.wait_idle(30)  # scored and stored: its finding is open
    # Repeats of one pattern are one finding: a record is named by the finding's related_events (receiver/aggregate.py).
    service.emitter.close_findings()
    assert sink.wait_for(lambda: "slow-1" in {u for _, u in sources(sink)}, timeout=30)
    flagged = {u for _, u in sources(sink)}
    assert len(flagged - {"slow-1"}) <= 3, flagged  # normal rows are not flooding the sink
    resource, scope, record = next(x for x, u in sources(sink) if u == "slow-1")
    assert record.event_name == "otad.anomaly" and scope.name == "otad"
    assert {kv.key: kv.value.string_value for kv in resource.attributes}["service.name"] == "checkout"
    assert service.pipeline.wait_idle(10)
    stored = service.store.latest_anomalies(10)
    assert any(a["source_uid"] == "slow-1" for a in stored)
    status = service.pipeline.status()
    # Each record counts once: the 800 staged before the model (the 200 it did not train on were scored since)
    # and the 101 scored after.
    assert status["backlog_rows"] == 0 and status["processed_rows"] == 800 + 101, status


def sources(sink) -> list[tuple[tuple, str]]:
    """(event, source uid) for every source record an anomaly event names (its finding's related_events)."""
    out = []
    for event in sink.log_records():
        for related in json.loads(event[2].body.string_value)["finding_info"]["related_events"]:
            out.append((event, related["uid"]))
    return out


def test_model_of_another_contract_version_means_a_cold_start_not_a_crash(tmp_path, sink):
    """An upgrade that changes the feature contract: the old model cannot be scored with, so the service says so
    and collects rows for a new one instead of failing to start (and `otad score` still refuses it clearly)."""
    from unit.model.test_features import make_rows

    from model.features import ContractVersionError
    from model.train import TrainConfig
    from model.version import ModelVersion, fit_version

    models = tmp_path / "data" / "models"
    path = fit_version(
        make_rows(300), k=5, embed_dim=8, train_config=TrainConfig(epochs=1, batch_size=128)
    ).save(models)
    doc = json.loads((path / "model.json").read_text())
    doc["contract"]["version"] -= 1
    (path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ContractVersionError, match="retrain"):
        ModelVersion.load_current(models)
    svc = make_service(tmp_path, sink)
    try:
        assert svc.pipeline.state == "collecting"
        _, logs, _ = stubs(svc)
        logs.Export(logs_request(normal_records(50, T0)), timeout=5)
        assert svc.pipeline.wait_idle(10)
        assert svc.pipeline.status()["backlog_rows"] >= 50
    finally:
        svc.stop(5)
