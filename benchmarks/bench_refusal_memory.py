"""RSS of an otad receiver after it refuses over-limit requests: is the memory given back? (issue 10, item 6)

A child process serves OTLP/gRPC and OTLP/HTTP (receiver.otlp.grpc_server, receiver.otlp.http_server; no pipeline: refused
requests never reach it) with the default 64 MiB limit. The parent warms it up with small refused requests, reads
its RSS (/proc/<pid>/status VmRSS), sends `--repeat` over-limit requests of one kind, waits `--settle` seconds and
reads the RSS again; then the next kind. Kinds:

- grpc-gzip: a logs request of 65 MiB gzip-compressed by grpcio (a 65 KiB gzip bomb); otad inflates and refuses it
- grpc-plain: the same uncompressed; grpc core refuses it from the message's length prefix
- http-gzip: the same gzip bomb as a `Content-Encoding: gzip` body
- http-chunked: 65 MiB uncompressed in chunked transfer encoding (no Content-Length): read up to the limit, refused

    python benchmarks/bench_refusal_memory.py [--repeat 3] [--settle 1.0]

`--serve` runs the child (tests/conformance/test_refusals.py uses it too).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import gzip
import http.client
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
KINDS = ("grpc-gzip", "grpc-plain", "http-gzip", "http-chunked")


def serve() -> None:
    """The child: both servers on free ports; prints them; serves until stdin closes."""
    sys.path.insert(0, str(ROOT))
    from receiver.metrics import Metrics
    from receiver.otlp.grpc_server import OtlpGrpcServer
    from receiver.otlp.handler import ExportHandler
    from receiver.otlp.http_server import OtlpHttpServer
    from receiver.rows.mapper import RowMapper

    logging.basicConfig(level=logging.ERROR)
    metrics = Metrics()
    export = ExportHandler(None, RowMapper(), metrics, 5)
    grpc_server = OtlpGrpcServer("localhost:0", export)
    http_server = OtlpHttpServer("localhost:0", export, metrics)
    grpc_server.start()
    http_server.start()
    print(grpc_server.port, http_server.port, flush=True)
    for line in sys.stdin:  # commands from the parent, to tell what holds memory
        if line.strip() == "gc":
            gc.collect()
        elif line.strip() == "trim":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        print("done", flush=True)
    http_server.stop(1)
    grpc_server.stop(1)


class Child:
    """The serving child process, its ports and its RSS."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.grpc_port, self.http_port = map(int, self.proc.stdout.readline().split())

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def command(self, name: str) -> None:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def big_logs(mib: int) -> bytes:
    """A logs request whose one log body is `mib` MiB of "a" (compresses about 1000:1)."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb

    request = logs_pb.ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "a" * (mib * MIB)
    return request.SerializeToString()


def grpc_export(port: int, payload: bytes, compress: bool) -> grpc.StatusCode:
    with grpc.insecure_channel(
        f"localhost:{port}", options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        try:
            channel.unary_unary(LOGS_EXPORT)(
                payload, timeout=60, compression=grpc.Compression.Gzip if compress else None
            )
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def http_export(port: int, body: bytes, headers: dict[str, str], chunked: bool = False) -> int:
    conn = http.client.HTTPConnection("localhost", port, timeout=60)
    try:
        headers = {"Content-Type": "application/x-protobuf", **headers}
        if chunked:  # an iterable body without Content-Length goes out in chunked transfer encoding
            conn.request(
                "POST",
                "/v1/logs",
                body=(body[i : i + MIB] for i in range(0, len(body), MIB)),
                headers=headers,
                encode_chunked=True,
            )
        else:
            conn.request("POST", "/v1/logs", body=body, headers=headers)
        try:
            return conn.getresponse().status
        except (ConnectionError, http.client.RemoteDisconnected):
            return -1
    finally:
        conn.close()


def send(child: Child, kind: str, plain: bytes, gzipped: bytes) -> object:
    """One over-limit request of `kind`; returns the status the client got."""
    if kind == "grpc-gzip":
        return grpc_export(child.grpc_port, plain, compress=True)
    if kind == "grpc-plain":
        return grpc_export(child.grpc_port, plain, compress=False)
    if kind == "http-gzip":
        return http_export(child.http_port, gzipped, {"Content-Encoding": "gzip"})
    return http_export(child.http_port, plain, {}, chunked=True)


def warm_up(child: Child) -> None:
    """Small refused requests on every path, so the first over-limit one does not pay for first-use allocations."""
    small = gzip.compress(b"\xff\xff not protobuf")
    for _ in range(3):
        grpc_export(child.grpc_port, b"\xff\xff not protobuf", compress=True)
        grpc_export(child.grpc_port, b"\xff\xff not protobuf", compress=False)
        http_export(child.http_port, small, {"Content-Encoding": "gzip"})
        http_export(child.http_port, b"\xff\xff not protobuf", {}, chunked=True)


def measure(kinds: tuple[str, ...], repeat: int, settle_s: float) -> list[tuple[str, object, float, float]]:
    """(kind, client status, RSS MiB before, RSS MiB after `repeat` refusals) per kind, one child for all."""
    plain = big_logs(65)
    gzipped = gzip.compress(plain, 6)
    child = Child()
    try:
        warm_up(child)
        time.sleep(settle_s)
        results = []
        for kind in kinds:
            before = child.rss_mib()
            for _ in range(repeat):
                status = send(child, kind, plain, gzipped)
            time.sleep(settle_s)
            after = child.rss_mib()
            child.command("gc")
            after_gc = child.rss_mib()
            child.command("trim")
            results.append((kind, status, before, after, after_gc, child.rss_mib()))
        return results
    finally:
        child.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", action="store_true", help="run the serving child")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--settle", type=float, default=1.5, help="seconds to wait before reading RSS")
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    print(f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, {os.cpu_count()} cpus")
    print(f"{'kind':<14}{'client got':<22}{'RSS before':>12}{'after':>10}{'delta':>10}{'gc':>10}{'trim':>10}")
    for kind, status, before, after, after_gc, after_trim in measure(
        tuple(args.kinds.split(",")), args.repeat, args.settle
    ):
        print(
            f"{kind:<14}{str(status):<22}{before:>10.1f} M{after:>8.1f} M{after - before:>+8.1f} M"
            f"{after_gc - before:>+8.1f} M{after_trim - before:>+8.1f} M"
        )


if __name__ == "__main__":
    main()
