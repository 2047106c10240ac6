"""Real processes for the fault tests: `otad serve` as a subprocess on loopback, a Milvus Lite server the test
owns (so killing otad never orphans it), and an OTLP client that records what was acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from storage import MilvusStore
from tests.helpers import free_port

T0 = 1_762_041_600_000_000_000


def request(uids: list[str], service: str = "checkout") -> logs_pb.ExportLogsServiceRequest:
    """One logs request; each record carries `log.record.uid`, which becomes the row uid."""
    req = logs_pb.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    sl = rl.scope_logs.add()
    for uid in uids:
        n = int(uid.rsplit("-", 1)[1])
        lr = sl.log_records.add(time_unix_nano=T0 + n * 1_000_000, severity_number=9)
        lr.body.string_value = f"GET /cart/{n % 500} served in {10 + n % 40} ms"
        lr.attributes.extend(
            [
                KeyValue(key="http.request.method", value=AnyValue(string_value="GET")),
                KeyValue(key="url.path", value=AnyValue(string_value=f"/cart/{n % 500}")),
                KeyValue(key="duration_ms", value=AnyValue(double_value=10.0 + n % 40)),
                KeyValue(key="log.record.uid", value=AnyValue(string_value=uid)),
            ]
        )
    return req


class OtadProcess:
    """`otad serve` in a subprocess with a fixed data dir, ports and environment across restarts."""

    def __init__(self, data_dir: Path, milvus_uri: str | None = None, **env: str) -> None:
        self.grpc_port, self.metrics_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "OTAD_DATA_DIR": str(data_dir),
            "OTAD_GRPC_ENDPOINT": f"localhost:{self.grpc_port}",
            "OTAD_METRICS_ENDPOINT": f"localhost:{self.metrics_port}",
            "OTAD_HTTP_ENDPOINT": f"localhost:{free_port()}",
            "OTAD_BOOTSTRAP_ROWS": "10000000",
            "OTAD_BATCH_WAIT_MS": "20",
            "OTAD_LOG_LEVEL": "INFO",
            **env,
        }
        if milvus_uri:
            self.env["OTAD_MILVUS_URI"] = milvus_uri
        self.log = data_dir.parent / "otad.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "receiver.cli", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        channel = grpc.insecure_channel(f"localhost:{self.grpc_port}")
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"otad exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                    )
                try:
                    if (
                        health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                        == health_pb2.HealthCheckResponse.SERVING
                    ):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        finally:
            channel.close()
        raise RuntimeError(f"otad did not become SERVING within {timeout_s}s: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def sigterm(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its new parent to reap it does not)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """The live children of `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Wait until none of `pids` is alive; returns those still alive at the timeout."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def readyz(metrics_port: int) -> dict:
    """`/readyz` of otad's metrics endpoint (its JSON body, whatever the status code)."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://localhost:{metrics_port}/readyz", timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


class Loader:
    """Sends requests of `per_request` fresh uids from a thread; a request is re-sent (as an OTLP client
    would) until it is acknowledged. `acked` holds every uid the server said OK to."""

    def __init__(self, port: int, per_request: int = 50, prefix: str = "u", pause_s: float = 0.0) -> None:
        self.port, self.per_request, self.prefix, self.pause_s = port, per_request, prefix, pause_s
        self.acked: list[str] = []
        self.sent: set[str] = set()
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Loader:
        self._thread.start()
        return self

    def _run(self) -> None:
        channel = grpc.insecure_channel(f"localhost:{self.port}")
        stub = logs_grpc.LogsServiceStub(channel)
        n = 0
        while not self._stop.is_set():
            uids = [f"{self.prefix}-{n + i}" for i in range(self.per_request)]
            n += self.per_request
            req = request(uids)
            self.sent.update(uids)
            while not self._stop.is_set():
                try:
                    stub.Export(req, timeout=5)
                    self.acked.extend(uids)
                    break
                except grpc.RpcError as err:
                    self.errors[err.code().name] = self.errors.get(err.code().name, 0) + 1
                    time.sleep(0.05)
            if self.pause_s:
                time.sleep(self.pause_s)
        channel.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def stored_counts(store: MilvusStore, uids: list[str], collection: str = "backlog") -> dict[str, int]:
    """How many stored entities each uid has (0 = lost, >1 = duplicated), by querying Milvus by uid."""
    from storage import collection as col

    name = col.BACKLOG_COLLECTION if collection == "backlog" else collection
    counts = dict.fromkeys(uids, 0)
    for start in range(0, len(uids), 1000):
        part = uids[start : start + 1000]
        rows = store._call(
            "query",
            lambda c, p=part: c.query(
                name,
                output_fields=["uid"],
                limit=len(p) * 2,
                consistency_level=col.STRONG,
                **store._filter("uid in {uids}", {"uids": p}),
            ),
        )
        for row in rows:
            counts[str(row["uid"])] += 1
    return counts
