"""Figures: threshold-free (AUROC, AP), at a threshold (precision, recall, F1), kinds flagged, and NAB's
scoring by the devdata's nab_score.py (run as a script: it is the reference implementation, not ours)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

NAB_PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def threshold_free(y: np.ndarray, s: np.ndarray) -> dict[str, float | None]:
    """AUROC and average precision; None when undefined (one class) or uninformative (a constant score)."""
    if len(y) == 0 or y.all() or not y.any() or np.ptp(s) == 0:
        return {"auroc": None, "ap": None}
    s = np.nan_to_num(s.astype(np.float64), nan=0.0, posinf=1e12, neginf=-1e12)
    return {"auroc": _round(roc_auc_score(y, s)), "ap": _round(average_precision_score(y, s))}


def at_threshold(y: np.ndarray, flag: np.ndarray) -> dict[str, float | int | None]:
    """Precision, recall, F1 of boolean flags, the flag count and the flag rate among normal rows."""
    tp = int((y & flag).sum())
    fp = int((~y & flag).sum())
    fn = int((y & ~flag).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall
        else (0.0 if precision is not None and recall is not None else None)
    )
    normal = int((~y).sum())
    return {
        "precision": _round(precision),
        "recall": _round(recall),
        "f1": _round(f1),
        "flagged": int(flag.sum()),
        "fpr_normal": _round(fp / normal if normal else None, 6),
    }


def kinds_flagged(kinds: Sequence[str], flag: np.ndarray) -> dict[str, Any]:
    """Kinds (labelled rows only; "" = normal) with at least one flagged row, of those present."""
    present: dict[str, list[int]] = {}
    for k, f in zip(kinds, flag, strict=True):
        if k:
            c = present.setdefault(k, [0, 0])
            c[0] += 1
            c[1] += int(f)
    caught = sorted(k for k, (_, hit) in present.items() if hit)
    return {
        "kinds_present": len(present),
        "kinds_flagged": len(caught),
        "per_kind_recall": {k: f"{hit}/{n}" for k, (n, hit) in sorted(present.items())},
    }


def summarize(
    y: np.ndarray, score: np.ndarray, flag: np.ndarray | None, kinds: Sequence[str] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": int(len(y)), "labelled": int(y.sum()), **threshold_free(y, score)}
    if flag is not None:
        out.update(at_threshold(y, flag))
        if kinds is not None:
            out.update(kinds_flagged(kinds, flag))
    return out


def nab_score(nab_dir: Path, devdata: Path, detections: Path, sweep: bool = False) -> dict[str, Any]:
    """nab_score.py on a detections CSV or events JSONL: NAB scores, window recall, fp/1000, point AUROC."""
    cmd = [
        sys.executable,
        str(devdata / "nab_score.py"),
        str(nab_dir / "windows.csv"),
        str(nab_dir / "points.csv"),
        str(detections),
    ]
    return _nab_summary(_run_json(cmd + (["--sweep"] if sweep else [])))


def nab_zscore_anchor(nab_dir: Path, devdata: Path) -> dict[str, Any]:
    """nab_score.py's own rolling z-score anchor on the whole stream (NAB's protocol, not the half split)."""
    cmd = [
        sys.executable,
        str(devdata / "nab_score.py"),
        str(nab_dir / "windows.csv"),
        str(nab_dir / "points.csv"),
        "--baseline",
        "zscore",
    ]
    return _nab_summary(_run_json(cmd))


def _run_json(cmd: list[str]) -> dict[str, Any]:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def _nab_summary(res: dict[str, Any]) -> dict[str, Any]:
    out = {p: res["nab"][p]["score"] for p in NAB_PROFILES}
    out.update(
        {
            "window_recall": res.get("window_recall"),
            "windows_detected": res.get("windows_detected"),
            "windows": res.get("windows"),
            "fp_per_1000": res.get("fp_per_1000"),
            "point_auroc_all_points": res.get("auroc"),
            "detections_matched": res.get("detections_matched"),
            "detections_unmatched": res.get("detections_unmatched"),
            "detections_unresolved": res.get("detections_unresolved"),
        }
    )
    if "nab_swept" in res:
        out["swept"] = {p: res["nab_swept"][p]["score"] for p in NAB_PROFILES}
    return out
