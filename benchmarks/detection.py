"""The development detection benchmark: every dataset, time-ordered, beside trivial baselines; one table.

    python benchmarks/detection.py [--datasets bgl,bgl-lines,sim,sim-text,nab,webapp,webapp-json,webapp-logfmt] [--seeds 1,2] [--sim-minutes 60]
                                   [--offline-only | --service-only] [--out results.json]
                                   [--devdata ../shared/devdata] [--work DIR]
    otad benchmark ...             (the same, from a source checkout)

Datasets: the simulator (`otad simulate`'s shop, one run per seed, --sim-minutes simulated minutes at 6
requests/s with 10 % of the time in incidents), BGL_2k (LogHub) and the NAB dev subset (the interleaved stream),
converted by the devdata tools into a work directory (a temp dir unless --work), and `webapp`: synthetic logs of
issue 12's held-out web-application shape (benchmarks/webapp_logs.py, 27,000 records, 1.3 % recurring INFO
faults), made here because that shape is judged and no real copy of it is in the devdata.

Offline protocol (per dataset): rows sorted by time; `fit_version` with its defaults on the first half; the
second half scored in time order in batches of 1,000 with learning on, as the service does. Figures per signal:
AUROC, AP, precision/recall/F1 at otad's own threshold (`is_anomaly`), kinds flagged; for NAB the NAB scores by
nab_score.py of the second half's detections (first-half points count as unflagged). Trivial baselines on the
same split (benchmarks/detection_lib/baselines.py); a row where one beats otad in AUROC or AP is marked.

Service protocol: a fresh `otad serve` per dataset (default settings, OTAD_BOOTSTRAP_ROWS = min(5000, half the
dataset)), the dataset replayed over OTLP/gRPC in order, the anomaly events caught by an OTLP sink and scored.

Prints the markdown table on stdout (progress on stderr) and writes every figure to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.detection_lib import datasets as dsets  # noqa: E402
from benchmarks.detection_lib.metrics import nab_zscore_anchor  # noqa: E402
from benchmarks.detection_lib.report import machine, markdown  # noqa: E402

DEVDATA = REPO.parent / "shared" / "devdata"
T0 = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr, with the time since the start."""
    sys.stderr.write(f"[{time.monotonic() - T0:7.1f}s] {message}\n")
    sys.stderr.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/detection.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--datasets",
        default="bgl,bgl-lines,sim,sim-text,nab,webapp,webapp-json,webapp-logfmt",
        help="comma-separated, run in this order (default bgl,bgl-lines,sim,sim-text,nab,webapp,webapp-json,"
        "webapp-logfmt; bgl-lines is BGL as unparsed lines, the level only in the text; sim-text the simulator"
        " with its logs as bare lines; webapp-json and webapp-logfmt the web-app logs with every field in a JSON"
        " or logfmt body)",
    )
    ap.add_argument("--seeds", default="1,2", help="simulator seeds, one dataset each (default 1,2)")
    ap.add_argument("--sim-minutes", type=float, default=60.0, help="simulated minutes per seed (default 60)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--offline-only", action="store_true", help="only the offline protocol")
    mode.add_argument("--service-only", action="store_true", help="only the replay through otad serve")
    ap.add_argument("--out", type=Path, default=Path("results.json"), help="JSON of every figure")
    ap.add_argument(
        "--plot", type=Path, help="write each dataset's precision-recall curves (PNG) to this directory"
    )
    ap.add_argument("--devdata", type=Path, default=DEVDATA, help=f"devdata directory (default {DEVDATA})")
    ap.add_argument(
        "--work", type=Path, default=None, help="work directory, kept (default: a temp dir, removed)"
    )
    ap.add_argument("--bgl-lines", type=int, default=None, help=argparse.SUPPRESS)  # tests: a BGL prefix
    ap.add_argument("--webapp-rows", type=int, default=27_000, help=argparse.SUPPRESS)  # tests: fewer rows
    a = ap.parse_args(argv)
    a.dataset_list = [d.strip() for d in a.datasets.split(",") if d.strip()]
    known = {"sim", "sim-text", "bgl", "bgl-lines", "nab", "webapp", "webapp-json", "webapp-logfmt"}
    unknown = set(a.dataset_list) - known
    if unknown:
        ap.error(f"unknown dataset(s) {sorted(unknown)}; choose from {', '.join(sorted(known))}")
    a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    return a


def preparers(a: argparse.Namespace, work: Path) -> list[tuple[str, Callable[[], dsets.Dataset]]]:
    """(name, function making the dataset), in the order they run; devdata sets are skipped when absent."""
    out: list[tuple[str, Callable[[], dsets.Dataset]]] = []
    for name in a.dataset_list:
        if name in ("sim", "sim-text"):
            text = name == "sim-text"
            for seed in a.seed_list:
                out.append(
                    (
                        f"{name}-{seed}",
                        lambda s=seed, t=text: dsets.prepare_sim(work, s, a.sim_minutes, log, text_logs=t),
                    )
                )
        elif name.startswith("webapp"):
            shape = name.partition("-")[2] or "attributes"
            out.append((name, lambda s=shape: dsets.prepare_webapp(work, log, a.webapp_rows, shape=s)))
        elif not (a.devdata / "raw").is_dir():
            log(f"{name}: skipped, no devdata at {a.devdata} (give --devdata)")
        elif name == "bgl":
            out.append(("bgl", lambda: dsets.prepare_bgl(work, a.devdata, log, a.bgl_lines)))
        elif name == "bgl-lines":
            out.append(("bgl-lines", lambda: dsets.prepare_bgl_lines(work, a.devdata, log, a.bgl_lines)))
        else:
            out.append(("nab", lambda: dsets.prepare_nab(work, a.devdata, log)))
    return out


def _guarded(what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A failing part is reported in the results, not fatal to the other datasets."""
    try:
        return fn()
    except Exception as exc:
        log(f"  {what} failed: {exc!r}")
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}


def run_dataset(a: argparse.Namespace, ds: dsets.Dataset, work: Path) -> dict[str, Any]:
    from benchmarks.detection_lib.offline import run_offline
    from receiver.jsonfiles import read_rows

    rows = read_rows([ds.otlp])
    out: dict[str, Any] = {"info": ds.info, "rows": len(rows)}
    times = np.asarray([r.time_unix_nano for r in rows], dtype=np.int64)
    if not a.service_only:
        t0 = time.monotonic()
        out["offline"] = _guarded("offline", lambda: run_offline(ds, rows, a.devdata, work, log, a.plot))
        if ds.family == "nab" and "error" not in out["offline"]:
            out["offline"]["nab_anchor"] = nab_zscore_anchor(ds.nab_dir, a.devdata) if ds.nab_dir else None
        out["offline_wall_seconds"] = round(time.monotonic() - t0, 1)
        log(f"[{ds.name}] offline done in {out['offline_wall_seconds']}s")
    if not a.offline_only:
        from benchmarks.detection_lib.service import run_service

        t0 = time.monotonic()
        out["service"] = _guarded("service", lambda: run_service(ds, times, a.devdata, work, log))
        out["service_wall_seconds"] = round(time.monotonic() - t0, 1)
        log(f"[{ds.name}] service done in {out['service_wall_seconds']}s")
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("model.train").setLevel(logging.INFO)  # one line per epoch: progress while fitting
    work = a.work or Path(tempfile.mkdtemp(prefix="otad-detection-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "args": vars(a) | {"out": str(a.out)}, "datasets": {}}
    results["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in results["args"].items()}
    log(f"work dir {work}; machine {results['machine']}")
    try:
        for name, prepare in preparers(a, work):
            t0 = time.monotonic()
            try:
                ds = prepare()
            except Exception as exc:
                log(f"[{name}] preparing failed: {exc!r}")
                results["datasets"][name] = {"prepare_error": str(exc)}
                continue
            d = run_dataset(a, ds, work)
            d["prepare_and_total_wall_seconds"] = round(time.monotonic() - t0, 1)
            results["datasets"][name] = d
            log(f"[{name}] done in {d['prepare_and_total_wall_seconds']}s")
            a.out.write_text(json.dumps(results, indent=1, default=str) + "\n")  # partial: survives a kill
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["wall_seconds"] = round(time.monotonic() - T0, 1)
    results["table_markdown"] = markdown(results)
    return results


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    results = run(a)
    a.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    walls = ", ".join(
        f"{n} {d.get('prepare_and_total_wall_seconds', '?')}s" for n, d in results["datasets"].items()
    )
    sys.stdout.write(results["table_markdown"])
    sys.stdout.write(f"\nwall time {results['wall_seconds']}s ({walls}); figures in {a.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
