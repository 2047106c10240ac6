"""Reading OTLP/JSON files (`otad train/score --input`): the json_format reader vs the light-message reader.

Both turn a Collector file-exporter file into sorted rows (file -> JSON -> requests -> RowMapper -> rows):

- old: `otlpjson.read_file` (protobuf's json_format.ParseDict into protobuf requests), the previous `read_rows`
- new: `receiver.cli.read_rows` (light messages, receiver/otlp/otlpjson_fast.py, cyclic GC paused, one process)
- new-2: the same with two worker processes (`receiver.jsonfiles.read_rows(paths, workers=2)`)

Each reader runs in a fresh interpreter (no shared heap or warm caches), `--repeat` times; the best run counts.
Printed: records/s for each, the speed-up, and whether both gave identical rows (a digest of every row's repr).
Without `--input` a file is simulated first (`otad simulate --duration 1800 --rate 6 --anomaly-rate 0.1`).

    python benchmarks/bench_otlpjson.py [--input FILE] [--duration 1800] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def old_read_rows(path: Path) -> list:
    """The reader before the light messages (receiver/cli.py read_rows at f97b73e)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from receiver.otlp.otlpjson import read_file
    from receiver.rows.mapper import RowMapper

    mapper, rows = RowMapper(), []
    for _, request in read_file(path):
        if isinstance(request, ExportLogsServiceRequest):
            batch = mapper.map_logs(request)
        elif isinstance(request, ExportTraceServiceRequest):
            batch = mapper.map_traces(request)
        else:
            batch = mapper.map_metrics(request)
        rows.extend(batch.rows)
    rows.sort(key=lambda r: r.time_unix_nano)
    return rows


def measure(reader: str, path: Path) -> dict:
    """One run in this process: wall and CPU seconds (this process only), rows, digest."""
    from receiver.cli import read_rows
    from receiver.jsonfiles import read_rows as read_rows_workers

    wall, cpu = time.perf_counter(), time.process_time()
    if reader == "old":
        rows = old_read_rows(path)
    elif reader == "new-2":
        rows = read_rows_workers([path], workers=2)
    else:
        rows = read_rows([path])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    digest = hashlib.blake2b(digest_size=16)
    for row in rows:
        digest.update(repr(row).encode("utf-8", "surrogatepass"))
    return {"wall": wall, "cpu": cpu, "rows": len(rows), "digest": digest.hexdigest()}


def run(reader: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", reader, "--input", str(path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def simulate(duration: int, out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver.cli",
            "simulate",
            "--output-dir",
            str(out),
            "--duration",
            str(duration),
            "--rate",
            "6",
            "--anomaly-rate",
            "0.1",
            "--seed",
            "3",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OTAD_LOG_LEVEL="WARNING"),
        check=True,
        capture_output=True,
    )
    return out / "otlp.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, help="an OTLP/JSON file (default: simulate one)")
    parser.add_argument("--duration", type=int, default=1800, help="simulated seconds when no --input")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=["old", "new", "new-2"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.input)))
        return 0
    path = args.input or simulate(args.duration, Path(tempfile.mkdtemp(prefix="otad-bench-json-")))
    size = path.stat().st_size / 1e6
    print(
        f"{path}: {size:.1f} MB; {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    best: dict[str, dict] = {}
    for i in range(args.repeat):
        for reader in ("new", "new-2", "old"):
            result = run(reader, path)
            print(
                f"  run {i + 1} {reader}: {result['rows']:,} rows in {result['wall']:.2f} s wall "
                f"({result['cpu']:.2f} s CPU)",
                flush=True,
            )
            if reader not in best or result["wall"] < best[reader]["wall"]:
                best[reader] = result
    old = best["old"]
    for reader, label in (
        ("old", "old (json_format -> protobuf -> rows)"),
        ("new", "new (otad train/score --input)"),
        ("new-2", "new, 2 worker processes"),
    ):
        result = best[reader]
        print(
            f"{label:<38} {result['rows'] / result['wall']:>9,.0f} records/s ({result['wall']:.2f} s, "
            f"{size / result['wall']:.1f} MB/s, {old['wall'] / result['wall']:.1f}x)"
        )
    same = all(best[r]["rows"] == old["rows"] and best[r]["digest"] == old["digest"] for r in best)
    print(f"rows identical: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
