"""Pattern frequency: how rare a row's discrete signature is within its own service and signal.

The signature is the row's kind (class, activity, severity, status, message template, route, method, status
class, operation, error type, metric name). Its p-value is a leave-one-out conformal p-value on counts: the
share of the group's history whose own signature was at most as frequent. A pattern at 0.3 % of traffic
keeps a small p-value however often it recurs, because the statistic is a relative frequency, not a distance
to the nearest look-alike; a never-seen pattern gets the Good-Turing mass of novelty (how often history saw
something new), so a service whose messages are often new is not alarmed by one more.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from model.detectors.base import Detector, Frame, State, from_neglog10
from model.templates import WILDCARD, NewTemplates

# The discrete columns of the signature, read from the row's derived values; absent ones are left out.
SIGNATURE = (
    "class_uid",
    "activity_id",
    "severity_id",
    "status_id",
    "template",
    "url_template",
    "http_request.http_method",
    "http_response.code_class",
    "trace.span.operation",
    "api.operation",
    "error.type",
    "db.operation",
    "metric.name",
)
MAX_SIGNATURES = 20_000  # per group; the rarest are forgotten first when a group outgrows it
SEVERITY = {
    1: "informational",
    2: "low",
    3: "medium",
    4: "high",
    5: "critical",
    6: "fatal",
}  # OCSF severity_id
HALVE_ABOVE = 2_000_000  # a group's total count is halved past this: relative frequencies stay, history fades


def signature(derived: dict[str, Any], new: NewTemplates) -> str:
    """The row's pattern: its discrete columns; a message no trained template fits is keyed by the template
    `new` learns for it, so a recurring new kind of message with a variable word in it (a path, a name) is one
    pattern whose count grows, not a new pattern each time."""
    parts = []
    for name in SIGNATURE:
        value = derived.get(name)
        if value is None or value == "":
            continue
        if name == "template" and value == "<unseen>":
            message = derived.get("_message")
            value = new.key(message) if isinstance(message, str) else value
        parts.append(f"{value}")
    return "|".join(parts)


class _Group:
    """One (service, signal): signature counts, each signature's severity, and the lazily built tail table.

    A row's nonconformity is -log10 q_sev - log10 q_pat: q_sev the share of history at least as severe, q_pat
    the share whose pattern was at most as frequent (leave-one-out). Its p-value is the share of history
    whose own nonconformity was at least as high: a conformal p-value over both, valid however the two depend
    on each other. A never-seen FATAL message outranks a never-seen INFO one, and a common WARNING a rare
    INFO fault only when warnings are rarer than that fault.
    """

    __slots__ = ("counts", "severity", "total", "_dirty", "_sev_levels", "_sev_cum", "_levels", "_cum", "_a")

    def __init__(self, counts: Counter[str] | None = None, severity: dict[str, int] | None = None) -> None:
        self.counts: Counter[str] = counts or Counter()
        self.severity: dict[str, int] = severity or {}
        self.total = sum(self.counts.values())
        self._dirty = True

    def add(self, sig: str, severity: int) -> None:
        self.counts[sig] += 1
        self.severity[sig] = severity
        self.total += 1
        self._dirty = True
        if self.total > HALVE_ABOVE:
            self.counts = Counter({s: c // 2 for s, c in self.counts.items() if c >= 2})
            self.total = sum(self.counts.values())
        if len(self.counts) > MAX_SIGNATURES:
            for s, c in self.counts.most_common()[MAX_SIGNATURES // 2 :]:
                del self.counts[s]
                self.total -= c
        if len(self.severity) > 2 * len(self.counts):
            self.severity = {s: self.severity[s] for s in self.counts}

    def _build(self) -> None:
        sigs = list(self.counts)
        c = np.fromiter((self.counts[s] for s in sigs), dtype=np.float64, count=len(sigs))
        sev = np.fromiter((self.severity.get(s, 0) for s in sigs), dtype=np.float64, count=len(sigs))
        self._levels, inverse = np.unique(c - 1.0, return_inverse=True)  # leave-one-out: a row without itself
        self._cum = np.cumsum(np.bincount(inverse, weights=c))
        self._sev_levels, sinv = np.unique(sev, return_inverse=True)
        by_sev = np.bincount(sinv, weights=c)
        self._sev_cum = np.cumsum(by_sev[::-1])[::-1]  # rows at least as severe as each level
        a = self._nonconformity(c - 1.0, sev)
        order = np.argsort(a)
        self._a = (a[order], np.cumsum(c[order][::-1])[::-1])  # sorted scores, rows scoring at least each
        self._dirty = False

    def _nonconformity(self, count: np.ndarray, sev: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self._levels, count, side="right")
        rarer = np.where(k > 0, self._cum[np.maximum(k - 1, 0)], 0.0)
        j = np.searchsorted(self._sev_levels, sev, side="left")
        severe = np.where(j < len(self._sev_cum), self._sev_cum[np.minimum(j, len(self._sev_cum) - 1)], 0.0)
        n1 = self.total + 1.0
        return -np.log10((1.0 + rarer) / n1) - np.log10((1.0 + severe) / n1)

    def pvalues(self, sigs: list[str], severity: list[int]) -> np.ndarray:
        """(1 + history rows whose nonconformity is at least each row's) / (rows + 1)."""
        if self._dirty:
            self._build()
        counts = np.fromiter((self.counts.get(sg, 0) for sg in sigs), dtype=np.float64, count=len(sigs))
        a = self._nonconformity(counts, np.asarray(severity, dtype=np.float64))
        scores, at_least = self._a
        k = np.searchsorted(scores, a - 1e-12, side="left")
        above = np.where(k < len(scores), at_least[np.minimum(k, len(scores) - 1)], 0.0)
        return (1.0 + above) / (self.total + 1.0)

    def severe_share(self, severity: int) -> float:
        if self._dirty:
            self._build()
        j = int(np.searchsorted(self._sev_levels, float(severity), side="left"))
        return float(self._sev_cum[j]) / max(self.total, 1) if j < len(self._sev_cum) else 0.0


class PatternFrequency(Detector):
    """Count-based rarity of the row's signature within its (service, signal).

    Args:
        min_rows: a group with fewer rows of history has no opinion (its rows are new: warm-up).
    """

    name = "pattern"
    global_novelty = True
    signals = frozenset({"logs", "traces"})
    recent_check = False  # conformal over its own counts, which grow with every row

    def __init__(self, min_rows: int = 200) -> None:
        self.min_rows = min_rows
        self.groups: dict[str, _Group] = {}
        self.new_templates = NewTemplates()

    def _keys(self, frame: Frame) -> tuple[list[str], list[str], list[int]]:
        cached = frame.cache.get("pattern.keys")
        if cached is None:
            cached = (
                frame.sources,
                [signature(d, self.new_templates) for d in frame.derived],
                [r.severity_id for r in frame.rows],
            )
            frame.cache["pattern.keys"] = cached
        return cached

    def fit(self, frame: Frame) -> PatternFrequency:
        self.groups = {}
        self.new_templates = NewTemplates()
        for g, s, sev in zip(*self._keys(frame), strict=True):
            self.groups.setdefault(g, _Group()).add(s, sev)
        return self

    def score_samples(self, frame: Frame) -> np.ndarray:
        """-log10 of the p-value; NaN for a group too young to judge (its rows are new: warm-up)."""
        out = np.full(len(frame), np.nan)
        by_group: dict[str, list[int]] = {}
        groups, sigs, sevs = self._keys(frame)
        for i, g in enumerate(groups):
            by_group.setdefault(g, []).append(i)
        for g, idx in by_group.items():
            group = self.groups.get(g)
            if group is not None and group.total >= self.min_rows:
                out[idx] = -np.log10(group.pvalues([sigs[i] for i in idx], [sevs[i] for i in idx]))
        return out

    def pvalues(self, frame: Frame, raw: np.ndarray) -> np.ndarray:
        return from_neglog10(raw)

    def learn(self, frame: Frame, normal: np.ndarray) -> None:
        """Count every row: the statistic is a relative frequency, so a recurring fault stays rare while a
        pattern that becomes common traffic (a deploy) becomes normal."""
        for g, s, sev in zip(*self._keys(frame), strict=True):
            self.groups.setdefault(g, _Group()).add(s, sev)

    def explain(self, frame: Frame, i: int, raw: float, p: float) -> str:
        groups, sigs, sevs = self._keys(frame)
        group = self.groups.get(groups[i])
        count = group.counts.get(sigs[i], 0) if group else 0
        total = group.total if group else 0
        what = describe(frame, i)
        message = frame.derived[i].get("_message")
        if frame.derived[i].get("template") == "<unseen>" and isinstance(message, str):
            # counted as a kind learned while serving: say which (the message itself is the event's subject)
            tokens = self.new_templates.templates.get(self.new_templates.key(message), [])
            if WILDCARD in tokens:
                what = f"a message like {json.dumps(' '.join(tokens)[:100])}"
        row = frame.rows[i]
        severe = ""
        if group is not None and row.severity_id >= 3:
            severe = f" at severity {SEVERITY.get(row.severity_id, row.severity_id)} ({100.0 * group.severe_share(row.severity_id):.2g} % of its records are this severe)"
        if count == 0:
            return f"{what} was never seen before from {row.service}{severe}"
        share = 100.0 * count / max(total, 1)
        return f"{what} is rare for {row.service}: {count:,} of {total:,} earlier records ({share:.2g} %){severe}"

    def state(self) -> State:
        groups = {g: {"counts": dict(v.counts), "severity": v.severity} for g, v in self.groups.items()}
        return {"min_rows": self.min_rows, "groups": groups, "new_templates": self.new_templates.state()}, {}

    @classmethod
    def from_state(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> PatternFrequency:
        det = cls(min_rows=int(values["min_rows"]))
        det.groups = {
            g: _Group(Counter(v["counts"]), dict(v["severity"])) for g, v in values["groups"].items()
        }
        det.new_templates = NewTemplates.from_state(values.get("new_templates", []))  # none before 2026-12-07
        return det


def describe(frame: Frame, i: int) -> str:
    """The row's kind in its own words: the message template (or message), else route/operation/metric."""
    d = frame.derived[i]
    t = d.get("template")
    if (
        isinstance(t, str)
        and t.isdigit()
        and frame.contract is not None
        and int(t) < len(frame.contract.templates)
    ):
        return f"the message {json.dumps(frame.contract.templates[int(t)][:100])}"
    message = d.get("_message")
    if isinstance(message, str):
        return f"the message {json.dumps(message[:100])}"
    for name in ("trace.span.operation", "url_template", "api.operation", "metric.name"):
        if d.get(name):
            return f"{name.split('.')[-1].replace('_', ' ')} {d[name]!r}"
    return f"a {frame.rows[i].signal} record of class {frame.rows[i].class_uid}"
