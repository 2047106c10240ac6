"""Evaluate: simple baselines to report beside otad (a per-series robust z-score, random scores)."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_MAX_Z = 1e6  # caps |z| when a series was constant before the split, so the CSV stays readable


def _numeric(record: Mapping[str, Any]) -> float | None:
    if record["signal"] == "metrics":
        v = record.get("value")
        return float(v) if v is not None else None
    d = record.get("duration_ms")
    return math.log1p(max(float(d), 0.0)) if d is not None else None


def zscore_baseline(records: Iterable[Mapping[str, Any]], *, since_ns: int | None = None) -> dict[str, float]:
    """Per-series robust |z| of log1p(duration_ms), or of `value` for metric rows.

    A series is (service, signal, series): `series` is the metric's series key when given. Median and MAD are
    fitted on records with `time_unix_nano < since_ns` (the first half by time when `since_ns` is None); every
    record is scored. Records without a number, or in a series with fewer than 3 fitted values, score 0.
    """
    records = list(records)
    if since_ns is None and records:
        times = sorted(r["time_unix_nano"] for r in records)
        since_ns = times[len(times) // 2]
    fit: dict[tuple[Hashable, ...], list[float]] = defaultdict(list)
    for r in records:
        x = _numeric(r)
        if x is not None and since_ns is not None and r["time_unix_nano"] < since_ns:
            fit[(r["service"], r["signal"], r.get("series"))].append(x)
    params = {}
    for key, xs in fit.items():
        if len(xs) >= 3:
            a = np.asarray(xs)
            med = float(np.median(a))
            scale = 1.4826 * float(np.median(np.abs(a - med))) or 1.2533 * float(np.mean(np.abs(a - med)))
            params[key] = (med, scale or max(abs(med), 1.0) / _MAX_Z)
    scores, unfitted = {}, 0
    for r in records:
        x, p = _numeric(r), params.get((r["service"], r["signal"], r.get("series")))
        if x is not None and p is None:
            unfitted += 1
        scores[r["uid"]] = min(abs(x - p[0]) / p[1], _MAX_Z) if x is not None and p is not None else 0.0
    if unfitted:
        logger.info("z-score baseline: %d record(s) in series with < 3 pre-split values scored 0", unfitted)
    return scores


def random_baseline(uids: Iterable[str], seed: int = 0) -> dict[str, float]:
    """Uniform random scores in [0, 100): the chance line for AUROC (0.5) and AP (the positive rate)."""
    uids = list(uids)
    return dict(zip(uids, np.random.default_rng(seed).uniform(0.0, 100.0, len(uids)).tolist(), strict=True))


def baseline_score_rows(
    records: Iterable[Mapping[str, Any]], raw: Mapping[str, float], *, contamination: float = 0.01
) -> list[dict[str, Any]]:
    """Score-file rows for a baseline: 0-100 is the percentile rank of the raw score among all records."""
    if not 0 < contamination < 1:
        raise ValueError(f"contamination must be in (0, 1), got {contamination}")
    records = list(records)
    values = np.array([raw[r["uid"]] for r in records], dtype=np.float64)
    ranked = np.sort(values)
    pct = 100.0 * np.searchsorted(ranked, values, side="right") / max(len(values), 1)
    threshold = 100.0 * (1.0 - contamination)
    return [
        {
            "uid": r["uid"],
            "signal": r["signal"],
            "time_unix_nano": r["time_unix_nano"],
            "service": r["service"],
            "score": float(p),
            "raw_score": float(v),
            "threshold": threshold,
            "is_anomaly": int(p >= threshold),
        }
        for r, p, v in zip(records, pct, values, strict=True)
    ]
