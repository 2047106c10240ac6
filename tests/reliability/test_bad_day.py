"""An operator's bad day, with real processes: poison records followed by normal traffic, kill -9 under load
while the first model trains (children left as the crash leaves them), a crash in the middle of training.
Proof by querying Milvus by uid across the backlog and every rows collection: nothing lost, nothing twice."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from storage import MilvusStore
from storage.lite_process import LiteServerProcess
from tests.helpers import uid_counts
from tests.reliability.harness import Loader, OtadProcess, alive, cmdline, readyz, request

pytestmark = pytest.mark.reliability


def _status(otad: OtadProcess) -> dict:
    return readyz(otad.metrics_port)


def _wait(cond, timeout_s: float, step_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return cond()


def _lite_servers(data_dir: Path) -> list[int]:
    """Pids of live Milvus Lite servers of this data dir (found by their command line)."""
    needle = str((data_dir / "milvus.db").resolve())
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [
        pid for pid in pids if alive(pid) and "storage.lite_server" in (cmd := cmdline(pid)) and needle in cmd
    ]


@pytest.fixture
def milvus(tmp_path):
    lite = LiteServerProcess(tmp_path / "milvus" / "milvus.db")
    uri = lite.start()
    yield uri
    # The server must outlive the test: once (CI, 2026-12-07) the test's own connection after otad's restart
    # was refused. Its exit code tells a crash (negative: the signal) from the watchdog (1) next time.
    code = lite.proc.poll() if lite.proc is not None else None
    lite.stop()
    log = tmp_path / "milvus" / "milvus-lite.log"
    assert code is None, f"the test's Milvus Lite server exited (code {code}): {log.read_text()[-800:]}"


def _poison_request(uids: list[str]):
    """Three records any application can send: an over-long uid, a 10 MiB body, 10,000 attributes."""
    req = request(uids)
    records = req.resource_logs[0].scope_logs[0].log_records
    records[0].attributes[-1].value.string_value = "x" * 100 + uids[0]  # log.record.uid, over VARCHAR(64)
    records[1].body.string_value = "10 MiB body " + "y" * (10 << 20)
    records[2].attributes.extend(
        KeyValue(key=f"attr.{i}", value=AnyValue(string_value=f"value {i}")) for i in range(10_000)
    )
    return req


def test_poison_records_do_not_stop_storage_and_nothing_is_silently_cut(tmp_path, milvus):
    otad = OtadProcess(tmp_path / "data", milvus)
    otad.start()
    store = MilvusStore(milvus, timeout_s=30)
    channel = grpc.insecure_channel(
        f"localhost:{otad.grpc_port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    try:
        stub = logs_grpc.LogsServiceStub(channel)
        poison = [f"p-{i}" for i in range(3)]
        response = stub.Export(_poison_request(poison), timeout=30)
        normal = [f"n-{i}" for i in range(2000)]
        for start in range(0, len(normal), 200):
            stub.Export(request(normal[start : start + 200]), timeout=10)
        t0 = time.monotonic()
        assert _wait(lambda: all(uid_counts(store, normal).values()), 30), "normal rows stuck behind poison"
        stored_after_s = time.monotonic() - t0
        counts = uid_counts(store, normal)
        assert set(counts.values()) == {1}
        assert _status(otad)["ready"]
        # Each poison record is stored bounded and marked, or dead-lettered, or rejected: never cut silently.
        rejected = response.partial_success.rejected_log_records
        rows = {}
        for page in store.iter_backlog():
            for item in page:
                if item["uid"] not in counts:
                    rows[item["uid"]] = item["row"]
        letters = (
            [
                json.loads(line)
                for line in (tmp_path / "data" / "dead-letter" / "rows.jsonl").read_text().splitlines()
            ]
            if (tmp_path / "data" / "dead-letter" / "rows.jsonl").exists()
            else []
        )
        assert len(rows) + len(letters) + rejected == 3, (list(rows), letters, response)
        for row in rows.values():
            assert row["time_unix_nano"] > 0 and row["fields"].get("otad.truncated"), row
            assert len(json.dumps(row)) <= 16_384
        big = [r for r in rows.values() if "10 MiB body" in str(r["fields"].get("message", ""))]
        assert big, "the 10 MiB record lost its message prefix"
        metrics = (
            urllib.request.urlopen(f"http://localhost:{otad.metrics_port}/metrics", timeout=5).read().decode()
        )
        assert "otad_bounded_items_total{" in metrics
    finally:
        channel.close()
        store.close()
        assert otad.sigterm(60) == 0
        otad.close()
    print(
        f"\npoison: 3 records bounded/dead-lettered/rejected; 2,000 normal rows stored {stored_after_s:.1f} s "
        f"after the last Export"
    )


def test_kill9_three_times_while_the_first_model_trains_loses_and_doubles_nothing(tmp_path):
    # Embedded Milvus Lite (otad's own child), so each kill leaves an orphaned Lite server behind.
    data = tmp_path / "data"
    otad = OtadProcess(
        data, None, OTAD_BOOTSTRAP_ROWS="3000", OTAD_TRAIN_EPOCHS="3", OTAD_SHUTDOWN_GRACE_S="20"
    )
    otad.start()
    loader = Loader(otad.grpc_port, per_request=50, pause_s=0.05).start()
    states = []
    try:
        for _ in range(3):
            time.sleep(4.0)
            states.append(_status(otad)["state"])
            otad.kill9()
            time.sleep(0.3)
            otad.start(timeout_s=120)
        assert _wait(lambda: _status(otad)["state"] == "scoring", 240), _status(otad)
        time.sleep(2.0)
    finally:
        loader.stop()
    acked = list(loader.acked)
    assert len(acked) >= 3000, (len(acked), loader.errors)
    assert _wait(lambda: _status(otad)["backlog_rows"] == 0 and _status(otad)["queued_rows"] == 0, 120), (
        _status(otad)
    )
    assert otad.sigterm(60) == 0
    otad.close()
    assert _wait(lambda: not _lite_servers(data), 10), f"orphaned Milvus Lite servers: {_lite_servers(data)}"
    store = MilvusStore(str(data / "milvus.db"), timeout_s=30)  # embedded: nobody else holds the data now
    try:
        counts = uid_counts(store, acked)
    finally:
        store.close()
    lost = [u for u, c in counts.items() if c == 0]
    doubled = [u for u, c in counts.items() if c > 1]
    assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}"
    assert not doubled, f"{len(doubled)} records stored more than once, e.g. {doubled[:5]}"
    print(
        f"\nkill -9 x3 (states at the kills: {states}): {len(acked)} acknowledged, 0 lost, 0 stored twice; "
        f"client retries: {loader.errors}"
    )


def test_a_crash_during_the_first_training_still_ends_in_scoring(tmp_path, milvus):
    otad = OtadProcess(tmp_path / "data", milvus, OTAD_BOOTSTRAP_ROWS="2000", OTAD_TRAIN_EPOCHS="30")
    otad.start()
    channel = grpc.insecure_channel(f"localhost:{otad.grpc_port}")
    uids = [f"c-{i}" for i in range(2500)]
    try:
        stub = logs_grpc.LogsServiceStub(channel)
        for start in range(0, len(uids), 250):
            stub.Export(request(uids[start : start + 250]), timeout=10)
        assert _wait(lambda: _status(otad)["state"] == "training", 60), _status(otad)
        otad.kill9()  # mid-training: no model was saved
    finally:
        channel.close()
    assert not (tmp_path / "data" / "models" / "CURRENT").exists()
    otad.start()  # no new traffic: it must train from the rows it already stored
    try:
        assert _wait(lambda: _status(otad)["state"] == "scoring", 300, 1.0), _status(otad)
        assert _wait(lambda: _status(otad)["backlog_rows"] == 0, 120), _status(otad)
        store = MilvusStore(milvus, timeout_s=30)
        try:
            counts = uid_counts(store, uids)
        finally:
            store.close()
        assert set(counts.values()) == {1}, {
            c: sum(1 for v in counts.values() if v == c) for c in set(counts.values())
        }
    finally:
        assert otad.sigterm(60) == 0
        otad.close()


def test_sigterm_during_the_first_training_exits_0_and_training_resumes(tmp_path, milvus):
    otad = OtadProcess(tmp_path / "data", milvus, OTAD_BOOTSTRAP_ROWS="2000", OTAD_TRAIN_EPOCHS="30")
    otad.start()
    channel = grpc.insecure_channel(f"localhost:{otad.grpc_port}")
    try:
        stub = logs_grpc.LogsServiceStub(channel)
        for start in range(0, 2500, 250):
            stub.Export(request([f"s-{i}" for i in range(start, start + 250)]), timeout=10)
        assert _wait(lambda: _status(otad)["state"] == "training", 60), _status(otad)
    finally:
        channel.close()
    # Torch's native threads were still training: the exit used to abort ("terminate called …", SIGABRT).
    assert otad.sigterm(60) == 0, otad.log.read_text()[-1500:]
    assert "training stopped with the service" in otad.log.read_text()
    otad.start()
    try:
        assert _wait(lambda: _status(otad)["state"] == "scoring", 300, 1.0), _status(otad)
    finally:
        assert otad.sigterm(60) == 0
        otad.close()
