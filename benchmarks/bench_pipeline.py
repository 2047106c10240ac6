"""End-to-end throughput and per-stage costs on this machine.

Starts `otad serve` in-process (real gRPC server, Milvus Lite in a temp dir), trains a model from a warm-up
stream, then N client threads push OTLP log batches through real gRPC for a fixed time. Prints a table:
records/s ingested -> scored -> stored, Export latency percentiles while the queue has room, and the per-stage
cost per record (map, featurize+embed+score, store).

    python benchmarks/bench_pipeline.py [--seconds 30] [--clients 4] [--batch 1000]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
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

from receiver.cli import Service  # noqa: E402
from receiver.rows import RowMapper  # noqa: E402
from receiver.settings import Settings  # noqa: E402

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
            for k, v in (("http.request.method", "GET"), ("url.path", path), ("user.name", f"user{rng.randint(1, 80)}"),
                         ("log.record.uid", f"{seq[0]:032x}")):
                lr.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
            lr.attributes.append(KeyValue(key="http.response.status_code", value=AnyValue(int_value=200)))
            lr.attributes.append(KeyValue(key="duration_ms", value=AnyValue(double_value=ms)))
    return req


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--bootstrap", type=int, default=20_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="otad-bench-"))
    settings = Settings(data_dir=tmp, grpc_endpoint="localhost:0", metrics_endpoint="localhost:0",
                        bootstrap_rows=args.bootstrap, train_epochs=8, batch_rows=4096, batch_wait_ms=100)
    service = Service(settings)
    service.start()
    channel = grpc.insecure_channel(f"localhost:{service.grpc_port}")
    stub = logs_grpc.LogsServiceStub(channel)
    rng, seq, t0 = random.Random(1), [0], 1_762_041_600_000_000_000

    # Per-stage: mapping cost.
    sample = make_request(rng, 4000, t0, seq)
    mapper = RowMapper()
    t = time.perf_counter()
    for _ in range(5):
        mapper.map_logs(sample)
    map_us = (time.perf_counter() - t) / (5 * 4000) * 1e6

    sys.stderr.write(f"warm-up: sending {args.bootstrap} rows and training the first model ...\n")
    sent = 0
    while sent < args.bootstrap:
        stub.Export(make_request(rng, args.batch, t0, seq), timeout=10)
        sent += args.batch
    t = time.monotonic()
    while service.pipeline.state != "scoring":
        time.sleep(0.5)
        if time.monotonic() - t > 600:
            raise SystemExit("model did not train within 10 minutes")
    train_s = time.monotonic() - t
    service.pipeline.wait_idle(120)

    latencies: list[float] = []
    refused = [0]
    accepted = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def client(seed: int) -> None:
        crng = random.Random(seed)
        reqs = [make_request(crng, args.batch, t0 + 10**12 * (seed + 1), seq) for _ in range(8)]
        i = 0
        while not stop.is_set():
            start = time.perf_counter()
            try:
                stub.Export(reqs[i % len(reqs)], timeout=10)
                with lock:
                    latencies.append(time.perf_counter() - start)
                    accepted[0] += args.batch
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                with lock:
                    refused[0] += 1
                time.sleep(0.2)
            i += 1

    processed0 = service.pipeline.processed
    stage = service.metrics.stage_seconds
    threads = [threading.Thread(target=client, args=(s,)) for s in range(args.clients)]
    begin = time.monotonic()
    for th in threads:
        th.start()
    time.sleep(args.seconds)
    stop.set()
    for th in threads:
        th.join()
    service.pipeline.wait_idle(300)
    elapsed = time.monotonic() - begin
    processed = service.pipeline.processed - processed0

    def stage_sum(name: str) -> float:
        for metric in stage.collect():
            for s in metric.samples:
                if s.name.endswith("_sum") and s.labels.get("stage") == name:
                    return s.value
        return 0.0

    total_rows = service.pipeline.processed
    lat = np.asarray(latencies) * 1000
    service.stop(10)
    cpu = os.cpu_count()
    print(f"machine: {platform.processor() or platform.machine()}, {cpu} cores, Python {platform.python_version()}")
    print(f"{'figure':<44}{'value':>14}")
    rows = [
        ("clients x records per Export", f"{args.clients} x {args.batch}"),
        ("accepted log records/s (ingest)", f"{accepted[0] / args.seconds:,.0f}"),
        ("scored + stored log records/s (end to end)", f"{processed / elapsed:,.0f}"),
        ("Export p50 / p99 latency (ms)", f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f}"),
        ("Export calls refused (UNAVAILABLE)", f"{refused[0]}"),
        ("map OTLP -> rows (us/record)", f"{map_us:.1f}"),
        ("featurize+embed+score (us/record)", f"{stage_sum('featurize_embed_score') / total_rows * 1e6:.1f}"),
        ("store in Milvus Lite (us/record)", f"{stage_sum('store') / total_rows * 1e6:.1f}"),
        ("first model: wait for training (s)", f"{train_s:.1f}"),
    ]
    for name, value in rows:
        print(f"{name:<44}{value:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
