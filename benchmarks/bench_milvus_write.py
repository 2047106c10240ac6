"""Milvus Lite write cost: CPU per stored row of the Milvus Lite server process, writes only.

Starts Milvus Lite as otad does (a child `python -m milvus_lite server`, storage/lite_process.py), creates a
rows collection through MilvusStore and upserts N rows of the real schema (dim 32, ~600-byte row JSON) in
pipeline-sized batches via `upsert_row_columns`, the hot path. Reports the server's CPU time (user+sys from
/proc/<pid>/stat) per row, split into the write calls and the quiet period after them (background flush,
index build), and the client's CPU per row. Then checks that a replay of the first batch does not add rows
and that a filtered query works.

    python benchmarks/bench_milvus_write.py [--rows 100000] [--batch 4096] [--rows-index flat|autoindex]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import MilvusStore  # noqa: E402
from storage.lite_process import LiteServerProcess  # noqa: E402

SERVICES = ["frontend", "auth", "payments", "inventory"]
_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of process `pid` (and its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / _TICK


def make_batch(rng: random.Random, start: int, n: int, dim: int, t0: int) -> tuple[dict, np.ndarray]:
    cols: dict[str, list] = {
        k: []
        for k in (
            "uid",
            "signal",
            "service",
            "class_uid",
            "time_ms",
            "trace_id",
            "score",
            "is_anomaly",
            "is_reference",
            "row",
        )
    }
    for i in range(start, start + n):
        service = SERVICES[i % len(SERVICES)]
        cols["uid"].append(f"{i:032x}")
        cols["signal"].append("logs")
        cols["service"].append(service)
        cols["class_uid"].append(1)
        cols["time_ms"].append(t0 + i)
        cols["trace_id"].append(f"{rng.getrandbits(128):032x}")
        cols["score"].append(rng.random())
        cols["is_anomaly"].append(False)
        cols["is_reference"].append(i % 2 == 0)
        path = f"/products/{rng.randint(1, 9999)}"
        cols["row"].append(
            json.dumps(
                {
                    "uid": f"{i:032x}",
                    "signal": "logs",
                    "service": service,
                    "time_ms": t0 + i,
                    "body": f"GET {path} 200 in {rng.lognormvariate(3, 0.5):.1f} ms",
                    "severity_number": 9,
                    "attributes": {
                        "http.request.method": "GET",
                        "url.path": path,
                        "user.name": f"user{rng.randint(1, 80)}",
                        "http.response.status_code": 200,
                        "duration_ms": rng.lognormvariate(3, 0.5),
                    },
                    "resource": {
                        "service.name": service,
                        "host.name": "node-1",
                        "k8s.namespace.name": "shop",
                    },
                },
                separators=(",", ":"),
            )
        )
    emb = np.asarray([[rng.gauss(0, 1) for _ in range(dim)] for _ in range(n)], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return cols, emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=4096, help="rows per upsert (OTAD_BATCH_ROWS)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument(
        "--rows-index",
        default="autoindex",
        choices=["flat", "autoindex"],
        help="embedding index of the rows collection (OTAD_MILVUS_ROWS_INDEX)",
    )
    ap.add_argument("--settle", type=float, default=10.0, help="seconds to wait after the writes")
    ap.add_argument("--keep", default=None, help="data dir to use (default: a temp dir, removed)")
    args = ap.parse_args()

    rng = random.Random(1)
    t0 = int(time.time() * 1000) - args.rows
    batches = [
        make_batch(rng, s, min(args.batch, args.rows - s), args.dim, t0)
        for s in range(0, args.rows, args.batch)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.keep or tmp)
        server = LiteServerProcess(data_dir / "milvus.db")
        server.start()
        pid = server.proc.pid
        print(f"Milvus Lite server pid {pid}", flush=True)
        try:
            store = MilvusStore(server.uri, rows_index=args.rows_index)
            store.ensure_rows_collection("bench", args.dim)
            c0, w0, s0 = proc_cpu_s(pid), time.monotonic(), time.process_time()
            for cols, emb in batches:
                store.upsert_row_columns("bench", cols, emb)
            c1, w1, s1 = proc_cpu_s(pid), time.monotonic(), time.process_time()
            time.sleep(args.settle)
            c2 = proc_cpu_s(pid)
            count = store.count_rows("bench")
            store.upsert_row_columns("bench", *batches[0])  # a spool replay: same uids again
            replay = store.count_rows("bench")
            svc = store.query_rows(
                "bench", "service == {s} and time_ms >= {t}", {"s": "auth", "t": t0}, limit=10
            )
            q = batches[-1][1][:50]
            store.search("bench", q[:1], 10)  # loads the segment indexes
            ts = time.monotonic()
            for v in q:
                store.search("bench", v[None, :], 10)
            search_ms = (time.monotonic() - ts) * 1000 / len(q)
            ts = time.monotonic()
            for v in q[:10]:
                store.search("bench", v[None, :], 10, filter="service == {s}", filter_params={"s": "auth"})
            fsearch_ms = (time.monotonic() - ts) * 1000 / 10
            store.close()
        finally:
            server.stop()
    n = args.rows
    print(f"rows {n}  batch {args.batch}  dim {args.dim}  index {args.rows_index}")
    print(f"write calls  {w1 - w0:6.1f} s wall  {n / (w1 - w0):8.0f} rows/s")
    print(
        f"server CPU   {(c1 - c0) * 1e6 / n:6.1f} us/row during writes  "
        f"+{(c2 - c1) * 1e6 / n:5.1f} us/row in the {args.settle:.0f} s after  = {(c2 - c0) * 1e6 / n:6.1f} us/row"
    )
    print(f"client CPU   {(s1 - s0) * 1e6 / n:6.1f} us/row")
    print(f"search       {search_ms:6.1f} ms per query (k=10)  {fsearch_ms:6.1f} ms with a service filter")
    print(
        f"count {count}  after replay {replay}  filtered query {len(svc)} rows "
        f"{'OK' if count == replay == n and svc else 'MISMATCH'}"
    )


if __name__ == "__main__":
    main()
