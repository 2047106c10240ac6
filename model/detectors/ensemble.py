"""The ensemble: complementary members over the same rows, combined from their p-values, one threshold.

Each member answers a calibrated p-value per row (or no opinion). The ensemble
- mutes the global-novelty members for rows of a (service, signal) first seen after training until it has a
  baseline of its own (a new service's ordinary rows are novel as a whole: one notice, not an alarm each);
- lets those members' findings on a new kind of record (a message no trained template fits, an operation
  training never saw) rank but not alert while the kind warms up (`model.detectors.kinds`);
- combines the members' p-values (by default the weighted Bonferroni min-p: the smallest p / weight, valid
  under any dependence between members; the Cauchy combination and Fisher are the alternatives measured),
  each member weighted by how often its findings on the signal's recent traffic are shared by members that
  read other inputs (`model.detectors.agreement`; `weighting="equal"` turns this off);
- alerts where the combined p-value is below the row's threshold: the expected number of false alerts per
  hour of its (service, signal), `false_alerts_per_hour / rows per hour`, never above `alert_pvalue`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import ndtr

from model.detectors.agreement import AgreementWeights
from model.detectors.base import Detector, Frame, State
from model.detectors.kinds import NewKinds, Notice
from model.detectors.recent import RecentCalibration, RecentCenter, zvalues
from model.templates import NewTemplates

COMBINERS = ("cauchy", "minp", "fisher")
WEIGHTINGS = ("agreement", "equal")
RATE_TAU_S = 3600.0  # rows per hour forget with this time constant
WARMUP_ROWS = 300  # a new (service, signal) is learned, not judged, for at least this many rows ...
WARMUP_S = 300.0  # ... and this long
LEARN_ABOVE_P = 1e-2  # rows with a combined p above this join the normal history of learning members
P_MIN = 1e-300


@dataclass
class EnsembleResult:
    """Per row: combined p-value, its threshold, alert flag; per row and member: raw score and p-value."""

    members: list[str]
    raw: np.ndarray  # (n, m), NaN = no opinion
    p: np.ndarray  # (n, m), 1.0 = no opinion
    combined: np.ndarray  # (n,)
    threshold: np.ndarray  # (n,) the p-value below which a row alerts
    alert: np.ndarray  # (n,) bool
    warm: np.ndarray  # (n,) bool: the row's (service, signal) or its kind is in its warm-up
    notices: list[Notice] = field(default_factory=list)

    def fired(self, i: int) -> list[int]:
        """Members behind row i's alert: those whose own p-value passes the Bonferroni-adjusted threshold."""
        applicable = np.flatnonzero(~np.isnan(self.raw[i]))
        if not len(applicable):
            return []
        level = self.threshold[i] * len(applicable)
        fired = [int(j) for j in applicable if self.p[i, j] <= level]
        return sorted(fired, key=lambda j: self.p[i, j]) or [
            int(applicable[np.argmin(self.p[i, applicable])])
        ]


def combine(p: np.ndarray, applicable: np.ndarray, how: str, weights: np.ndarray | None = None) -> np.ndarray:
    """(n,) combined p-values of (n, m) member p-values over the applicable members of each row.

    `weights` (m,) are the members' prior weights (Cauchy and min-p), renormalised over each row's applicable
    members: a member of weight w counts as if its p-value were p / w (weighted Bonferroni for min-p).
    """
    n, m = p.shape
    # A row no member judged carries no evidence: it gets the largest value a judged row can, not a value above
    # it (Cauchy caps its inputs at 0.5, so "no evidence" is 0.5 there), and ranks with the ordinary rows.
    none = 0.5 if how == "cauchy" else 1.0
    w = np.where(applicable, np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64), 0.0)
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    count = applicable.sum(axis=1)
    out = np.full(n, none, dtype=np.float64)
    has = count > 0
    pc = np.clip(p, P_MIN, 1.0)
    if how == "minp":
        pmin = np.where(applicable, pc / np.maximum(w, 1e-300), np.inf).min(axis=1)
        out[has] = np.minimum(1.0, pmin[has])
    elif how == "fisher":
        from scipy.stats import chi2

        stat = -2.0 * np.where(applicable, np.log(pc), 0.0).sum(axis=1)
        out[has] = chi2.sf(stat[has], 2 * count[has])
    elif how == "cauchy":
        # tan((0.5 - p) pi) = 1 / (p pi) for small p, written so that p = 1e-300 does not overflow. p-values
        # are capped at 0.5: near 1 the transform goes to -infinity, and one member calling a row perfectly
        # ordinary would cancel another's strong evidence; the cap leaves the small-p tail as it is.
        pc = np.minimum(pc, 0.5)
        small = pc < 1e-15
        t = np.where(small, 1.0 / (pc * math.pi), np.tan((0.5 - pc) * math.pi))
        mean_t = np.where(applicable, w * t, 0.0).sum(axis=1)
        big = mean_t > 1e15
        cp = np.where(big, 1.0 / (np.maximum(mean_t, 1e-300) * math.pi), 0.5 - np.arctan(mean_t) / math.pi)
        out[has] = cp[has]
    else:
        raise ValueError(f"unknown combination {how!r}: one of {', '.join(COMBINERS)}")
    return np.clip(out, P_MIN, 1.0)


class Ensemble:
    """Members, their combination and the threshold.

    Args:
        members: fitted or unfitted members (see model.detectors.registry).
        combiner: "minp" (weighted Bonferroni), "cauchy" or "fisher".
        weighting: "agreement" (members weighted by agreement on recent traffic) or "equal".
        false_alerts_per_hour: expected false alerts per hour per (service, signal) at the threshold.
        alert_pvalue: the threshold never exceeds this p-value (slow streams).
    """

    def __init__(
        self,
        members: list[Detector],
        combiner: str = "minp",
        false_alerts_per_hour: float = 10.0,
        alert_pvalue: float = 1e-3,
        weighting: str = "agreement",
    ) -> None:
        if combiner not in COMBINERS:
            raise ValueError(f"unknown combination {combiner!r}: one of {', '.join(COMBINERS)}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown member weighting {weighting!r}: one of {', '.join(WEIGHTINGS)}")
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = members
        self.combiner = combiner
        self.false_alerts_per_hour = false_alerts_per_hour
        self.alert_pvalue = alert_pvalue
        self.weighting = weighting
        # (service, signal) -> [decayed row count, last time s, first seen s, rows seen, known at training]
        self.entities: dict[str, list[float]] = {}
        self.recent: dict[str, RecentCalibration] = {}  # "<member index>/<signal>" -> its recent calibration
        self.center: dict[str, RecentCenter] = {}  # "<member index>/<signal>" -> its latest z-values
        self.agree: dict[str, AgreementWeights] = {}  # signal -> its latest member evidence and weights
        self.kinds = NewKinds()  # kinds of record first seen after training, and their rows seen
        self.share_templates()
        self.fit_result_: EnsembleResult | None = None  # the training rows judged (not saved)

    def share_templates(self) -> None:
        """The kinds tracker groups unseen messages with the pattern member's grouping, when there is one."""
        for member in self.members:
            templates = getattr(member, "new_templates", None)
            if isinstance(templates, NewTemplates):
                self.kinds.use(templates)
                return

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def views(self) -> list[str]:
        return [m.view or m.name for m in self.members]

    def fit(self, frame: Frame) -> Ensemble:
        signals = frame.signals
        for j, m in enumerate(self.members):
            m.fit(frame)
            if m.recent_check and m.fit_raw_ is not None and len(m.fit_raw_) == len(frame):
                self._remember(j, np.asarray(m.fit_raw_, dtype=np.float64), signals, frame.times_ns)
        times = frame.times_ns / 1e9
        span = max(float(times.max() - times.min()), 60.0) if len(times) else 60.0
        keys = frame.sources
        for key in set(keys):
            n = keys.count(key)
            # Seeded at the training window's mean rate, as if that rate had always held.
            self.entities[key] = [n / span * RATE_TAU_S, float(times.max()), float(times.min()), n, 1.0]
        self.share_templates()  # the pattern member's fit starts its grouping of unseen messages afresh
        self.kinds.warm(frame)  # a kind the training rows hold (a message too rare for a template) is not new
        self.fit_result_ = self._judge_training(frame, keys)
        return self

    def _judge_training(self, frame: Frame, keys: list[str]) -> EnsembleResult:
        """The training rows judged by the members' out-of-sample scores (each row scored before it was learned,
        or held out): an incident inside the cold-start window is reported, not silently learned. Members
        without such scores have no opinion on training rows. They are combined with the prior weights only:
        these scores come from other procedures (cross-block distances, held-out halves) than the serving
        ones, and agreement measured on them did not carry over to serving (docs/detection.md §6)."""
        n, m = len(frame), len(self.members)
        raw, p, signals = np.full((n, m), np.nan), np.ones((n, m)), frame.signals
        for j, member in enumerate(self.members):
            if member.fit_raw_ is not None and len(member.fit_raw_) == n:
                r = np.asarray(member.fit_raw_, dtype=np.float64).copy()
                r[~np.isin(signals, list(member.signals))] = np.nan
                raw[:, j], p[:, j] = r, member.pvalues(frame, r)
        weights = np.asarray([mem.weight for mem in self.members])
        combined = combine(p, ~np.isnan(raw), self.combiner, weights)
        per_hour = np.asarray([self.entities[k][0] / RATE_TAU_S * 3600.0 for k in keys])
        thresholds = np.minimum(self.alert_pvalue, self.false_alerts_per_hour / np.maximum(per_hour, 1.0))
        alert = (combined <= thresholds) & ~self._muted(frame)
        return EnsembleResult(self.names, raw, p, combined, thresholds, alert, np.zeros(n, dtype=bool))

    def _muted(self, frame: Frame) -> np.ndarray:
        """Rows a member has already reported (an episode's later points): ranked by their p-value, not alerted."""
        out = np.zeros(len(frame), dtype=bool)
        for member in self.members:
            m = member.muted(frame)
            if m is not None:
                out |= m
        return out

    def _remember(self, j: int, raw: np.ndarray, signals: np.ndarray, times: np.ndarray) -> None:
        for signal in np.unique(signals):
            mine = signals == signal
            rc = self.recent.setdefault(f"{j}/{signal}", RecentCalibration(self.members[j].block_q))
            rc.add(raw[mine], times[mine])

    def _recent_pvalues(self, j: int, raw: np.ndarray, p: np.ndarray, signals: np.ndarray) -> np.ndarray:
        """The larger of the member's own p-value and its p-value against recent traffic of the row's signal."""
        out = p.copy()
        for signal in np.unique(signals):
            rc = self.recent.get(f"{j}/{signal}")
            if rc is None:
                continue
            mine = signals == signal
            recent = rc.pvalues(raw[mine])
            if recent is not None:
                out[mine] = np.maximum(out[mine], recent)
        return out

    def _centered(
        self, j: int, raw: np.ndarray, p: np.ndarray, signals: np.ndarray, learn: bool
    ) -> np.ndarray:
        """The larger of the member's p-value and its p-value against the null located on recent traffic."""
        out = p.copy()
        for signal in np.unique(signals):
            mine = (signals == signal) & ~np.isnan(raw)
            if not mine.any():
                continue
            center = self.center.setdefault(f"{j}/{signal}", RecentCenter())
            z = zvalues(p[mine])
            shift = center.shift(z, learn)
            if shift > 0:
                out[mine] = np.maximum(p[mine], ndtr(shift - z))
        return out

    def _weights(self, p: np.ndarray, applicable: np.ndarray, signals: np.ndarray, learn: bool) -> np.ndarray:
        """(n, m) weights of the members for each row: the prior weights, times the agreement weights of the
        row's signal (measured on its latest rows, this batch's included, when learning)."""
        prior = np.asarray([m.weight for m in self.members], dtype=np.float64)
        out = np.tile(prior, (len(p), 1))
        if self.weighting == "equal":
            return out
        for signal in np.unique(signals):
            mine = signals == signal
            aw = self.agree.get(str(signal))
            if learn:
                aw = self.agree.setdefault(str(signal), AgreementWeights(len(self.members)))
                aw.update(p[mine], applicable[mine], self.views)
            if aw is not None:
                out[mine] *= aw.weights
        return out

    def weights_by_signal(self) -> dict[str, dict[str, float]]:
        """signal -> member -> its current agreement weight, for the members that judged any of the signal's
        latest rows (empty under equal weighting)."""
        out = {}
        for signal, aw in self.agree.items():
            judged = np.asarray((~np.isnan(aw.evidence)).any(axis=0), dtype=bool)
            out[signal] = {m.name: float(aw.weights[j]) for j, m in enumerate(self.members) if judged[j]}
        return out

    def _track(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, list[Notice]]:
        """Update rows-per-hour and first-seen state; (threshold p, warm-up flag) per row, and notices."""
        thresholds = np.empty(len(frame))
        warm = np.zeros(len(frame), dtype=bool)
        notices = []
        for i, (key, row) in enumerate(zip(frame.sources, frame.rows, strict=True)):
            t = row.time_unix_nano / 1e9
            e = self.entities.get(key)
            if e is None:
                e = self.entities[key] = [0.0, t, t, 0, 0.0]
                service, signal = key.split("\x1f")
                notices.append(
                    Notice(
                        "source",
                        f"new {signal} source {service!r}: learning its baseline for {WARMUP_ROWS} records and"
                        f" {WARMUP_S / 60:.0f} min before its ordinary records can alert",
                    )
                )
            e[0] = e[0] * math.exp(-max(t - e[1], 0.0) / RATE_TAU_S) + 1.0
            e[1], e[3] = max(e[1], t), e[3] + 1
            warm[i] = not e[4] and (e[3] < WARMUP_ROWS or t - e[2] < WARMUP_S)
            per_hour = e[0] / RATE_TAU_S * 3600.0
            thresholds[i] = min(self.alert_pvalue, self.false_alerts_per_hour / max(per_hour, 1.0))
        return thresholds, warm, notices

    def score(self, frame: Frame, learn: bool = True) -> EnsembleResult:
        """Score a batch (rows in time order): every member, the combination, the threshold; then learn."""
        n, m = len(frame), len(self.members)
        thresholds, warm, notices = self._track(frame)
        kind_warm, kind_notices = self.kinds.warm(frame, covered=warm)
        kind_warm &= ~warm
        signals = frame.signals
        raw = np.full((n, m), np.nan)
        p = np.ones((n, m))
        for j, member in enumerate(self.members):
            r = np.asarray(member.score_samples(frame), dtype=np.float64)
            r[~np.isin(signals, list(member.signals))] = np.nan
            if member.global_novelty:
                r[warm] = np.nan
            raw[:, j] = r
            p[:, j] = member.pvalues(frame, r)
            if member.center_check:
                p[:, j] = self._centered(j, r, p[:, j], signals, learn)
            if member.recent_check:
                p[:, j] = self._recent_pvalues(j, r, p[:, j], signals)
            if learn and member.recent_check:
                self._remember(j, r, signals, frame.times_ns)
        applicable = ~np.isnan(raw)
        weights = self._weights(p, applicable, signals, learn)
        combined = combine(p, applicable, self.combiner, weights)
        alerting = combined.copy()
        # A warming kind alerts only on what the members judging a row against its own entity find.
        if kind_warm.any():
            own = applicable[kind_warm] & ~np.asarray([mem.global_novelty for mem in self.members])
            alerting[kind_warm] = combine(p[kind_warm], own, self.combiner, weights[kind_warm])
        alert = (alerting <= thresholds) & ~self._muted(frame)
        warm |= kind_warm
        if learn:
            failed = np.asarray([bool(d.get("failed")) for d in frame.derived], dtype=bool)
            normal = (combined > LEARN_ABOVE_P) | (warm & ~failed)
            for member in self.members:
                member.learn(frame, normal & ~alert)
        return EnsembleResult(self.names, raw, p, combined, thresholds, alert, warm, notices + kind_notices)

    def explain(self, frame: Frame, result: EnsembleResult, i: int) -> list[tuple[str, str]]:
        """(member, clause) for the members behind row i's score, strongest first."""
        out = []
        for j in result.fired(i):
            out.append(
                (self.members[j].name, self.members[j].explain(frame, i, result.raw[i, j], result.p[i, j]))
            )
        return out

    def state(self) -> State:
        values: dict[str, Any] = {
            "combiner": self.combiner,
            "false_alerts_per_hour": self.false_alerts_per_hour,
            "alert_pvalue": self.alert_pvalue,
            "weighting": self.weighting,
            "entities": self.entities,
            "kinds": self.kinds.state(),
            "members": [],
            "recent": {},
        }
        arrays: dict[str, np.ndarray] = {}
        for key, rc in self.recent.items():
            values["recent"][key], a = rc.state(f"r{key}.")
            arrays.update(a)
        values["center"] = sorted(self.center)
        values["agree"] = {}
        for signal, aw in self.agree.items():
            values["agree"][signal], a = aw.state(f"a{signal}.")
            arrays.update(a)
        arrays.update({f"c{key}.z": c.z.copy() for key, c in self.center.items()})
        for j, member in enumerate(self.members):
            v, a = member.state()
            values["members"].append({"name": member.name, "values": v, "arrays": sorted(a)})
            arrays.update({f"m{j}.{k}": arr for k, arr in a.items()})
        return values, arrays
