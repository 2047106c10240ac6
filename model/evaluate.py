"""Evaluate: detection quality of a score file against labels (AUROC, AP, PR curve, baselines).

Metrics are written with numpy only (scikit-learn is not a dependency) and follow scikit-learn's
definitions: `auroc` is the Mann-Whitney statistic with tied scores given average ranks, and
`average_precision` is the step-wise sum `sum_n (R_n - R_{n-1}) P_n` of `average_precision_score`.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

SCORE_COLUMNS = ("uid", "signal", "time_unix_nano", "service", "score", "raw_score", "threshold", "is_anomaly")
LABEL_COLUMNS = ("uid", "signal", "kind", "time_unix_nano", "service")
_MAX_Z = 1e6  # caps |z| when a series was constant before the split, so the CSV stays readable


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


# -- metrics --------------------------------------------------------------------------------------------


def _check(y: NDArray, s: NDArray) -> tuple[NDArray[np.int8], NDArray[np.float64]]:
    y, s = np.asarray(y), np.asarray(s, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d of equal length, got {y.shape} and {s.shape}")
    if len(y) == 0:
        raise ValueError("no rows to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite ({int((~np.isfinite(s)).sum())} are NaN or infinite)")
    return y.astype(np.int8), s


def _one_class(y: NDArray, metric: str) -> bool:
    positives = int(y.sum())
    if 0 < positives < len(y):
        return False
    logger.warning("%s is undefined (nan): all %d rows are %s", metric, len(y),
                   "positive" if positives else "negative")
    return True


def auroc(y: NDArray, s: NDArray) -> float:
    """Area under the ROC curve; nan (with a warning) when `y` holds one class only.

    Args:
        y: labels, shape (n,), 0/1.
        s: scores, shape (n,), higher = more anomalous.
    """
    y, s = _check(y, s)
    if _one_class(y, "AUROC"):
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # tied scores share the mean of the 1-based ranks they span
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    p = int(y.sum())
    n = len(y) - p
    return float((ranks[y == 1].sum() - p * (p + 1) / 2.0) / (p * n))


def pr_curve(y: NDArray, s: NDArray) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Precision-recall curve, as scikit-learn's `precision_recall_curve`.

    Returns:
        (precision, recall, thresholds): `thresholds` are the distinct scores in increasing order, shape (k,);
        `precision[i]`/`recall[i]` hold for predicting `s >= thresholds[i]`; both have shape (k + 1,), the
        last point being (precision 1, recall 0). Recall is non-increasing. Recall is all ones (with a
        warning) when there are no positives.
    """
    y, s = _check(y, s)
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]
    tps = np.cumsum(y_sorted)[last_of_tie].astype(np.float64)
    predicted = last_of_tie + 1.0
    precision = tps / predicted
    if len(tps) and tps[-1] > 0:
        recall = tps / tps[-1]
    else:
        logger.warning("recall is undefined: no positive labels among %d rows", len(y))
        recall = np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], s_sorted[last_of_tie][::-1]


def average_precision(y: NDArray, s: NDArray) -> float:
    """Average precision `sum_n (R_n - R_{n-1}) P_n`; nan (with a warning) when `y` has no positives."""
    y, s = _check(y, s)
    if not y.any():
        logger.warning("average precision is undefined (nan): no positive labels among %d rows", len(y))
        return math.nan
    precision, recall, _ = pr_curve(y, s)
    return _ap_from_curve(precision, recall)


def _ap_from_curve(precision: NDArray, recall: NDArray) -> float:
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def _counts(y: NDArray, predicted: NDArray) -> tuple[float, float, float]:
    """Precision, recall and F1 of `predicted`; nan where the ratio is 0/0."""
    tp = int((y & predicted).sum())
    fp, fn = int(predicted.sum()) - tp, int(y.sum()) - tp

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


# -- loading and joining --------------------------------------------------------------------------------


def _read_csv(path: str | Path, columns: tuple[str, ...]) -> Iterable[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected header {','.join(columns)}")
        yield from enumerate(reader, start=2)


def load_scores(path: str | Path) -> list[dict]:
    """Read a score file (DESIGN.md §2) into dicts with typed values.

    Raises:
        ValueError: a column is missing or a value does not parse; the message names the file and line.
    """
    rows = []
    for line, raw in _read_csv(path, SCORE_COLUMNS):
        try:
            row = {"uid": raw["uid"], "signal": raw["signal"], "service": raw["service"],
                   "time_unix_nano": int(raw["time_unix_nano"]), "score": float(raw["score"]),
                   "raw_score": float(raw["raw_score"]), "threshold": float(raw["threshold"]),
                   "is_anomaly": int(raw["is_anomaly"])}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{line}: {exc}") from exc
        if row["is_anomaly"] not in (0, 1):
            raise ValueError(f"{path}:{line}: is_anomaly must be 0 or 1, got {row['is_anomaly']}")
        rows.append(row)
    return rows


def _load_label_rows(path: str | Path) -> dict[str, tuple[str, int | None]]:
    labels: dict[str, tuple[str, int | None]] = {}
    for line, raw in _read_csv(path, LABEL_COLUMNS):
        kind = raw["kind"] or "unknown"
        t = raw["time_unix_nano"]
        try:
            time_ns = int(t) if t else None
        except ValueError as exc:
            raise ValueError(f"{path}:{line}: {exc}") from exc
        if raw["uid"] in labels and labels[raw["uid"]][0] != kind:
            raise ValueError(f"{path}:{line}: uid {raw['uid']} is labelled both {labels[raw['uid']][0]} and {kind}")
        labels[raw["uid"]] = (kind, time_ns)
    return labels


def load_labels(path: str | Path) -> dict[str, str]:
    """Read a labels CSV into uid -> kind (an empty kind reads as "unknown")."""
    return {uid: kind for uid, (kind, _) in _load_label_rows(path).items()}


def join(scores_path: str | Path, labels_path: str | Path, *, since_ns: int | None = None) -> Joined:
    """Join a score file with labels on uid, keeping rows with `time_unix_nano >= since_ns`."""
    rows = load_scores(scores_path)
    labels = _load_label_rows(labels_path)
    scored = {r["uid"] for r in rows}
    window = [r for r in rows if since_ns is None or r["time_unix_nano"] >= since_ns]
    if len({r["uid"] for r in window}) != len(window):
        logger.warning("%s: %d duplicate uid(s); each row is evaluated", scores_path,
                       len(window) - len({r["uid"] for r in window}))
    unscored: dict[str, int] = defaultdict(int)
    for uid, (kind, time_ns) in labels.items():
        if uid not in scored and (since_ns is None or time_ns is None or time_ns >= since_ns):
            unscored[kind] += 1
    if unscored:
        logger.warning("%d labelled record(s) are not in %s; they count as missed in recall by kind",
                       sum(unscored.values()), scores_path)
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


# -- the report -----------------------------------------------------------------------------------------


def report(joined: Joined) -> Report:
    """Compute every metric of a `Report` from joined rows."""
    y, s, pred = joined.y, joined.score, joined.predicted
    if len(y) == 0:
        raise ValueError("no scored rows in the evaluation window (check --since)")
    precision, recall, f1 = _counts(y, pred)
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
        sp, sr, _ = _counts(y[m], pred[m])
        by_signal[signal] = {"n": float(m.sum()), "positives": float(y[m].sum()), "auroc": auroc(y[m], s[m]),
                             "ap": average_precision(y[m], s[m]), "precision": sp, "recall": sr}
    return Report(n=len(y), positives=int(y.sum()), auroc=auroc(y, s), average_precision=average_precision(y, s),
                  threshold=joined.threshold, precision=precision, recall=recall, f1=f1, best_f1=best_f1,
                  best_f1_threshold=best_t, recall_by_kind=by_kind, by_signal=by_signal,
                  unscored_labels=sum(joined.unscored_by_kind.values()))


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
    for label, attr in (("AUROC", "auroc"), ("average precision", "average_precision"),
                        ("threshold (0-100)", "threshold"), ("precision @ threshold", "precision"),
                        ("recall @ threshold", "recall"), ("F1 @ threshold", "f1"), ("best F1", "best_f1"),
                        ("best F1 at score >=", "best_f1_threshold")):
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
    out += ["", f"{'per signal (otad)':<24}" + "".join(f"{c:>10}" for c in
                                                       ("n", "positives", "AUROC", "AP", "precision", "recall"))]
    for signal, m in report.by_signal.items():
        cells = [str(int(m["n"])), str(int(m["positives"]))] + [_fmt(m[k]) for k in
                                                               ("auroc", "ap", "precision", "recall")]
        out.append(f"{signal:<24}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(out) + "\n"


def plot_pr(curves: Mapping[str, tuple[NDArray, NDArray]], path: str | Path, *,
            operating_point: tuple[float, float] | None = None) -> None:
    """Draw PR curves on one PNG, with AP in the legend.

    Args:
        curves: name -> (precision, recall) as returned by `pr_curve`.
        path: the PNG to write.
        operating_point: otad's (precision, recall) at its own threshold, drawn as a marker.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas is used for PNG

    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for name, (precision, recall) in curves.items():
        ax.step(recall, precision, where="post", label=f"{name} (AP {_fmt(_ap_from_curve(precision, recall))})")
    if operating_point is not None and not any(math.isnan(v) for v in operating_point):
        ax.plot(operating_point[1], operating_point[0], "o", color="black", label="otad at its threshold")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Precision-recall")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, format="png")


# -- baselines and the score file -----------------------------------------------------------------------


def _numeric(record: Mapping) -> float | None:
    if record["signal"] == "metrics":
        v = record.get("value")
        return float(v) if v is not None else None
    d = record.get("duration_ms")
    return math.log1p(max(float(d), 0.0)) if d is not None else None


def zscore_baseline(records: Iterable[Mapping], *, since_ns: int | None = None) -> dict[str, float]:
    """Per-series robust |z| of log1p(duration_ms), or of `value` for metric rows.

    A series is (service, signal, series): `series` is the metric's series key when given. Median and MAD are
    fitted on records with `time_unix_nano < since_ns` (the first half by time when `since_ns` is None); every
    record is scored. Records without a number, or in a series with fewer than 3 fitted values, score 0.
    """
    records = list(records)
    if since_ns is None and records:
        times = sorted(r["time_unix_nano"] for r in records)
        since_ns = times[len(times) // 2]
    fit: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        x = _numeric(r)
        if x is not None and r["time_unix_nano"] < since_ns:
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


def baseline_score_rows(records: Iterable[Mapping], raw: Mapping[str, float], *,
                        contamination: float = 0.01) -> list[dict]:
    """Score-file rows for a baseline: 0-100 is the percentile rank of the raw score among all records."""
    if not 0 < contamination < 1:
        raise ValueError(f"contamination must be in (0, 1), got {contamination}")
    records = list(records)
    values = np.array([raw[r["uid"]] for r in records], dtype=np.float64)
    ranked = np.sort(values)
    pct = 100.0 * np.searchsorted(ranked, values, side="right") / max(len(values), 1)
    threshold = 100.0 * (1.0 - contamination)
    return [{"uid": r["uid"], "signal": r["signal"], "time_unix_nano": r["time_unix_nano"],
             "service": r["service"], "score": float(p), "raw_score": float(v), "threshold": threshold,
             "is_anomaly": int(p >= threshold)} for r, p, v in zip(records, pct, values, strict=True)]


def write_score_file(path: str | Path, rows: Iterable[Mapping]) -> int:
    """Write a score file (DESIGN.md §2), floats with 4 decimals. Returns the number of rows written."""
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SCORE_COLUMNS)
        for r in rows:
            writer.writerow([r["uid"], r["signal"], int(r["time_unix_nano"]), r["service"],
                             f"{float(r['score']):.4f}", f"{float(r['raw_score']):.4f}",
                             f"{float(r['threshold']):.4f}", int(r["is_anomaly"])])
            n += 1
    return n
