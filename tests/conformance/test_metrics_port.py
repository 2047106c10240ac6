"""The metrics port of a real otad: the Collector-style self-metrics, /healthz that notices a dead pipeline thread,
/readyz that reports Milvus unreachable while the spool keeps accepting, and TLS + bearer auth on /metrics."""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from prometheus_client import CollectorRegistry

from receiver.health import HealthServer
from receiver.service import Service
from receiver.settings import Settings
from tests.conformance.conftest import start_service
from tests.otlp_requests import log_request

pytestmark = pytest.mark.integration


def get(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def export_logs(service: Service, n: int = 3) -> None:
    channel = grpc.insecure_channel(f"localhost:{service.grpc_port}")
    try:
        records = [(1_762_041_600_000_000_000 + i, f"hello {i}", {}, 9) for i in range(n)]
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(log_request(records), timeout=10)
    finally:
        channel.close()


def grpc_health(service: Service, name: str) -> str:
    channel = grpc.insecure_channel(f"localhost:{service.grpc_port}")
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=5
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    finally:
        channel.close()


def test_self_metrics_use_the_collectors_vocabulary(plain):
    export_logs(plain)
    status, body = get(f"http://localhost:{plain.health.port}/metrics")
    text = body.decode()
    assert status == 200
    for name in (
        'otad_receiver_accepted_log_records_total{transport="grpc"}',
        "otad_receiver_accepted_spans_total",
        "otad_receiver_accepted_metric_points_total",
        "otad_receiver_refused_log_records_total",
        "otad_exporter_sent_log_records_total",
        "otad_exporter_send_failed_log_records_total",
        "otad_exporter_queue_size",
        "otad_exporter_queue_capacity 10000.0",
        "otad_pipeline_queue_size",
        "otad_pipeline_queue_capacity 1000.0",
        "otad_anomaly_events_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "python_info",
        'otad_detector_enabled{detector="knn"} 1.0',
    ):
        assert name in text, name
    for old in ("otad_accepted_items", "otad_export_events", "otad_export_requests", "otad_queue_rows"):
        assert old not in text


def test_healthz_reports_a_dead_pipeline_thread(plain, monkeypatch):
    url = f"http://localhost:{plain.health.port}/healthz"
    assert get(url)[0] == 200
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    monkeypatch.setattr(plain.pipeline, "_worker", dead)
    status, body = get(url)
    assert status == 503 and json.loads(body)["alive"] is False


def test_readyz_is_not_ready_while_milvus_is_unreachable_and_the_spool_still_accepts(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data",
        grpc_endpoint="localhost:0",
        http_endpoint="localhost:0",
        metrics_endpoint="localhost:0",
        bootstrap_rows=1_000_000,
        batch_wait_ms=20,
    )
    service = Service(settings)
    service.start()
    try:
        url = f"http://localhost:{service.health.port}/readyz"
        assert get(url)[0] == 200
        assert grpc_health(service, "otad.readiness") == "SERVING"
        assert service.lite is not None
        service.lite.stop()  # Milvus Lite gone
        assert service.milvus.check() is False
        status, body = get(url)
        assert status == 503 and json.loads(body)["milvus_reachable"] is False
        service._publish_health()  # what the watcher does after each ping
        assert grpc_health(service, "otad.readiness") == "NOT_SERVING"  # the chart's readiness probe
        assert grpc_health(service, "") == "SERVING"  # liveness: no restart for an outage elsewhere
        export_logs(service)  # acknowledged: the rows are in the spool, stored once Milvus is back
    finally:
        service.stop(2)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, pki, tokens):
    service = start_service(
        tmp_path_factory.mktemp("metrics-tls") / "data",
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        auth_tokens=tokens["env"],
        metrics_tls=True,
        metrics_auth=True,
    )
    yield service
    service.stop(5)


def test_metrics_port_over_tls_with_a_bearer_token(guarded, pki, tokens):
    context = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://localhost:{guarded.health.port}"
    assert get(base + "/metrics", context=context)[0] == 401
    assert get(base + "/metrics", token="wrong", context=context)[0] == 401
    status, body = get(base + "/metrics", token=tokens["env"], context=context)
    assert status == 200 and b"otad_receiver_accepted_log_records_total" in body
    assert get(base + "/healthz", context=context)[0] == 200  # probes carry no token
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):  # no plaintext
        urllib.request.urlopen(f"http://localhost:{guarded.health.port}/healthz", timeout=5).read()


def test_metrics_tls_without_a_certificate_names_the_variable():
    with pytest.raises(ValueError, match="OTAD_METRICS_TLS is true but OTAD_TLS_CERT_FILE is not set"):
        Settings(metrics_tls=True)
    with pytest.raises(ValueError, match="OTAD_METRICS_AUTH is true but no bearer token"):
        Settings(metrics_auth=True)


def test_a_taken_metrics_port_is_named_in_the_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=r"cannot listen on .* \(OTAD_METRICS_ENDPOINT\)") as caught:
            HealthServer(endpoint, CollectorRegistry(), dict)
    assert caught.value.errno == errno.EADDRINUSE
