"""Sustained throughput with the ingest spool off vs on (each fsync policy), same load, same machine.

For each configuration a fresh `otad serve` subprocess (Milvus Lite child process, collecting state, so the
path is map -> spool -> queue -> store) takes N flooding client threads for a fixed time. Printed per row:
accepted records/s (the ingest side, where the spool's cost lands), stored records/s end to end (measured
until the queue is drained), Export p50/p99 latency, fsyncs and their mean latency.

    python benchmarks/bench_spool.py [--seconds 20] [--clients 4] [--batch 500]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import free_port, load, status  # noqa: E402

CONFIGS = [
    ("off", {"OTAD_SPOOL_ENABLED": "false"}),
    ("on, fsync never", {"OTAD_SPOOL_FSYNC": "never"}),
    ("on, fsync interval 10 ms", {"OTAD_SPOOL_FSYNC": "interval", "OTAD_SPOOL_FSYNC_INTERVAL_MS": "10"}),
    ("on, fsync always", {"OTAD_SPOOL_FSYNC": "always"}),
]


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def run(name: str, extra: dict[str, str], args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="otad-bench-spool-"))
    gport, mport = free_port(), free_port()
    env = dict(
        os.environ,
        OTAD_DATA_DIR=str(tmp),
        OTAD_GRPC_ENDPOINT=f"127.0.0.1:{gport}",
        OTAD_METRICS_ENDPOINT=f"127.0.0.1:{mport}",
        OTAD_BOOTSTRAP_ROWS="100000000",
        OTAD_QUEUE_ROWS=str(args.queue_rows),
        OTAD_LOG_LEVEL="WARNING",
        **extra,
    )
    otad = subprocess.Popen(
        [sys.executable, "-m", "receiver.cli", "serve"], env=env, cwd=Path(__file__).resolve().parents[1]
    )
    try:
        for _ in range(600):
            try:
                status(mport)
                break
            except OSError:
                time.sleep(0.1)
        stub = logs_grpc.LogsServiceStub(grpc.insecure_channel(f"127.0.0.1:{gport}"))
        begin = time.monotonic()
        result = load(stub, args.clients, args.batch, args.seconds, None, 1_762_041_600_000_000_000)
        while status(mport)["queued_rows"] and time.monotonic() - begin < args.seconds * 20:
            time.sleep(0.2)
        elapsed = time.monotonic() - begin
        result["stored"] = status(mport)["processed_rows"] / elapsed
        result["fsyncs"] = metric(mport, "otad_spool_fsync_seconds_count")
        fsync_sum = metric(mport, "otad_spool_fsync_seconds_sum")
        result["fsync_ms"] = fsync_sum / result["fsyncs"] * 1000 if result["fsyncs"] else 0.0
    finally:
        otad.terminate()
        otad.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    result["accepted_s"] = result["accepted"] / args.seconds
    sys.stderr.write(f"{name}: {result}\n")
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--queue-rows", type=int, default=2_000_000, help="room for the whole run: no refusals")
    args = ap.parse_args()
    results = [(name, run(name, extra, args)) for name, extra in CONFIGS]
    base = results[0][1]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.clients} clients x {args.batch} records per Export, {args.seconds:.0f} s flood per row"
    )
    header = (
        f"{'spool':<26}{'accepted/s':>12}{'vs off':>8}{'stored/s':>10}{'vs off':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'fsyncs':>8}{'fsync ms':>9}"
    )
    print(header)
    for name, r in results:
        print(
            f"{name:<26}{r['accepted_s']:>12,.0f}{r['accepted_s'] / base['accepted_s'] - 1:>+8.0%}"
            f"{r['stored']:>10,.0f}{r['stored'] / base['stored'] - 1:>+8.0%}{r['p50']:>8.1f}{r['p99']:>8.1f}"
            f"{r['fsyncs']:>8.0f}{r['fsync_ms']:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
