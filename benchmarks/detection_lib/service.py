"""A fresh `otad serve` (a child process: temp data dir, loopback ports, Milvus Lite embedded, default settings
except OTAD_BOOTSTRAP_ROWS, the endpoints and OTAD_EVENT_WINDOW_S=0), an OTLP/gRPC sink for its anomaly events,
and the replay client.

`run_service` replays a dataset's OTLP/JSON lines in order (one Export per line), answering backpressure the
way an exporter does (UNAVAILABLE + RetryInfo: wait, resend), waits until every row is processed and the
events are exported, stops the service with SIGTERM and scores the events (see `service_eval`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

from benchmarks.detection_lib.datasets import Dataset
from benchmarks.detection_lib.replay import Replayer
from benchmarks.detection_lib.service_eval import score_events

DEFAULT_BOOTSTRAP = 5000  # receiver/settings.py's default; the benchmark uses min(it, half the dataset)
REPO = Path(__file__).resolve().parents[2]


class EventSink(logs_service_pb2_grpc.LogsServiceServicer):
    """OTLP/gRPC logs sink: keeps every ExportLogsServiceRequest it receives."""

    def __init__(self) -> None:
        self.requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.lock = threading.Lock()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(self, request, context):  # noqa: N802 (generated name)
        with self.lock:
            self.requests.append(request)
        return logs_service_pb2.ExportLogsServiceResponse()

    def records(self) -> int:
        with self.lock:
            return sum(
                len(sl.log_records)
                for req in self.requests
                for rl in req.resource_logs
                for sl in rl.scope_logs
            )


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all bound at once: a port closed and asked again can come back)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Serve:
    """`otad serve` as a child process with its own data dir and ports; status and /metrics over HTTP."""

    def __init__(self, data_dir: Path, export_port: int, bootstrap_rows: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.grpc_port, self.metrics_port, http_port, query_port = free_ports(4)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTAD_")}  # defaults, not the caller's
        env.update(
            OTAD_DATA_DIR=str(data_dir),
            OTAD_GRPC_ENDPOINT=f"127.0.0.1:{self.grpc_port}",
            OTAD_HTTP_ENDPOINT=f"127.0.0.1:{http_port}",
            OTAD_METRICS_ENDPOINT=f"127.0.0.1:{self.metrics_port}",
            OTAD_QUERY_ENDPOINT=f"127.0.0.1:{query_port}",
            OTAD_EXPORT_ENDPOINT=f"127.0.0.1:{export_port}",
            OTAD_BOOTSTRAP_ROWS=str(bootstrap_rows),
            # One event per anomaly: this benchmark scores detection from the events; how repeats are grouped
            # into findings is measured by benchmarks/event_volume.py.
            OTAD_EVENT_WINDOW_S="0",
        )
        self.log_handle = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve"],
            cwd=REPO,
            env=env,
            stdout=self.log_handle,
            stderr=subprocess.STDOUT,
        )

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def status(self) -> dict[str, Any]:
        return json.loads(self._get("/readyz")[1])

    def metrics(self) -> dict[str, float]:
        """Prometheus counters summed over their labels, by `name{label="x"}` and by bare name."""
        out: dict[str, float] = {}
        for line in self._get("/metrics")[1].decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            bare = name.split("{", 1)[0]
            out[name] = float(value)
            out[bare] = out.get(bare, 0.0) + float(value) if name != bare else float(value)
        return out

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"otad serve exited with {self.proc.returncode} at start-up")
            try:
                if self._get("/readyz")[0] == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError("otad serve not ready in time")

    def stop(self, timeout_s: float = 90.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # our own child, by its pid
                self.proc.wait(30)
        self.log_handle.close()
        return self.proc.returncode

    def model_meta(self, version: str | None) -> dict[str, Any]:
        path = self.data_dir / "models" / str(version) / "model.json"
        return json.loads(path.read_text())["meta"] if version and path.exists() else {}


def wait_processed(serve: Serve, log: Callable[[str], None], stall_s: float = 300.0) -> dict[str, Any]:
    """Until every accepted row is stored (scored, or a reference row of the cold-start model), nothing is
    queued or staged, and the exporter has settled every anomaly event; gives up after `stall_s` without
    progress (reported)."""
    last, last_change, t0 = None, time.monotonic(), time.monotonic()
    while True:
        st, m = serve.status(), serve.metrics()
        meta = serve.model_meta(st.get("model_version"))
        accepted = sum(
            m.get(f"otad_receiver_accepted_{u}_total", 0.0) for u in ("log_records", "spans", "metric_points")
        )
        scored = m.get('otad_rows_processed_total{state="scoring"}', 0.0)
        exported = sum(
            m.get(f"otad_exporter_{k}_log_records_total", 0.0)
            for k in ("sent", "send_failed", "enqueue_failed")
        )
        done_rows = scored + meta.get("rows", 0)
        idle = st["state"] == "scoring" and not st["queued_rows"] and not st["backlog_rows"]
        # Repeats of one pattern are one finding (receiver/aggregate.py): fewer events than anomalies, so the
        # exporter is settled when its queue is empty.
        if idle and done_rows >= accepted and not m.get("otad_exporter_queue_size", 0.0):
            return {"stalled": False, "wait_seconds": round(time.monotonic() - t0, 1)}
        if st["state"] == "collecting" and st.get("train_error") and not st["queued_rows"]:
            log(f"  the first model's training failed and nothing more will come: {st['train_error']}")
            return {"stalled": True, "train_error": st["train_error"], "accepted": accepted}
        now = (done_rows, exported, st["queued_rows"], st["backlog_rows"])
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            log(f"  no progress for {stall_s:.0f}s: {st}, accepted {accepted}, done {done_rows}")
            return {"stalled": True, "status": st, "accepted": accepted, "done_rows": done_rows}
        time.sleep(1.0)


def start_serve(out: Path, export_port: int, bootstrap: int, log: Callable[[str], None]) -> Serve:
    """A ready `otad serve`; started again on new ports (and a new data dir) when another process took one
    of the chosen ports between their choice and the bind."""
    for attempt in range(3):
        serve = Serve(out / f"data-{attempt}", export_port, bootstrap, out / "serve.log")
        try:
            serve.wait_ready()
            return serve
        except RuntimeError:
            serve.stop()
            if "Address already in use" not in (out / "serve.log").read_text() or attempt == 2:
                raise
            log("  a chosen port was taken meanwhile; starting otad serve again on other ports")
    raise AssertionError("unreachable")


def run_service(
    ds: Dataset, times_ns: np.ndarray, devdata: Path, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """One dataset through a fresh `otad serve`; the figures of its anomaly events. `times_ns`: every row's
    time, sorted (the rows after the cold start and the hours of data they span)."""
    t0 = time.monotonic()
    bootstrap = min(DEFAULT_BOOTSTRAP, len(times_ns) // 2)
    out = work / f"serve-{ds.name}"
    out.mkdir(parents=True, exist_ok=True)
    sink = EventSink()
    sink.server.start()
    serve = start_serve(out, sink.port, bootstrap, log)
    result: dict[str, Any] = {"bootstrap_rows": bootstrap, "serve_log": str(out / "serve.log")}
    try:
        log(f"[{ds.name}] service: otad serve pid {serve.proc.pid}, bootstrap {bootstrap} rows, replaying")
        replay = Replayer(serve.grpc_port, serve.status, log).run(ds.otlp, bootstrap)
        result["replay"] = replay
        result["wait"] = wait_processed(serve, log)
        st, m = serve.status(), serve.metrics()
        result["status"] = st
        result["counters"] = {
            k: v
            for k, v in m.items()
            if k.startswith("otad_") and "{" in k and not k.split("{")[0].endswith(("_bucket", "_created"))
        }
        result["cold_start"] = cold_start_meta(serve.model_meta(st.get("model_version")), st, replay)
        sink_before = sink.records()
        time.sleep(2.0)  # the exporter's last batch
        result["exit_code"] = serve.stop()
        result["events_after_idle"] = sink.records() - sink_before
    finally:
        if serve.proc.poll() is None:
            serve.stop()
        sink.server.stop(5).wait()
    events_path = out / "events.jsonl"
    result.update(score_events(ds, sink.requests, events_path, result["cold_start"], devdata, times_ns))
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    return result


def cold_start_meta(meta: dict[str, Any], status: dict[str, Any], replay: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_version": status.get("model_version"),
        "train_rows": meta.get("rows"),
        "train_end_unix_nano": meta.get("train_end_unix_nano"),
        "train_seconds": round(float(meta.get("train_seconds") or 0.0), 1),
        "seconds_to_scoring": replay.get("seconds_to_scoring"),
    }
