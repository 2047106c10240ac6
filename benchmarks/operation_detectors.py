"""Latency and error-rate members on a labelled simulated workload: detection, calibration and cost.

Fits each member on the first half of the run (in time order), scores the second half in batches of ~500 and
prints, per member and signal, AUROC and average precision against the labels, the calibration on normal rows
(P(p <= a) for a few a), the false-alert rate at p < 1e-3 and µs per row; next to a trivial baseline fitted on
the same half: a per-operation z-score of log duration, and the failure flag.

    .venv/bin/python benchmarks/operation_detectors.py                       # simulates 2 h into a temp dir
    .venv/bin/python benchmarks/operation_detectors.py --data DIR            # DIR/otlp.jsonl + DIR/labels.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from model.detectors.base import Detector, Frame
from model.detectors.latency import LatencyDetector
from model.detectors.operation import ErrorRateDetector
from model.extract import derive
from model.features import FeatureContract
from model.schema import Row

BATCH = 500
ALPHAS = (1e-1, 1e-2, 1e-3, 1e-4)


def simulate(out: Path, duration_s: float, seed: int, anomaly_rate: float) -> None:
    from sim.simulate import FileSink, SimulateConfig
    from sim.simulate import simulate as run

    out.mkdir(parents=True, exist_ok=True)
    config = SimulateConfig(duration_s=duration_s, seed=seed, anomaly_rate=anomaly_rate, speedup=0.0)
    run(config, [FileSink(out / "otlp.jsonl")], out / "labels.csv")


def load(data: Path) -> tuple[list[Row], list[dict[str, object]], dict[str, str]]:
    """Rows in time order, their derived values and the label kind of each anomalous uid."""
    from receiver.jsonfiles import read_rows

    rows = read_rows([data / "otlp.jsonl"], workers=4)
    labels: dict[str, str] = {}
    with open(data / "labels.csv", encoding="utf-8") as handle:
        for rec in csv.DictReader(handle):
            if int(rec.get("is_anomaly", 1)):
                labels[rec["uid"]] = rec.get("kind", "anomaly")
    return rows, [derive(r, None) for r in rows], labels


def frame(rows: list[Row], derived: list[dict[str, object]]) -> Frame:
    n = len(rows)
    return Frame(rows, derived, np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64), FeatureContract())


def auroc_ap(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Rank AUROC (ties averaged) and average precision; NaN scores rank lowest."""
    s = np.nan_to_num(score, nan=-np.inf)
    pos = int(y.sum())
    if pos == 0 or pos == len(y):
        return math.nan, math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    auc = (ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos))
    desc = np.argsort(-s, kind="mergesort")
    hits = np.cumsum(y[desc])
    ap = float(np.sum((hits / np.arange(1, len(y) + 1))[y[desc]]) / pos)
    return float(auc), ap


def run_member(det: Detector, train: Frame, test_rows: list[Row], test_derived: list[dict[str, object]]):
    """(-log10 p per test row, p per test row, µs per row) scoring in batches after fitting on `train`."""
    det.fit(train)
    ps: list[np.ndarray] = []
    t0 = time.perf_counter()
    for start in range(0, len(test_rows), BATCH):
        f = frame(test_rows[start : start + BATCH], test_derived[start : start + BATCH])
        ps.append(det.pvalues(f, det.score_samples(f)))
    us = (time.perf_counter() - t0) / max(len(test_rows), 1) * 1e6
    p = np.concatenate(ps)
    return -np.log10(p), p, us


def baselines(
    train_d: list[dict[str, object]], train_rows: list[Row], test_d, test_rows
) -> dict[str, np.ndarray]:
    """Per-operation z of log duration (mean/sd fitted on the training half) and the failure flag."""
    sums: dict[object, list[float]] = defaultdict(list)
    for r, d in zip(train_rows, train_d, strict=True):
        lat = d.get("latency_ms")
        if isinstance(lat, float) and lat >= 0:
            sums[(r.service, d.get("operation_key"))].append(math.log(lat + 1e-3))
    stats = {k: (float(np.mean(v)), max(float(np.std(v)), 1e-3)) for k, v in sums.items() if len(v) >= 2}
    z = np.full(len(test_rows), np.nan)
    for i, (r, d) in enumerate(zip(test_rows, test_d, strict=True)):
        lat, st = d.get("latency_ms"), stats.get((r.service, d.get("operation_key")))
        if isinstance(lat, float) and lat >= 0 and st is not None:
            z[i] = (math.log(lat + 1e-3) - st[0]) / st[1]
    flag = np.asarray([1.0 if d.get("failed") else 0.0 for d in test_d])
    return {"latency": z, "errors": flag}


def report(name: str, score: np.ndarray, p: np.ndarray | None, y: np.ndarray, sig: np.ndarray, kinds) -> None:
    for s in ("traces", "logs", "all"):
        m = np.ones(len(y), bool) if s == "all" else sig == s
        auc, ap = auroc_ap(score[m], y[m])
        line = f"  {name:<18} {s:<7} n={m.sum():>7} pos={int(y[m].sum()):>5}  AUROC {auc:.3f}  AP {ap:.3f}"
        if p is not None:
            normal = m & ~y
            line += f"  false alerts@1e-3 {np.mean(p[normal] < 1e-3):.2e}"
            line += f"  recall@1e-3 {np.mean(p[m & y] < 1e-3):.3f}"
        print(line)
    cells = []
    for k in sorted(set(kinds[y])):
        m = (kinds == k) | ~y
        auc, _ = auroc_ap(score[m], y[m])
        cells.append(f"{k} {auc:.3f}" + (f"/{np.mean(p[kinds == k] < 1e-3):.2f}" if p is not None else ""))
    print(
        f"  {name:<18} per kind AUROC" + ("/recall@1e-3" if p is not None else "") + ": " + ", ".join(cells)
    )


def calibration(name: str, p: np.ndarray, normal: np.ndarray) -> None:
    pn = p[normal]
    cells = "  ".join(f"P(p<={a:g})={np.mean(pn <= a):.2e}" for a in ALPHAS)
    print(f"  {name:<18} calibration on {normal.sum()} normal rows it applies to: {cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--data", type=Path, help="dir with otlp.jsonl and labels.csv (default: simulate)")
    ap.add_argument("--duration", type=float, default=7200.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--anomaly-rate", type=float, default=0.04)
    args = ap.parse_args()
    data = args.data
    if data is None:
        data = Path(tempfile.mkdtemp(prefix="otad-opbench-"))
        simulate(data, args.duration, args.seed, args.anomaly_rate)
    rows, derived, labels = load(data)
    evaluate(rows, derived, labels)


def evaluate(rows: list[Row], derived: list[dict[str, object]], labels: dict[str, str]) -> None:
    t_mid = (rows[0].time_unix_nano + rows[-1].time_unix_nano) // 2
    cut = int(np.searchsorted(np.asarray([r.time_unix_nano for r in rows]), t_mid))
    train = frame(rows[:cut], derived[:cut])
    test_rows, test_d = rows[cut:], derived[cut:]
    y = np.asarray([r.uid in labels for r in test_rows])
    kinds = np.asarray([labels.get(r.uid, "") for r in test_rows])
    sig = np.asarray([r.signal for r in test_rows])
    print(f"train {cut} rows, test {len(test_rows)} rows ({int(y.sum())} labelled anomalous)")
    base = baselines(derived[:cut], rows[:cut], test_d, test_rows)
    has_lat = np.asarray([isinstance(d.get("latency_ms"), float) for d in test_d])
    for det in (LatencyDetector(), ErrorRateDetector()):
        score, p, us = run_member(det, train, test_rows, test_d)
        print(f"{det.name}: {us:.1f} µs/row scoring ({len(test_rows)} rows in batches of {BATCH})")
        report(det.name, score, p, y, sig, kinds)
        report(f"baseline {det.name}", base[det.name], None, y, sig, kinds)
        applies = has_lat if det.name == "latency" else sig != "metrics"
        calibration(det.name, p, applies & ~y)


if __name__ == "__main__":
    main()
