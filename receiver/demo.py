"""`otad demo` (`make demo`): the whole path through a real Collector, printing anomalies as they arrive.

    otad simulate (the application, OTel SDK) -> rotel (a Collector) -> otad -> OTLP sink (prints each event)

rotel's wheel ships the `rotel-agent` binary (the `test` extra); otad runs in this process on free ports with a
fresh data dir, trains its first model on the first `--bootstrap-rows` records, and exports its anomaly events to
a small OTLP/gRPC log sink here, which prints one line per event.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=900.0, help="simulated seconds of traffic (default 900)")
    p.add_argument(
        "--speedup", type=float, default=30.0, help="simulated seconds per wall second (default 30)"
    )
    p.add_argument("--rate", type=float, default=8.0, help="simulated requests per second (default 8)")
    p.add_argument("--anomaly-rate", type=float, default=0.1, help="fraction of time in anomaly episodes")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument(
        "--bootstrap-rows", type=int, default=3000, help="records before the first model is trained"
    )
    p.add_argument("--epochs", type=int, default=6, help="training epochs of the first model")
    p.add_argument(
        "--data-dir", type=Path, default=None, help="default: a temporary directory, removed after"
    )
    p.add_argument("--no-collector", action="store_true", help="send straight to otad (without rotel)")


class EventPrinter(logs_service_pb2_grpc.LogsServiceServicer):
    """The sink behind otad's emitter: an OTLP/gRPC LogsService that prints one line per anomaly event."""

    def __init__(self, out=sys.stdout, width: int = 160) -> None:
        self.out, self.width, self.events, self._lock = out, width, 0, threading.Lock()
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self) -> str:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(1).wait()

    def Export(self, request, context):  # noqa: N802 (the generated name)
        for rl in request.resource_logs:
            service = next(
                (a.value.string_value for a in rl.resource.attributes if a.key == "service.name"), "?"
            )
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    self._print(service, record)
        return logs_service_pb2.ExportLogsServiceResponse()

    def _print(self, service: str, record) -> None:
        attrs = {a.key: a.value for a in record.attributes}
        score = attrs["anomaly.score"].double_value if "anomaly.score" in attrs else float("nan")
        signal = attrs["anomaly.source.signal"].string_value if "anomaly.source.signal" in attrs else "?"
        text = attrs["anomaly.explanation"].string_value if "anomaly.explanation" in attrs else ""
        if not text:
            try:
                text = json.loads(record.body.string_value)["finding_info"]["title"]
            except (ValueError, KeyError, TypeError):
                text = record.body.string_value[:200]
        when = time.strftime("%H:%M:%S", time.gmtime(record.time_unix_nano / 1e9))
        count = attrs["anomaly.finding.count"].int_value if "anomaly.finding.count" in attrs else 1
        seen = f"x{count}" if count > 1 else ""  # an Update of a finding: its anomalies so far
        text = text if len(text) <= self.width else text[: self.width - 1] + "…"
        with self._lock:
            self.events += 1
            self.out.write(f"{when}  {score:5.1f} {seen:>5}  {signal:<7} {service:<10} {text}\n")
            self.out.flush()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_rotel(otad_port: int, log: Path) -> tuple[subprocess.Popen, int]:
    """rotel-agent listening on a free port, forwarding every signal to otad over OTLP/gRPC."""
    try:
        import rotel  # type: ignore[import-untyped]  # the wheel ships a binary, no types
    except ImportError:
        raise FileNotFoundError(
            "otad demo needs rotel (a Collector; pip install rotel, or the `test` extra), or --no-collector"
        ) from None
    agent = Path(rotel.__file__).parent / "rotel-agent"
    port = _free_port()
    args = [str(agent), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{port}", "--otlp-http-endpoint",
            f"127.0.0.1:{_free_port()}", "--pid-file", str(log.with_suffix(".pid")), "--batch-timeout", "200ms",
            "--exporter", "otlp", "--otlp-exporter-endpoint", f"http://127.0.0.1:{otad_port}",
            "--otlp-exporter-protocol", "grpc"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
    proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OSError(f"rotel-agent exited with {proc.returncode}: {log.read_text()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise OSError(f"rotel-agent did not listen on port {port} within 15 s")


def simulate(target: str, args: argparse.Namespace) -> subprocess.Popen:
    """`otad simulate` as its own process (the application): its OTel SDK exporters send to `target`."""
    command = [sys.executable, "-m", "receiver.cli", "simulate", "--target", target, "--duration",
               str(args.duration), "--speedup", str(args.speedup), "--rate", str(args.rate), "--anomaly-rate",
               str(args.anomaly_rate), "--seed", str(args.seed), "--labels", os.devnull]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def watch(service, out, app_done, settle_s: float = 3.0, timeout_s: float = 600.0) -> None:
    """Say when otad changes state (collecting, training, scoring) until the application has finished and otad
    has taken in, trained on and scored everything (nothing new for `settle_s`)."""
    said, last, quiet_since = "", None, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = service.pipeline.status()
        if st["state"] != said:
            said = st["state"]
            note = {"collecting": f"collecting {st['bootstrap_rows']} records for the first model",
                    "training": f"training the first model on {st['backlog_rows']} records",
                    "scoring": f"scoring with model {st['model_version']}"}.get(said, said)  # fmt: skip
            out.write(f"otad demo: otad is {note}\n")
            out.flush()
        seen = (st["state"], st["processed_rows"], st["backlog_rows"], st["queued_rows"])
        if seen != last:
            last, quiet_since = seen, time.monotonic()
        settled = time.monotonic() - quiet_since >= settle_s and st["state"] != "training"
        if app_done() and settled and service.pipeline.wait_idle(0.1):
            return
        time.sleep(0.2)


def run_demo(args: argparse.Namespace, data_dir: Path, out=sys.stdout) -> int:
    """Run the demo; returns the number of anomaly events printed."""
    from receiver.service import Service
    from receiver.settings import Settings

    printer = EventPrinter(out)
    sink = printer.start()
    overrides = {
        "data_dir": data_dir,
        "export_endpoint": sink,
        "bootstrap_rows": args.bootstrap_rows,
        "train_epochs": args.epochs,
        "batch_wait_ms": 100,
        **{f"{name}_endpoint": "127.0.0.1:0" for name in ("grpc", "http", "metrics", "query")},
    }
    # The findings' timing (group wait, quiet window) in simulated time, as a real-time otad would see it.
    for name in ("event_wait_s", "event_window_s"):
        if name in Settings.model_fields:
            overrides[name] = float(Settings.model_fields[name].default) / max(args.speedup, 1.0)
    service = Service(Settings(**overrides))
    rotel = None
    try:
        service.start()
        target = f"127.0.0.1:{service.grpc_port}"
        if not args.no_collector:
            rotel, port = start_rotel(service.grpc_port, data_dir / "rotel.log")
            target = f"127.0.0.1:{port}"
        out.write(
            f"otad demo: simulator -> {'rotel ' + target + ' -> ' if rotel else ''}otad :{service.grpc_port} "
            f"-> sink {sink}; {args.duration:.0f} simulated s at {args.speedup:g}x; the first model is trained "
            f"after {args.bootstrap_rows} records\n"
        )
        out.flush()
        app = simulate(target, args)
        watch(service, out, lambda: app.poll() is not None)
        service.emitter.flush(10)
    finally:
        if rotel is not None:
            rotel.terminate()
            rotel.wait(10)
        service.stop(10)
        printer.stop()
    st = service.pipeline.status()
    out.write(
        f"otad demo: {printer.events} anomaly events printed; otad scored {st['processed_rows']} records "
        f"(state {st['state']}, {st['anomalies']} anomalies)\n"
    )
    return printer.events


def cmd_demo(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        return 0 if run_demo(args, args.data_dir) else 1
    with tempfile.TemporaryDirectory(prefix="otad-demo-") as tmp:
        return 0 if run_demo(args, Path(tmp)) else 1
