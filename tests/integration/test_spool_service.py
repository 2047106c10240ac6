"""The spool inside the real service (gRPC on port 0, Milvus Lite in a temp dir, a real OTLP sink):
committed once stored, replayed at start, replays and retries add no rows and no second anomaly event."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from receiver.rows.mapper import RowMapper
from storage.spool import Spool
from tests.integration.test_service import T0, logs_request, make_service, normal_records, stubs

pytestmark = pytest.mark.integration


@pytest.fixture
def sink():
    from otlp_sink import OtlpSink

    with OtlpSink() as s:
        yield s


def _wait(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_spool_is_committed_and_emptied_once_rows_are_stored(tmp_path, sink):
    svc = make_service(tmp_path, sink, spool_segment_bytes=1 << 16)
    try:
        _, logs, _ = stubs(svc)
        for part in range(20):
            logs.Export(logs_request(normal_records(50, T0 + part * 10**12, seed=part)), timeout=5)
        spool = svc.ingest.spool
        assert spool.next_seq == 20 and spool.segments >= 2  # 20 requests of ~12 KiB roll 64 KiB segments
        assert svc.pipeline.wait_idle(20)
        assert _wait(lambda: spool.uncommitted == 0)
        spool.checkpoint()
        assert spool.segments == 1 and svc.store.count_backlog() == 1000
        text = (
            urllib.request.urlopen(f"http://localhost:{svc.health.port}/metrics", timeout=5).read().decode()
        )
        assert "otad_spool_bytes" in text and "otad_spool_segments 1.0" in text
        assert "otad_spool_fsync_seconds_count" in text
    finally:
        svc.stop(5)
    assert (tmp_path / "data" / "spool" / "checkpoint").read_text().strip() == "20"


def test_uncommitted_records_are_replayed_at_start_without_duplicates(tmp_path, sink):
    # What a crash after OK leaves behind: requests in the spool, nothing in Milvus. The same request twice
    # (a client retry after a timeout) must still give each row once.
    spool = Spool(tmp_path / "data" / "spool")
    first = logs_request(normal_records(120, T0, seed=1))
    spool.append("logs", T0, first.SerializeToString())
    spool.append("logs", T0, first.SerializeToString())
    spool.append("logs", T0, logs_request(normal_records(80, T0 + 10**12, seed=2)).SerializeToString())
    spool.close()
    svc = make_service(tmp_path, sink)
    try:
        assert svc.ingest.replay_done.wait(20)
        assert svc.ingest.replayed == 3
        assert svc.pipeline.wait_idle(20)
        assert svc.store.count_backlog() == 200
        assert _wait(lambda: svc.ingest.spool.uncommitted == 0)
        text = (
            urllib.request.urlopen(f"http://localhost:{svc.health.port}/metrics", timeout=5).read().decode()
        )
        assert "otad_spool_replayed_records_total 3.0" in text
    finally:
        svc.stop(5)
    svc = make_service(tmp_path, sink)  # committed: nothing is replayed a second time
    try:
        assert svc.ingest.replay_done.wait(20) and svc.ingest.replayed == 0
    finally:
        svc.stop(5)


def test_full_spool_answers_unavailable_with_retry_info(tmp_path, sink):
    svc = make_service(tmp_path, sink, spool_max_bytes=1 << 20, spool_segment_bytes=1 << 16)
    try:
        _, logs, _ = stubs(svc)
        svc.pipeline.stop(0)  # nothing gets stored, so nothing is committed
        codes = []
        for part in range(200):
            try:
                logs.Export(logs_request(normal_records(40, T0 + part * 10**12, seed=part)), timeout=5)
                codes.append("ok")
            except grpc.RpcError as err:
                codes.append(err.code())
                status = rpc_status.from_call(err)
                info = error_details_pb2.RetryInfo()
                assert status.details[0].Unpack(info) and info.retry_delay.seconds == 5
                assert "spool is full" in err.details()
                break
        assert codes[-1] == grpc.StatusCode.UNAVAILABLE and codes.count("ok") >= 50
        assert svc.ingest.spool.bytes <= 1 << 20
    finally:
        svc.stop(1)


def _slow(start):
    return [
        (
            start + 1,
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


def _events_for(sink, uid):
    return [
        rec
        for _, _, rec in sink.log_records()
        if any(kv.key == "anomaly.source.uid" and kv.value.string_value == uid for kv in rec.attributes)
    ]


def test_a_replayed_anomaly_is_neither_stored_nor_emitted_twice(tmp_path, sink):
    svc = make_service(
        tmp_path, sink, event_window_s=0
    )  # one event per anomaly: the dedupe is what is tested
    try:
        _, logs, _ = stubs(svc)
        for part in range(4):
            logs.Export(logs_request(normal_records(200, T0 + part * 200 * 20_000_000, seed=part)), timeout=5)
        assert _wait(lambda: svc.pipeline.state == "scoring", 120), svc.pipeline.status()
        slow = logs_request(_slow(T0 + 900 * 20_000_000))
        logs.Export(slow, timeout=5)
        assert sink.wait_for(lambda: len(_events_for(sink, "slow-1")) == 1, timeout=30)
        logs.Export(slow, timeout=5)  # a client retry of the same request
        assert svc.pipeline.wait_idle(20)
        stored = svc.store.count_anomalies()
    finally:
        svc.stop(5)
    # A crash between storing and the checkpoint: the slow request is still in the spool.
    spool = Spool(tmp_path / "data" / "spool")
    spool.append("logs", T0, slow.SerializeToString())
    spool.close()
    svc = make_service(tmp_path, sink, event_window_s=0)
    try:
        assert svc.pipeline.state == "scoring"
        assert svc.ingest.replay_done.wait(20) and svc.ingest.replayed == 1
        assert svc.pipeline.wait_idle(20)
        assert _wait(lambda: svc.ingest.spool.uncommitted == 0)
        svc.emitter.flush(5)
        # the replayed row is still an anomaly to the model, so only the dedupe keeps it from a second event
        row = RowMapper().map_logs(slow, T0).rows[0]
        again = svc.pipeline._scorer.score([row])
        assert bool(again.is_anomaly[0]), (again.members, svc.pipeline._scorer.mv.meta["rows"])
        assert svc.store.count_anomalies() == stored
        assert len(_events_for(sink, "slow-1")) == 1
    finally:
        svc.stop(5)


def test_stop_goes_not_ready_finishes_in_flight_batches_and_checkpoints(tmp_path, sink):
    import threading
    import urllib.error

    # A batch that takes 3 s to fill: stop() has an in-flight batch to finish.
    from receiver.service import Service
    from receiver.settings import Settings

    svc = Service(
        Settings(
            data_dir=tmp_path / "data",
            grpc_endpoint="localhost:0",
            http_endpoint="localhost:0",
            metrics_endpoint="localhost:0",
            bootstrap_rows=100_000,
            batch_wait_ms=3000,
            batch_rows=100_000,
        )
    )
    svc.start()
    url = f"http://localhost:{svc.health.port}/readyz"
    assert urllib.request.urlopen(url, timeout=5).status == 200
    _, logs, _ = stubs(svc)
    for part in range(5):
        logs.Export(logs_request(normal_records(40, T0 + part * 10**12, seed=part)), timeout=5)
    stopper = threading.Thread(target=svc.stop, args=(20,))
    t0 = time.monotonic()
    stopper.start()
    codes = []
    while stopper.is_alive() and len(codes) < 200:
        try:
            codes.append(urllib.request.urlopen(url, timeout=1).status)
        except urllib.error.HTTPError as err:
            codes.append(err.code)
        except OSError:
            break  # the health server itself stopped last
        time.sleep(0.02)
    stopper.join(30)
    assert 503 in codes and 200 not in codes  # not ready from the first moment of the drain
    assert time.monotonic() - t0 < 20
    assert (tmp_path / "data" / "spool" / "checkpoint").read_text().strip() == "5"  # all 5 requests stored
    from storage import MilvusStore

    store = MilvusStore(str(tmp_path / "data" / "milvus.db"))
    try:
        assert store.count_backlog() == 200
    finally:
        store.close()
