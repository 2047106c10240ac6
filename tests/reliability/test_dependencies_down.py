"""Fault tests: Milvus goes away for a while (otad keeps accepting into the spool, then catches up, nothing
lost), and the anomaly export endpoint is down (events retried, kept in the anomalies collection)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc

from receiver.service import Service
from receiver.settings import Settings
from storage import MilvusStore
from storage.lite_process import LiteServerProcess
from tests.otlp_sink import OtlpSink
from tests.reliability.harness import T0, free_port, request, stored_counts

pytestmark = pytest.mark.reliability


def _wait(pred, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_milvus_down_keeps_accepting_into_the_spool_then_catches_up(tmp_path):
    lite = LiteServerProcess(tmp_path / "milvus" / "milvus.db")
    uri = lite.start()
    port = urlsplit(uri).port
    svc = Service(
        Settings(
            data_dir=tmp_path / "data",
            grpc_endpoint="localhost:0",
            http_endpoint="localhost:0",
            metrics_endpoint="localhost:0",
            milvus_uri=uri,
            milvus_timeout_s=2,
            bootstrap_rows=10_000_000,
            batch_wait_ms=20,
        )
    )
    svc.start()
    try:
        stub = logs_grpc.LogsServiceStub(grpc.insecure_channel(f"localhost:{svc.grpc_port}"))
        stub.Export(request([f"b-{i}" for i in range(100)]), timeout=5)
        assert svc.pipeline.wait_idle(20)
        lite.stop()  # Milvus goes away
        acked = [f"b-{i}" for i in range(100)]
        t_down = time.monotonic()
        for part in range(1, 21):
            uids = [f"b-{part * 100 + i}" for i in range(100)]
            stub.Export(request(uids), timeout=5)  # still OK: the spool holds it
            acked.extend(uids)
        accept_s = time.monotonic() - t_down
        assert accept_s < 10, accept_s
        time.sleep(3)  # store attempts fail meanwhile
        assert svc.ingest.spool.uncommitted >= 10  # accepted, durable, not yet stored
        assert svc.metrics.registry.get_sample_value("otad_pipeline_errors_total", {"stage": "storage"}) >= 1
        lite.start(port=port)  # Milvus is back
        assert _wait(lambda: svc.ingest.spool.uncommitted == 0, 60), svc.ingest.spool.uncommitted
        store = MilvusStore(uri, timeout_s=10)
        try:
            counts = stored_counts(store, acked)
        finally:
            store.close()
        assert sum(1 for c in counts.values() if c == 1) == len(acked) == 2100
    finally:
        svc.stop(5)
        lite.stop()


def logs_request(records, service="checkout"):
    """records: list of (time_ns, body, attrs, severity_number)."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def kv(key, value):
        if isinstance(value, str):
            return KeyValue(key=key, value=AnyValue(string_value=value))
        if isinstance(value, float):
            return KeyValue(key=key, value=AnyValue(double_value=value))
        return KeyValue(key=key, value=AnyValue(int_value=value))

    req = logs_pb.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(kv("service.name", service))
    sl = rl.scope_logs.add()
    for t, body, attrs, sev in records:
        lr = sl.log_records.add(time_unix_nano=t, severity_number=sev)
        lr.body.string_value = body
        lr.attributes.extend(kv(k, v) for k, v in attrs.items())
    return req


def _normal(n, start, seed):
    import random

    rng = random.Random(seed)
    return [
        (
            start + i * 20_000_000,
            f"GET /cart/{rng.randint(1, 500)} served in {rng.lognormvariate(3, 0.3):.1f} ms",
            {
                "http.request.method": "GET",
                "url.path": f"/cart/{rng.randint(1, 500)}",
                "http.response.status_code": 200,
                "duration_ms": rng.lognormvariate(3.0, 0.3),
                "log.record.uid": f"n{seed}-{i}",
            },
            9,
        )
        for i in range(n)
    ]


def _slow(uid, t):
    return [
        (
            t,
            "GET /cart/77 served in 30123.0 ms",
            {
                "http.request.method": "GET",
                "url.path": "/cart/77",
                "http.response.status_code": 200,
                "duration_ms": 30123.0,
                "log.record.uid": uid,
            },
            9,
        )
    ]


def test_export_endpoint_down_events_are_retried_and_kept(tmp_path):
    port = free_port()  # nothing listens here yet: the export endpoint is down
    svc = Service(
        Settings(
            data_dir=tmp_path / "data",
            grpc_endpoint="localhost:0",
            http_endpoint="localhost:0",
            metrics_endpoint="localhost:0",
            export_endpoint=f"localhost:{port}",
            export_timeout_s=3,
            event_window_s=0,  # one event per anomaly: the second must be sent on its own (receiver/aggregate.py)
            bootstrap_rows=600,
            train_epochs=4,
            batch_wait_ms=20,
        )
    )
    svc.start()
    sink = OtlpSink()
    try:
        stub = logs_grpc.LogsServiceStub(grpc.insecure_channel(f"localhost:{svc.grpc_port}"))
        for part in range(4):
            stub.Export(logs_request(_normal(200, T0 + part * 200 * 20_000_000, part)), timeout=5)
        assert _wait(lambda: svc.pipeline.state == "scoring", 120), svc.pipeline.status()
        t = T0 + 900 * 20_000_000
        stub.Export(logs_request(_normal(50, t, 9) + _slow("slow-down", t + 1)), timeout=5)
        assert _wait(lambda: svc.emitter.stats["failed"] >= 1, 30), svc.emitter.stats
        assert svc.emitter.stats["retries"] >= 1  # retried with backoff before giving up
        stored = {a["source_uid"] for a in svc.store.latest_anomalies(50)}
        assert "slow-down" in stored  # kept in the anomalies collection, queryable
        # The endpoint comes back (a first call still fails with UNAVAILABLE): the next event is retried and sent.
        sink.start(port)
        sink.fail_next(1, grpc.StatusCode.UNAVAILABLE, retry_delay_s=0.2)
        stub.Export(logs_request(_slow("slow-up", t + 2 * 20_000_000)), timeout=5)
        assert sink.wait_for(
            lambda: any(
                kv.value.string_value == "slow-up"
                for _, _, rec in sink.log_records()
                for kv in rec.attributes
            ),
            timeout=30,
        ), (svc.emitter.stats, [a["source_uid"] for a in svc.store.latest_anomalies(50)])
        assert any(c.code == grpc.StatusCode.UNAVAILABLE for c in sink.calls)
        assert "slow-up" in {a["source_uid"] for a in svc.store.latest_anomalies(50)}
    finally:
        svc.stop(5)
        sink.stop()
