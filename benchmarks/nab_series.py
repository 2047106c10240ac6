"""The series detector on NAB, as the service runs it: fit on the first rows of the interleaved stream, then score
every later row online, in batches, with no look-ahead.

Needs the OTLP/JSON made by `python ../shared/devdata/nab_to_otlp.py ../shared/devdata/raw/nab /tmp/nab`.
Writes `series,time_ms,score,is_anomaly` (flag: p < --alert-p) and prints NAB's scores (nab_score.py, with
--sweep), the calibration on points outside NAB's windows (share of p <= a for a few a), and µs per point.

    python benchmarks/nab_series.py [--nab /tmp/nab] [--fit-rows 5000] [--batch 1000] [--out detections.csv]
                                    [--offsets 0,1,2,3,4,5,6,7] [--set refresh=8 ...]

`--offsets` runs the detector again with each series starting k points later (its first k points, all within
NAB's probationary 15 %, are not sent) and prints the standard score per offset, their mean and SD. A shift of
one point moves every refit and period search by one point, so the spread is the score's noise floor: a change
that moves the mean by less than about one SD is not measured. `--set NAME=VALUE` overrides a SeriesDetector
setting (for measuring, not a second configuration).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.detectors.base import Frame  # noqa: E402
from model.detectors.series import SeriesDetector  # noqa: E402
from model.extract import derive  # noqa: E402
from receiver.jsonfiles import read_rows  # noqa: E402

DEVDATA = Path(__file__).resolve().parents[2] / "shared" / "devdata"


def frame_of(rows: list, derived: list) -> Frame:
    n = len(rows)
    return Frame(rows, derived, np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64), None)  # type: ignore[arg-type]


def run(
    rows: list, derived: list, fit_rows: int, batch: int, det: SeriesDetector
) -> tuple[np.ndarray, np.ndarray, str]:
    """Fit on the first `fit_rows`, score the rest in batches: p-values (NaN for fit rows), the points muted inside
    an episode (they rank by their p-value but do not alert) and the cost per row."""
    det.fit(frame_of(rows[:fit_rows], derived[:fit_rows]))
    p = np.full(len(rows), np.nan)
    muted = np.zeros(len(rows), dtype=bool)
    t0, c0 = time.perf_counter(), time.process_time()
    for a in range(fit_rows, len(rows), batch):
        fr = frame_of(rows[a : a + batch], derived[a : a + batch])
        p[a : a + batch] = det.pvalues(fr, det.score_samples(fr))
        muted[a : a + batch] = det.muted(fr)
    n = max(len(rows) - fit_rows, 1)
    wall, cpu = 1e6 * (time.perf_counter() - t0) / n, 1e6 * (time.process_time() - c0) / n
    return p, muted, f"{cpu:.1f} µs CPU, {wall:.1f} µs wall per scored point"


def calibration(names: list[str], times: np.ndarray, p: np.ndarray, points: Path) -> dict[str, float]:
    """Share of scored points outside every NAB window with p <= a (should be about a when calibrated; pass NaN
    for the points muted inside an episode, whose p-value is their rank, not a fresh test)."""
    in_window = {}
    with points.open() as fh:
        for r in csv.DictReader(fh):
            in_window[(r["series"], int(r["time_ms"]))] = r["in_window"] == "1"
    mask = np.array([not in_window.get((s, int(t)), False) for s, t in zip(names, times, strict=True)])
    q = p[mask & ~np.isnan(p)]
    out: dict[str, float] = {"points": float(len(q))}
    for a in (0.1, 0.01, 1e-3, 1e-4):
        out[f"p<={a:g}"] = float(np.mean(q <= a))
        out[f"count p<{a:g}"] = float(np.sum(q < a))
    return out


def score_detections(nab: Path, out: Path, sweep: bool) -> dict:
    cmd = [
        sys.executable,
        str(DEVDATA / "nab_score.py"),
        str(nab / "windows.csv"),
        str(nab / "points.csv"),
        str(out),
    ]
    return json.loads(
        subprocess.run(
            cmd + (["--sweep"] if sweep else []), check=True, capture_output=True, text=True
        ).stdout
    )


def write_detections(
    out: Path,
    names: list[str],
    times: np.ndarray,
    p: np.ndarray,
    muted: np.ndarray,
    start: int,
    alert_p: float,
) -> None:
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["series", "time_ms", "score", "is_anomaly"])
        for i in range(start, len(names)):
            pi = 1.0 if np.isnan(p[i]) else p[i]
            w.writerow([names[i], int(times[i]), f"{-np.log10(pi):.6g}", int(pi < alert_p and not muted[i])])


def offsets(args: argparse.Namespace, rows: list, derived: list, names: list[str], times: np.ndarray) -> None:
    """NAB's standard score with every series started k points later, for each k: the score's noise floor."""
    seen: dict[str, int] = {}
    index = np.zeros(len(rows), dtype=np.int64)
    for i, name in enumerate(names):
        index[i] = seen[name] = seen.get(name, -1) + 1
    scores = []
    for k in (int(x) for x in args.offsets.split(",")):
        keep = np.flatnonzero(index >= k)
        sub_rows, sub_derived = [rows[i] for i in keep], [derived[i] for i in keep]
        p, muted, _ = run(
            sub_rows,
            sub_derived,
            args.fit_rows,
            args.batch,
            SeriesDetector(alert_p=args.alert_p, **args.settings),
        )
        write_detections(
            args.out, [names[i] for i in keep], times[keep], p, muted, args.fit_rows, args.alert_p
        )
        res = score_detections(args.nab, args.out, sweep=False)["nab"]["standard"]
        scores.append(res["score"])
        print(
            f"offset {k}: standard {res['score']:.2f}, windows {res['scored_windows_detected']}/{res['scored_windows']}"
        )
    if len(scores) > 1:
        sd = np.std(scores, ddof=1)
        print(f"NAB standard over {len(scores)} offsets: mean {np.mean(scores):.2f}, SD {sd:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nab", type=Path, default=Path("/tmp/nab"))
    ap.add_argument("--fit-rows", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--alert-p", type=float, default=1e-3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/nab_series_detections.csv"))
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a SeriesDetector setting"
    )
    ap.add_argument("--offsets", help="comma-separated k: rerun with each series' first k points left out")
    args = ap.parse_args()
    args.settings = {
        k: float(v) if "." in v or "e" in v else int(v) for k, v in (a.split("=", 1) for a in args.set)
    }

    rows = read_rows([args.nab / "metrics_interleaved.jsonl"])
    derived = [derive(r, None) for r in rows]
    filled = sum(d.get("series") is not None and d.get("series_value") is not None for d in derived)
    print(f"rows {len(rows)}, with series and value {filled}")
    names = [str(r.fields.get("unmapped.series")) for r in rows]  # the NAB file stem, for scoring only
    times = np.array([r.time_ms for r in rows], dtype=np.int64)
    if args.offsets:
        offsets(args, rows, derived, names, times)
        return

    p, muted, us = run(
        rows, derived, args.fit_rows, args.batch, SeriesDetector(alert_p=args.alert_p, **args.settings)
    )
    write_detections(args.out, names, times, p, muted, args.fit_rows, args.alert_p)
    print(us)
    fresh = np.where(muted, np.nan, p)
    calib = calibration(
        names[args.fit_rows :], times[args.fit_rows :], fresh[args.fit_rows :], args.nab / "points.csv"
    )
    print("calibration outside windows:", json.dumps(calib))
    res = score_detections(args.nab, args.out, sweep=True)
    print(json.dumps(res, indent=1))
    nab = ", ".join(f"{k} {v['score']:.2f}" for k, v in res["nab"].items())
    swept = ", ".join(f"{k} {v['score']:.2f}" for k, v in res["nab_swept"].items())
    print(f"NAB at p < {args.alert_p:g}: {nab}; swept: {swept}")
    print(
        f"window recall {res['window_recall']:.3f}, fp/1000 {res['fp_per_1000']:.3f}, point AUROC {res['auroc']:.3f}"
    )


if __name__ == "__main__":
    main()
