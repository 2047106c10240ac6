"""Child processes end with `otad serve`, and a crashed otad's Milvus Lite server and endpoint file do not
outlive it: `otad serve` on its default embedded Milvus Lite (so it starts its own Lite server child),
killed with SIGKILL, restarted, and started twice on one data dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc

from storage.lite_process import ENDPOINT_FILE, lite_server_pids, reclaim, running_endpoint
from tests.reliability.harness import (
    Loader,
    OtadProcess,
    alive,
    child_pids,
    cmdline,
    free_port,
    readyz,
    request,
    wait_gone,
)

pytestmark = pytest.mark.reliability

GONE_WITHIN_S = 5.0  # the children poll their parent pid every 0.5 s


def _otad(data_dir, **env: str) -> OtadProcess:
    """`otad serve` on the default Milvus Lite of `data_dir` (it starts its own Lite server child)."""
    return OtadProcess(data_dir, OTAD_HTTP_ENDPOINT=f"localhost:{free_port()}", **env)


def _children(otad: OtadProcess) -> dict[int, str]:
    return {pid: cmdline(pid) for pid in child_pids(otad.pid)}


def test_kill9_of_otad_serve_ends_its_milvus_lite_server(tmp_path):
    otad = _otad(tmp_path / "data")
    otad.start()
    try:
        children = _children(otad)
        lite = [pid for pid, cmd in children.items() if "storage.lite_server" in cmd]
        assert len(lite) == 1, children
        otad.kill9()
        t0 = time.monotonic()
        assert wait_gone(list(children), GONE_WITHIN_S) == [], {p: cmdline(p) for p in children if alive(p)}
        print(f"\nLite server child gone {time.monotonic() - t0:.1f}s after kill -9 of otad serve")
    finally:
        otad.close()
        for pid in lite_server_pids(tmp_path / "data" / "milvus.db"):
            os.kill(pid, signal.SIGKILL)


def test_kill9_of_otad_serve_ends_its_scoring_child_under_load(tmp_path):
    otad = _otad(
        tmp_path / "data", OTAD_BOOTSTRAP_ROWS="300", OTAD_TRAIN_EPOCHS="2", OTAD_SCORE_PROCESS="true"
    )
    otad.start()
    loader = None
    try:
        stub = logs_grpc.LogsServiceStub(grpc.insecure_channel(f"localhost:{otad.grpc_port}"))
        for part in range(4):
            stub.Export(request([f"boot-{part * 100 + i}" for i in range(100)]), timeout=10)
        deadline = time.monotonic() + 45
        while readyz(otad.metrics_port).get("state") != "scoring":
            assert time.monotonic() < deadline, readyz(otad.metrics_port)
            time.sleep(0.2)
        children = _children(otad)
        scorer = [
            pid for pid, cmd in children.items() if "multiprocessing.spawn" in cmd and "spawn_main" in cmd
        ]
        assert scorer, children
        loader = Loader(otad.grpc_port, per_request=200, prefix="s").start()  # the child is busy, or waiting
        time.sleep(1.0)
        assert loader.acked
        otad.kill9()
        t0 = time.monotonic()
        assert wait_gone(list(children), GONE_WITHIN_S) == [], {p: cmdline(p) for p in children if alive(p)}
        print(f"\nscoring and Lite children gone {time.monotonic() - t0:.1f}s after kill -9 of otad serve")
    finally:
        if loader is not None:
            loader.stop()
        otad.close()


REPO = (
    Path(__file__).resolve().parents[2]
)  # the helper runs here, so `tests.helpers` imports (sys.path[0] is "")

SCORE_HELPER = """
import sys, time
from pathlib import Path
from model.version import ModelVersion
from model.worker import ScoringProcess
from tests.helpers import T0, make_rows
path = Path(sys.argv[1])
mv = ModelVersion.load(path, k=5)
child = ScoringProcess(mv, path, k=5, alert_pvalue=mv.detector.alert_pvalue, max_rows=100_000)
rows = make_rows(20_000, seed=3, start=T0 + 10**12) * 10  # 200k rows: several seconds of scoring
print(child.pid, flush=True)
child.score(rows)
print("scored", flush=True)
"""


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_scoring_child_busy_on_a_batch_exits_when_its_parent_is_killed(tmp_path):
    """The parent is killed while the child is in the middle of a long batch: the child does not read its
    pipe (and see EOF) until the batch is done, so it is the watchdog that ends it."""
    from model.train import TrainConfig
    from model.version import fit_version
    from tests.helpers import make_rows

    path = fit_version(
        make_rows(900), k=5, embed_dim=8, train_config=TrainConfig(epochs=1, batch_size=128)
    ).save(tmp_path / "models")
    err = tmp_path / "helper.err"
    with open(err, "wb") as stderr:
        helper = subprocess.Popen(
            [sys.executable, "-c", SCORE_HELPER, str(path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
        )
    try:
        child = int(helper.stdout.readline())
        time.sleep(1.0)  # unpickling the batch, then scoring it
        busy = _cpu_ticks(child)
        time.sleep(0.5)
        assert _cpu_ticks(child) > busy and helper.poll() is None, err.read_text()
        helper.kill()
        helper.wait(10)
        t0 = time.monotonic()
        assert wait_gone([child], 2.0) == [], cmdline(child)
        print(f"\nbusy scoring child gone {time.monotonic() - t0:.1f}s after kill -9 of its parent")
    finally:
        helper.kill()
        if alive(child):
            os.kill(child, signal.SIGKILL)
    assert f"otad: parent process {helper.pid} is gone; scoring process {child} exits" in err.read_text()


def test_orphaned_lite_server_is_stopped_at_the_next_start(tmp_path):
    """The orphan is a Lite server that hung (SIGSTOP: its watchdog cannot run) when the `otad serve` that
    owned it died; that owner is a helper process with the same ownership record, killed with SIGKILL."""
    db = tmp_path / "data" / "milvus.db"
    helper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom storage.lite_process import LiteServerProcess\n"
            "lite = LiteServerProcess(sys.argv[1], role='otad serve')\nlite.start()\n"
            "print(lite.proc.pid, flush=True)\ntime.sleep(600)",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        orphan = int(helper.stdout.readline())
        os.kill(orphan, signal.SIGSTOP)
        helper.kill()
        helper.wait(10)
    finally:
        helper.kill()
    time.sleep(1.0)
    assert alive(orphan) and lite_server_pids(db) == [orphan]
    endpoint = tmp_path / "data" / ENDPOINT_FILE
    assert json.loads(endpoint.read_text())["owner"]["pid"] == helper.pid
    assert running_endpoint(db) is None  # CLI commands do not use a server whose owner is gone
    otad = _otad(tmp_path / "data")
    try:
        otad.start()
        assert not alive(orphan)
        own = lite_server_pids(db)
        assert own and orphan not in own and set(own) <= set(child_pids(otad.pid))
        assert json.loads(endpoint.read_text())["owner"]["pid"] == otad.pid
        stub = logs_grpc.LogsServiceStub(grpc.insecure_channel(f"localhost:{otad.grpc_port}"))
        stub.Export(request([f"x-{i}" for i in range(50)]), timeout=10)
        assert otad.sigterm(60) == 0
    finally:
        otad.close()
        if alive(orphan):
            os.kill(orphan, signal.SIGKILL)
    assert wait_gone(own, 5) == [] and lite_server_pids(db) == []
    assert not endpoint.exists()
    lines = [line for line in otad.log.read_text().splitlines() if "its owner" in line]
    assert len(lines) == 1 and f"stopped Milvus Lite server {orphan} " in lines[0], lines


def test_second_otad_serve_on_the_same_data_dir_exits_with_a_clear_message(tmp_path):
    first = _otad(tmp_path / "data")
    first.start()
    try:
        lite = lite_server_pids(tmp_path / "data" / "milvus.db")
        second = _otad(tmp_path / "data")
        out = subprocess.run(
            [sys.executable, "-m", "receiver.cli", "serve"],
            env=second.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0
        assert (
            out.stderr.strip().splitlines()[-1]
            == f"otad: another otad serve (pid {first.pid}) is using {(tmp_path / 'data').resolve()}"
        ), out.stderr
        assert first.proc.poll() is None and lite_server_pids(tmp_path / "data" / "milvus.db") == lite
        assert running_endpoint(
            tmp_path / "data" / "milvus.db"
        )  # CLI commands still share the running server
    finally:
        assert first.sigterm(60) == 0
        first.close()


def test_an_owner_pid_reused_by_another_process_is_not_the_owner(tmp_path):
    """The record names the owner by pid, start time and boot id: this process's pid with another start time
    is a different process, so the record is stale."""
    db = tmp_path / "data" / "milvus.db"
    db.parent.mkdir()
    endpoint = db.parent / ENDPOINT_FILE
    me = {"pid": os.getpid(), "start": 1, "boot_id": open("/proc/sys/kernel/random/boot_id").read().strip()}
    endpoint.write_text(
        json.dumps({"uri": "http://127.0.0.1:1", "pid": None, "role": "otad serve", "owner": me})
    )
    assert running_endpoint(db) is None
    reclaim(db)
    assert not endpoint.exists()
