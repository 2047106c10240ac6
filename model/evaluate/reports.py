"""Evaluate: join a score file with labels and report detection quality (tables and a PR plot)."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.evaluate.metrics import ap_from_curve, auroc, average_precision, counts, pr_curve
from model.evaluate.scorefile import load_label_rows, load_scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """Detection metrics for one score file. Precision, recall and F1 are at otad's own threshold."""

    n: int
    positives: int
    auroc: float
    average_precision: float
    threshold: float
    precision: float
    recall: float
    f1: float
    best_f1: float
    best_f1_threshold: float
    recall_by_kind: dict[str, tuple[int, int]]  # kind -> (caught, total); unscored labels count as missed
    by_signal: dict[str, dict[str, float]]  # signal -> n, positives, auroc, ap, precision, recall
    unscored_labels: int


@dataclass(frozen=True)
class Joined:
    """Scored rows in the evaluation window joined with labels, as parallel arrays of shape (n,)."""

    y: NDArray[np.int8]  # 1 = labelled anomalous
    score: NDArray[np.float64]  # 0-100
    predicted: NDArray[np.int8]  # the is_anomaly column
    signal: NDArray[np.str_]
    kind: NDArray[np.str_]  # label kind, "" for normal rows
    threshold: float
    unscored_by_kind: dict[str, int]  # labels in the window whose uid is not in the score file


def join(scores_path: str | Path, labels_path: str | Path, *, since_ns: int | None = None) -> Joined:
    """Join a score file with labels on uid, keeping rows with `time_unix_nano >= since_ns`."""
    rows = load_scores(scores_path)
    labels = load_label_rows(labels_path)
    scored = {r["uid"] for r in rows}
    window = [r for r in rows if since_ns is None or r["time_unix_nano"] >= since_ns]
    if len({r["uid"] for r in window}) != len(window):
        logger.warning(
            "%s: %d duplicate uid(s); each row is evaluated",
            scores_path,
            len(window) - len({r["uid"] for r in window}),
        )
    unscored: dict[str, int] = defaultdict(int)
    for uid, (kind, time_ns) in labels.items():
        if uid not in scored and (since_ns is None or time_ns is None or time_ns >= since_ns):
            unscored[kind] += 1
    if unscored:
        logger.warning(
            "%d labelled record(s) are not in %s; they count as missed in recall by kind",
            sum(unscored.values()),
            scores_path,
        )
    thresholds = sorted({r["threshold"] for r in window})
    if len(thresholds) > 1:
        logger.warning("%s: %d distinct thresholds; reporting their median", scores_path, len(thresholds))
    kinds = [labels[r["uid"]][0] if r["uid"] in labels else "" for r in window]
    return Joined(
        y=np.array([k != "" for k in kinds], dtype=np.int8),
        score=np.array([r["score"] for r in window], dtype=np.float64),
        predicted=np.array([r["is_anomaly"] for r in window], dtype=np.int8),
        signal=np.array([r["signal"] for r in window], dtype=np.str_),
        kind=np.array(kinds, dtype=np.str_),
        threshold=float(np.median(thresholds)) if thresholds else math.nan,
        unscored_by_kind=dict(unscored),
    )


def report(joined: Joined) -> Report:
    """Compute every metric of a `Report` from joined rows."""
    y, s, pred = joined.y, joined.score, joined.predicted
    if len(y) == 0:
        raise ValueError("no scored rows in the evaluation window (check --since)")
    precision, recall, f1 = counts(y, pred)
    best_f1 = best_t = math.nan
    if y.any():
        p_curve, r_curve, t_curve = pr_curve(y, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1s = np.nan_to_num(2 * p_curve[:-1] * r_curve[:-1] / (p_curve[:-1] + r_curve[:-1]))
        i = int(np.argmax(f1s))
        best_f1, best_t = float(f1s[i]), float(t_curve[i])
    by_kind = {}
    for kind in sorted(set(joined.kind.tolist()) - {""} | set(joined.unscored_by_kind)):
        mask = joined.kind == kind
        by_kind[kind] = (int(pred[mask].sum()), int(mask.sum()) + joined.unscored_by_kind.get(kind, 0))
    by_signal = {}
    for signal in sorted(set(joined.signal.tolist())):
        m = joined.signal == signal
        sp, sr, _ = counts(y[m], pred[m])
        by_signal[signal] = {
            "n": float(m.sum()),
            "positives": float(y[m].sum()),
            "auroc": auroc(y[m], s[m]),
            "ap": average_precision(y[m], s[m]),
            "precision": sp,
            "recall": sr,
        }
    return Report(
        n=len(y),
        positives=int(y.sum()),
        auroc=auroc(y, s),
        average_precision=average_precision(y, s),
        threshold=joined.threshold,
        precision=precision,
        recall=recall,
        f1=f1,
        best_f1=best_f1,
        best_f1_threshold=best_t,
        recall_by_kind=by_kind,
        by_signal=by_signal,
        unscored_labels=sum(joined.unscored_by_kind.values()),
    )


def evaluate(scores_path: str | Path, labels_path: str | Path, *, since_ns: int | None = None) -> Report:
    """Evaluate a score file against labels; see `join` for the window and `Report` for the metrics."""
    return report(join(scores_path, labels_path, since_ns=since_ns))


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.{digits}f}"


def format_report(report: Report, baselines: Mapping[str, Report] | None = None) -> str:
    """Plain-text tables: overall metrics (otad beside each baseline), recall by kind, and per signal."""
    reports = {"otad": report, **(baselines or {})}
    width = max(10, *(len(name) + 2 for name in reports))

    def line(label: str, cells: Iterable[str]) -> str:
        return f"{label:<24}" + "".join(f"{c:>{width}}" for c in cells)

    out = [line("metric", reports), line("-" * 24, ("-" * (width - 2) for _ in reports))]
    out.append(line("rows", (str(r.n) for r in reports.values())))
    out.append(line("positives", (str(r.positives) for r in reports.values())))
    out.append(line("labelled, not scored", (str(r.unscored_labels) for r in reports.values())))
    for label, attr in (
        ("AUROC", "auroc"),
        ("average precision", "average_precision"),
        ("threshold (0-100)", "threshold"),
        ("precision @ threshold", "precision"),
        ("recall @ threshold", "recall"),
        ("F1 @ threshold", "f1"),
        ("best F1", "best_f1"),
        ("best F1 at score >=", "best_f1_threshold"),
    ):
        out.append(line(label, (_fmt(getattr(r, attr)) for r in reports.values())))
    kinds = sorted({k for r in reports.values() for k in r.recall_by_kind})
    if kinds:
        out += ["", line("recall by kind", reports)]
        for kind in kinds:
            cells = []
            for r in reports.values():
                caught, total = r.recall_by_kind.get(kind, (0, 0))
                cells.append(f"{caught}/{total}" if total else "-")
            out.append(line(kind, cells))
    out += [
        "",
        f"{'per signal (otad)':<24}"
        + "".join(f"{c:>10}" for c in ("n", "positives", "AUROC", "AP", "precision", "recall")),
    ]
    for signal, m in report.by_signal.items():
        cells = [str(int(m["n"])), str(int(m["positives"]))] + [
            _fmt(m[k]) for k in ("auroc", "ap", "precision", "recall")
        ]
        out.append(f"{signal:<24}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(out) + "\n"


def plot_pr(
    curves: Mapping[str, tuple[NDArray[np.float64], NDArray[np.float64]]],
    path: str | Path,
    *,
    operating_point: tuple[float, float] | None = None,
    title: str = "Precision-recall",
) -> None:
    """Draw PR curves on one PNG, with AP in the legend.

    Args:
        curves: name -> (precision, recall) as returned by `pr_curve`.
        path: the PNG to write.
        operating_point: otad's (precision, recall) at its own threshold, drawn as a marker.
        title: the chart's title.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas is used for PNG

    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for name, (precision, recall) in curves.items():
        ax.step(
            recall, precision, where="post", label=f"{name} (AP {_fmt(ap_from_curve(precision, recall))})"
        )
    if operating_point is not None and not any(math.isnan(v) for v in operating_point):
        ax.plot(operating_point[1], operating_point[0], "o", color="black", label="otad at its threshold")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, format="png")
