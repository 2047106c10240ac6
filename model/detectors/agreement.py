"""Member weights from agreement: how often each member's findings on recent traffic are shared by the others.

Every member is calibrated, so calibration cannot say which member to trust on a given stream. Agreement can:
a member whose small p-values come where the other members also see something carries evidence about the
same anomalies, while one whose small p-values fall on rows no other member finds unusual is, on this
stream, measuring its own noise at the calibrated rate (ordinary requests in an operation's 1-in-1,000
latency tail, say). The witnesses are the members that read other inputs (another `view`): two members
reading the same features agree on their shared noise too. A member's weight is the share of its own
alert-level rows (p <= 0.01) that another view also calls alert-level, over the signal's latest rows, shrunk
towards the rank correlation of its evidence with theirs (a leave-one-out pseudo ground truth, as in SELECT
and pyod's LSCP) while it has few such rows, and floored so that no member is ever silenced.

Agreement cannot tell a member that alone is right from one that alone is noisy. Calibration can: a calibrated
member makes 1 % of its rows findings by chance, so when it makes far more, most of them are not chance (one
minus the chance share, the share of true findings as an FDR estimate reads it). A member's weight is the
larger of the two estimates.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import spearmanr

AGREE_ROWS = 5_000  # latest rows of a signal the weights are measured on
AGREE_MIN_ROWS = 200  # fewer rows judged by a member and another one: the member keeps weight 1
AGREE_FLOOR = 0.05  # a member no other follows still counts, at this weight: its extreme evidence alerts
ALERT_EVIDENCE = 2.0  # -log10 p of a finding (p <= 0.01), for the member and for its witnesses alike
PRIOR_ROWS = 5.0  # the rank correlation counts as this many findings: few findings barely move the weight
AGREE_REFRESH = 500  # rows between recomputations (a batch that completes them is measured with them)
EVIDENCE_MAX = 300.0  # -log10 p is clipped here before it is kept (float32)


class AgreementWeights:
    """The latest rows' member evidence of one signal and the weights measured on it."""

    def __init__(self, members: int, evidence: np.ndarray | None = None, weights: np.ndarray | None = None):
        self.evidence = (
            np.zeros((0, members), np.float32) if evidence is None else evidence.astype(np.float32)
        )
        self.weights = np.ones(members) if weights is None else np.asarray(weights, dtype=np.float64)
        self.since = 0  # rows added since the weights were measured

    def update(self, p: np.ndarray, applicable: np.ndarray, views: list[str] | None = None) -> np.ndarray:
        """Add a batch's member p-values ((n, m); `applicable` marks the members with an opinion) and return
        the weights ((m,)), measured again when AGREE_REFRESH rows have come in since the last time. `views`
        name what each member reads (see `agreement`)."""
        ev = np.where(applicable, np.minimum(-np.log10(np.clip(p, 1e-300, 1.0)), EVIDENCE_MAX), np.nan)
        self.evidence = np.concatenate([self.evidence, ev.astype(np.float32)])[-AGREE_ROWS:]
        self.since += len(p)
        if self.since >= AGREE_REFRESH:
            self.weights = agreement(self.evidence.astype(np.float64), views)
            self.since = 0
        return self.weights

    def state(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"since": self.since}, {prefix + "evidence": self.evidence, prefix + "weights": self.weights}

    @classmethod
    def from_state(
        cls, values: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str
    ) -> AgreementWeights:
        out = cls(len(arrays[prefix + "weights"]), arrays[prefix + "evidence"], arrays[prefix + "weights"])
        out.since = int(values.get("since", 0))
        return out


def agreement(evidence: np.ndarray, views: list[str] | None = None) -> np.ndarray:
    """(m,) weights from (n, m) evidence (-log10 p, NaN = no opinion) and each member's view (default: its own).

    The witnesses of member j are the members of other views, over the rows where j and at least one of them
    judged. Its weight is (f + PRIOR_ROWS * rho) / (n + PRIOR_ROWS), floored at AGREE_FLOOR: n the rows where j
    reaches ALERT_EVIDENCE, f those where a witness does too, rho the Spearman correlation of j's evidence with
    the witnesses' largest; or, when larger, 1 - (E + 2 sqrt(E)) / n_j, the share of its n_j findings over
    all the rows it judged that chance does not explain (E = 1 % of those rows; the two standard deviations
    keep a burst of a few findings from counting as a real excess). A member with too few such rows, or whose
    evidence (or the witnesses') does not vary there, has nothing to be measured by and keeps weight 1.
    """
    m = evidence.shape[1]
    views = list(views) if views is not None else [str(j) for j in range(m)]
    has = ~np.isnan(evidence)
    ev = np.where(has, evidence, 0.0)
    weights = np.ones(m)
    for j in range(m):
        others = [i for i in range(m) if views[i] != views[j]]
        if not others:
            continue
        rows = has[:, j] & has[:, others].any(axis=1)
        if rows.sum() < AGREE_MIN_ROWS:
            continue
        mine, theirs = ev[rows, j], ev[rows][:, others].max(axis=1)
        if np.ptp(mine) == 0.0 or np.ptp(theirs) == 0.0:
            continue
        rho = float(spearmanr(mine, theirs).statistic)
        rho = max(rho, AGREE_FLOOR) if np.isfinite(rho) else AGREE_FLOOR
        found = mine >= ALERT_EVIDENCE
        shared = float((theirs[found] >= ALERT_EVIDENCE).sum())
        agree = (shared + PRIOR_ROWS * rho) / (float(found.sum()) + PRIOR_ROWS)
        n_judged = float(has[:, j].sum())
        n_found = float((ev[has[:, j], j] >= ALERT_EVIDENCE).sum())
        expected = 10.0**-ALERT_EVIDENCE * n_judged
        excess = 1.0 - (expected + 2.0 * math.sqrt(expected)) / n_found if n_found else 0.0
        weights[j] = max(agree, excess, AGREE_FLOOR)
    return weights
