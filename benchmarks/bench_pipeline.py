"""End-to-end throughput and per-stage costs on this machine.

Starts `otad serve` in-process (real gRPC server, Milvus Lite in a temp dir), trains a model from a warm-up
stream, then N client threads push OTLP log batches through real gRPC for a fixed time. Prints a table:
records/s ingested -> scored -> stored, Export latency percentiles while the queue has room, and the per-stage
cost per record (map, featurize+embed+score, store).

    python benchmarks/bench_pipeline.py [--seconds 30] [--clients 4] [--batch 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from receiver.rows.mapper import RowMapper  # noqa: E402

SERVICES = ["frontend", "auth", "payments", "inventory"]
PATHS = ["/products/{}", "/cart", "/api/search", "/checkout", "/login"]


def make_request(rng: random.Random, n: int, t0: int, seq: list[int]) -> logs_pb.ExportLogsServiceRequest:
    req = logs_pb.ExportLogsServiceRequest()
    for service in SERVICES:
        rl = req.resource_logs.add()
        rl.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
        sl = rl.scope_logs.add()
        for _ in range(n // len(SERVICES)):
            seq[0] += 1
            path = rng.choice(PATHS).format(rng.randint(1, 9999))
            ms = rng.lognormvariate(3, 0.5)
            lr = sl.log_records.add(time_unix_nano=t0 + seq[0] * 200_000, severity_number=9)
            lr.body.string_value = f"GET {path} 200 in {ms:.1f} ms"
            for k, v in (
                ("http.request.method", "GET"),
                ("url.path", path),
                ("user.name", f"user{rng.randint(1, 80)}"),
                ("log.record.uid", f"{seq[0]:032x}"),
            ):
                lr.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
            lr.attributes.append(KeyValue(key="http.response.status_code", value=AnyValue(int_value=200)))
            lr.attributes.append(KeyValue(key="duration_ms", value=AnyValue(double_value=ms)))
    return req


def renumber(req: logs_pb.ExportLogsServiceRequest, client: int, sent: int, t_base: int) -> int:
    """Give every record of a prebuilt request a new uid and time (about 1 us a record, in place)."""
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                sent += 1
                lr.time_unix_nano = t_base + 10**12 * (client + 1) + sent * 200_000
                lr.attributes[3].value.string_value = f"c{client:03d}{sent:028x}"  # log.record.uid
    return sent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status(port: int) -> dict:
    import json
    import urllib.request

    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())


def stage_sums(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("otad_stage_seconds_sum"):
            name = line.split('stage="')[1].split('"')[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(otad_pid: int) -> dict[str, float]:
    """CPU seconds so far of otad serve, its children (scoring process, Milvus Lite server) and this process."""
    out = {
        "otad serve (receiver, mapper, spool, store)": _cpu_s(otad_pid),
        "load clients (this process)": sum(os.times()[:2]),
    }
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != otad_pid:
                continue
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            name = (
                "Milvus Lite server"
                if "milvus_lite" in cmd or "lite_server" in cmd
                else "scoring process"
                if "spawn_main" in cmd and "resource_tracker" not in cmd
                else "other"
            )
            out[name] = out.get(name, 0.0) + _cpu_s(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def load(stub, clients: int, batch: int, seconds: float, rate: float | None, t_base: int) -> dict:
    """N client threads; with `rate` (records/s in total) requests are paced, else they flood."""
    latencies: list[float] = []
    refused, accepted = [0], [0]
    stop = threading.Event()
    lock = threading.Lock()
    seq = [0]

    def client(seed: int) -> None:
        crng = random.Random(seed)
        reqs = [make_request(crng, batch, t_base + 10**12 * (seed + 1), seq) for _ in range(8)]
        sent = 0
        interval = batch * clients / rate if rate else 0.0
        next_at = time.monotonic() + crng.random() * interval
        i = 0
        while not stop.is_set():
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at += interval
            req = reqs[i % len(reqs)]
            sent = renumber(
                req, seed, sent, t_base
            )  # every record new, as in real traffic (not an overwrite)
            start = time.perf_counter()
            try:
                stub.Export(req, timeout=10)
                with lock:
                    latencies.append(time.perf_counter() - start)
                    accepted[0] += batch
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                with lock:
                    refused[0] += 1
                time.sleep(0.5)
            i += 1

    threads = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    lat = np.asarray(latencies or [0.0]) * 1000
    return {
        "accepted": accepted[0],
        "refused": refused[0],
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
    }


def serve_bare_decode(port: int) -> None:
    """The anchor: an OTLP/gRPC logs server that only decodes each request and touches every record (the most
    this machine's Python gRPC stack can take in; otad's figures are reported as a share of it)."""
    from concurrent import futures

    def export(data: bytes, context) -> bytes:
        request = logs_pb.ExportLogsServiceRequest.FromString(data)
        n = 0
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for lr in sl.log_records:
                    n += lr.time_unix_nano > 0
        return logs_pb.ExportLogsServiceResponse().SerializeToString()

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    handler = grpc.unary_unary_rpc_method_handler(export, request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.logs.v1.LogsService", {"Export": handler}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def measure_anchor(args: argparse.Namespace, t0: int) -> float:
    """Records/s the bare-decode server takes in from the same clients (flood), in a child process."""
    import subprocess

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--anchor-server", str(port)])
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = logs_grpc.LogsServiceStub(channel)
        result = load(stub, args.clients, args.batch, min(args.seconds, 15), None, t0)
        channel.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return result["accepted"] / min(args.seconds, 15)


def main() -> int:
    import subprocess

    ap = argparse.ArgumentParser()
    ap.add_argument("--anchor-server", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=5000, help="offered records/s for the latency run")
    args = ap.parse_args()
    if args.anchor_server:
        serve_bare_decode(args.anchor_server)
        return 0
    sys.stderr.write("anchor: flooding a bare-decode OTLP/gRPC server with the same clients ...\n")
    anchor = measure_anchor(args, 1_762_041_600_000_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="otad-bench-"))
    gport, mport = free_port(), free_port()
    env = dict(
        os.environ,
        OTAD_DATA_DIR=str(tmp),
        OTAD_GRPC_ENDPOINT=f"127.0.0.1:{gport}",
        OTAD_METRICS_ENDPOINT=f"127.0.0.1:{mport}",
        OTAD_HTTP_ENDPOINT="127.0.0.1:0",
        OTAD_BOOTSTRAP_ROWS=str(args.bootstrap),
        OTAD_TRAIN_EPOCHS="8",
        OTAD_LOG_LEVEL="WARNING",
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
        channel = grpc.insecure_channel(f"127.0.0.1:{gport}")
        stub = logs_grpc.LogsServiceStub(channel)
        rng, seq, t0 = random.Random(1), [0], 1_762_041_600_000_000_000

        sample = make_request(rng, 4000, t0, seq)
        mapper = RowMapper()
        t = time.perf_counter()
        for _ in range(5):
            mapper.map_logs(sample)
        map_us = (time.perf_counter() - t) / (5 * 4000) * 1e6

        sys.stderr.write(f"warm-up: sending {args.bootstrap} rows; otad trains its first model ...\n")
        sent = 0
        while sent < args.bootstrap:
            stub.Export(make_request(rng, args.batch, t0, seq), timeout=10)
            sent += args.batch
        t = time.monotonic()
        while status(mport)["state"] != "scoring":
            time.sleep(0.5)
            if time.monotonic() - t > 900:
                raise SystemExit("model did not train within 15 minutes")
        train_s = time.monotonic() - t
        while status(mport)["queued_rows"]:
            time.sleep(0.5)

        if os.environ.get("OTAD_BENCH_PROFILE"):
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-o",
                    os.environ["OTAD_BENCH_PROFILE"],
                    "-d",
                    "15",
                    "-f",
                    "raw",
                    "-p",
                    str(otad.pid),
                    "--threads",
                    "--idle",
                    "--subprocesses",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        results = {}
        for name, rate in (("flood", None), ("paced", args.rate)):
            before, stages0, cpu0 = (
                status(mport)["processed_rows"],
                stage_sums(mport),
                cpu_by_process(otad.pid),
            )
            begin = time.monotonic()
            results[name] = load(
                stub, args.clients, args.batch, args.seconds, rate, t0 + (2 if rate else 1) * 10**15
            )
            while status(mport)["queued_rows"]:
                time.sleep(0.2)
            time.sleep(1.0)
            results[name]["elapsed"] = time.monotonic() - begin
            results[name]["processed"] = status(mport)["processed_rows"] - before
            stages1 = stage_sums(mport)
            cpu1 = cpu_by_process(otad.pid)
            results[name]["cpu"] = {
                k: (cpu1[k] - cpu0.get(k, 0.0)) / max(results[name]["processed"], 1) * 1e6 for k in cpu1
            }
            results[name]["stages"] = {
                k: (stages1[k] - stages0.get(k, 0)) / max(results[name]["processed"], 1) * 1e6
                for k in stages1
            }
    finally:
        otad.terminate()
        otad.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)  # the store and spool of one run: ~330 MB

    flood, paced = results["flood"], results["paced"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"otad serve (Milvus Lite child process) and the load clients share the machine"
    )
    print(f"{'figure':<52}{'value':>16}")
    table = [
        ("clients x records per Export", f"{args.clients} x {args.batch}"),
        ("flood: accepted log records/s", f"{flood['accepted'] / args.seconds:,.0f}"),
        ("anchor: bare-decode server, accepted records/s", f"{anchor:,.0f}"),
        (
            "flood: scored + stored log records/s (end to end)",
            f"{flood['processed'] / flood['elapsed']:,.0f}",
        ),
        (
            "flood: end to end as a share of the anchor",
            f"{flood['processed'] / flood['elapsed'] / anchor:.2%}",
        ),
        ("flood: accepted as a share of the anchor", f"{flood['accepted'] / args.seconds / anchor:.2%}"),
        ("flood: Export calls refused (UNAVAILABLE+RetryInfo)", f"{flood['refused']}"),
        (f"paced {args.rate:,.0f}/s: accepted log records/s", f"{paced['accepted'] / args.seconds:,.0f}"),
        (
            f"paced {args.rate:,.0f}/s: scored + stored records/s",
            f"{paced['processed'] / paced['elapsed']:,.0f}",
        ),
        (f"paced {args.rate:,.0f}/s: Export p50 / p99 (ms)", f"{paced['p50']:.1f} / {paced['p99']:.1f}"),
        ("map OTLP -> rows (us/record, this process)", f"{map_us:.1f}"),
        ("featurize+embed+score (us/record)", f"{flood['stages'].get('featurize_embed_score', 0):.1f}"),
        ("store in Milvus Lite (us/record, overlapped)", f"{flood['stages'].get('store', 0):.1f}"),
        ("first model: training wait (s)", f"{train_s:.1f}"),
    ]
    for name, value in table:
        print(f"{name:<52}{value:>16}")
    print(f"{'flood: CPU per stored record, by process (us)':<52}")
    for name, us in sorted(flood["cpu"].items(), key=lambda kv: -kv[1]):
        print(f"{'  ' + name:<52}{us:>16.0f}")
    print(f"{'  total (2 cores = 400 us/record at 5,000/s)':<52}{sum(flood['cpu'].values()):>16.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
