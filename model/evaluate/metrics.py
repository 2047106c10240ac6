"""Evaluate: detection metrics (AUROC, average precision, the PR curve) in numpy, as scikit-learn defines them.

scikit-learn is not a dependency: `auroc` is the Mann-Whitney statistic with tied scores given average ranks,
and `average_precision` is the step-wise sum `sum_n (R_n - R_{n-1}) P_n` of `average_precision_score`.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

logger = logging.getLogger(__name__)


def _check(y: ArrayLike, s: ArrayLike) -> tuple[NDArray[np.int8], NDArray[np.float64]]:
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


def _one_class(y: NDArray[np.int8], metric: str) -> bool:
    positives = int(y.sum())
    if 0 < positives < len(y):
        return False
    logger.warning(
        "%s is undefined (nan): all %d rows are %s", metric, len(y), "positive" if positives else "negative"
    )
    return True


def auroc(y: ArrayLike, s: ArrayLike) -> float:
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


def pr_curve(
    y: ArrayLike, s: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
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


def average_precision(y: ArrayLike, s: ArrayLike) -> float:
    """Average precision `sum_n (R_n - R_{n-1}) P_n`; nan (with a warning) when `y` has no positives."""
    y, s = _check(y, s)
    if not y.any():
        logger.warning("average precision is undefined (nan): no positive labels among %d rows", len(y))
        return math.nan
    precision, recall, _ = pr_curve(y, s)
    return ap_from_curve(precision, recall)


def ap_from_curve(precision: NDArray[np.float64], recall: NDArray[np.float64]) -> float:
    """Average precision of a curve from `pr_curve`."""
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def counts(y: NDArray[np.int8], predicted: NDArray[np.int8]) -> tuple[float, float, float]:
    """Precision, recall and F1 of `predicted` (0/1, shape (n,)); nan where the ratio is 0/0."""
    tp = int((y & predicted).sum())
    fp, fn = int(predicted.sum()) - tp, int(y.sum()) - tp

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)
