"""The offline protocol: rows in time order; fit on the first half (`fit_version`, default settings), score the
second half in time order in batches with learning on (as the service would), then every figure per signal,
beside the trivial baselines fitted and scored on the same split."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.detection_lib.baselines import score_baselines
from benchmarks.detection_lib.datasets import Dataset
from benchmarks.detection_lib.metrics import nab_score, summarize
from model.schema import Row

BATCH_ROWS = 1000
Judged = tuple[list[Row], np.ndarray, np.ndarray]  # rows, scores, is_anomaly


def fit_and_score(
    train: list[Row], test: list[Row], log: Callable[[str], None], batch: int = BATCH_ROWS
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], Judged | None]:
    """otad on the split: (scores, is_anomaly) of the test rows in input order, timing/model figures, and the
    training rows as the fitted ensemble judged them out of sample (each scored before it was learned; what the
    service reports from its cold start) as (rows, scores, is_anomaly).
    """
    from model.calibration import pvalue_to_score
    from model.version import fit_version

    t0 = time.monotonic()
    mv = fit_version(train)
    fit_s = time.monotonic() - t0
    log(f"  fitted {mv.version} on {len(train)} rows in {fit_s:.0f}s; scoring {len(test)} rows")
    judged = None
    if mv.judged is not None:
        frame, fitted = mv.judged
        judged = (frame.rows, pvalue_to_score(fitted.combined), fitted.alert)
    t1 = time.monotonic()
    scores, flags, _ = score_online(mv, test, log, batch)
    meta = {
        "model_version": mv.version,
        "fit_seconds": round(fit_s, 1),
        "score_seconds": round(time.monotonic() - t1, 1),
        "best_epoch": mv.meta.get("best_epoch"),
        "train_seconds": mv.meta.get("train_seconds"),
        "reference_rows": mv.meta.get("reference_rows"),
    }
    return scores, flags, meta, judged


def score_online(
    mv: Any, test: list[Row], log: Callable[[str], None], batch: int = BATCH_ROWS
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Score `test` in time order in batches with learning on, as the service does: (scores, is_anomaly, each
    member's p-values), in input order."""
    from model.scorer import Scorer

    scorer = Scorer(mv, learn=True, threads=2)
    scores, flags = np.zeros(len(test)), np.zeros(len(test), dtype=bool)
    members: dict[str, list[np.ndarray]] = {}
    t1, next_report = time.monotonic(), 0.25
    for start in range(0, len(test), batch):
        out = scorer.score(test[start : start + batch])
        scores[start : start + batch] = out.scores
        flags[start : start + batch] = out.is_anomaly
        for name, p in out.members.items():
            members.setdefault(name, []).append(p)
        if (start + batch) / len(test) >= next_report:
            log(f"  scored {min(start + batch, len(test))}/{len(test)} ({time.monotonic() - t1:.0f}s)")
            next_report += 0.25
    return scores, flags, {name: np.concatenate(parts) for name, parts in members.items()}


def evaluate_split(
    ds: Dataset,
    test: list[Row],
    otad_scores: np.ndarray,
    otad_flags: np.ndarray,
    baselines: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Per signal ('all' and each signal present): otad's figures and each baseline's AUROC/AP."""
    keys = [ds.row_key(r) for r in test]
    y = np.asarray([k in ds.labels for k in keys], dtype=bool)
    kinds = [ds.labels.get(k, "") for k in keys] if ds.has_kinds else None
    signals = np.asarray([r.signal for r in test])
    out: dict[str, Any] = {}
    for sig in ["all", *sorted(set(signals.tolist()))]:
        m = np.ones(len(test), dtype=bool) if sig == "all" else signals == sig
        sig_kinds = [k for k, keep in zip(kinds, m, strict=True) if keep] if kinds is not None else None
        out[sig] = {
            "otad": summarize(y[m], otad_scores[m], otad_flags[m], sig_kinds),
            "baselines": {n: summarize(y[m], s[m], None, None) for n, s in baselines.items()},
        }
    return out


def write_nab_detections(
    path: Path, ds: Dataset, rows: list[Row], scores: np.ndarray, flags: np.ndarray
) -> None:
    """The detections CSV nab_score.py reads (series from the row's fields, read here for scoring only)."""
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["series", "time_ms", "score", "is_anomaly"])
        for r, s, f in zip(rows, scores, flags, strict=True):
            w.writerow([ds.nab_series(r), r.time_ms, f"{float(s):.6g}", int(f)])


def nab_figures(
    ds: Dataset,
    devdata: Path,
    work: Path,
    test: list[Row],
    scores: np.ndarray,
    flags: np.ndarray,
    rolling_z: np.ndarray,
    judged: Judged | None = None,
) -> dict[str, Any]:
    """NAB scores of otad's second-half detections and of the rolling z-score (|z| > 4) on the same half; with
    `judged` (the first half as the fitted model judged it out of sample), also of the whole stream, NAB's own
    protocol (every point scored in time order, the first 15 % of each series probationary)."""
    assert ds.nab_dir is not None
    otad_csv = work / f"{ds.name}-otad-detections.csv"
    write_nab_detections(otad_csv, ds, test, scores, flags)
    whole: dict[str, Any] | None = None
    if judged is not None:
        whole_csv = work / f"{ds.name}-otad-whole-detections.csv"
        rows, s, f = judged
        write_nab_detections(
            whole_csv, ds, [*rows, *test], np.concatenate([s, scores]), np.concatenate([f, flags])
        )
        whole = nab_score(ds.nab_dir, devdata, whole_csv, sweep=True)
    z_csv = work / f"{ds.name}-rolling_z-detections.csv"
    write_nab_detections(z_csv, ds, test, rolling_z, rolling_z > 4.0)
    return {
        "otad": nab_score(ds.nab_dir, devdata, otad_csv, sweep=True),
        "rolling_z": nab_score(ds.nab_dir, devdata, z_csv, sweep=True),
        "otad_whole_stream": whole,
        "protocol": "offline: only the second half is scored; first-half points count as unflagged",
        "protocol_whole_stream": "NAB's: the first half as judged out of sample while fitting, then the second",
    }


def plot_split(
    path: Path, ds: Dataset, test: list[Row], scores: np.ndarray, flags: np.ndarray, baselines: dict
) -> None:
    """One PNG of precision-recall curves over all scored rows: otad, its operating point, every baseline."""
    from model.evaluate.metrics import pr_curve
    from model.evaluate.reports import plot_pr

    y = np.asarray([ds.row_key(r) in ds.labels for r in test], dtype=bool)
    if not y.any():
        return
    curves = {"otad": pr_curve(y, scores)[:2]}
    curves.update({name: pr_curve(y, s)[:2] for name, s in baselines.items() if np.ptp(s) > 0})
    tp = int((flags & y).sum())
    point = (tp / int(flags.sum()), tp / int(y.sum())) if flags.any() else None
    plot_pr(curves, path, operating_point=point, title=f"{ds.name}: precision-recall, second half")


def run_offline(
    ds: Dataset,
    rows: list[Row],
    devdata: Path,
    work: Path,
    log: Callable[[str], None],
    plot: Path | None = None,
) -> dict[str, Any]:
    """The whole offline protocol on one dataset's rows (`read_rows`: sorted by time); with `plot`, a PNG of
    its precision-recall curves in that directory."""
    t0 = time.monotonic()
    half = len(rows) // 2
    train, test = rows[:half], rows[half:]
    log(f"[{ds.name}] offline: {len(rows)} rows, fit on {len(train)}, score {len(test)}")
    scores, flags, meta, judged = fit_and_score(train, test, log)
    t1 = time.monotonic()
    baselines, notes = score_baselines(train, test)
    log(f"  baselines in {time.monotonic() - t1:.0f}s")
    result: dict[str, Any] = {
        "rows": len(rows),
        "train_rows": len(train),
        "test_rows": len(test),
        "cut_unix_nano": test[0].time_unix_nano if test else None,
        "test_hours": round((test[-1].time_unix_nano - test[0].time_unix_nano) / 3.6e12, 3) if test else 0,
        "otad_model": meta,
        "baseline_notes": notes,
        "signals": evaluate_split(ds, test, scores, flags, baselines),
    }
    if plot is not None:
        plot.mkdir(parents=True, exist_ok=True)
        plot_split(plot / f"{ds.name}-pr.png", ds, test, scores, flags, baselines)
        log(f"  precision-recall curves in {plot / (ds.name + '-pr.png')}")
    if ds.family == "nab":
        result["nab"] = nab_figures(ds, devdata, work, test, scores, flags, baselines["rolling_z"], judged)
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    return result
