"""The latency member: a request's latency against its own operation's baseline, alone and together with the
operation's latest requests.

Two tests, combined by Bonferroni:
- **this request**: the upper-tail robust z of its log latency, calibrated on the training window's z's;
- **sustained slowness**: the smaller of that z and the operation's exponential mean of its latest requests'
  (clipped) z's, calibrated the same way. It is high only while this request *and* the ones before it are slow:
  an incident slows an operation for many requests, while one request in an operation's own 1-in-1,000 tail is
  ordinary traffic and so are the ordinary requests right after an incident.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, ClassVar

import numpy as np

from model.detectors.base import Frame, State, from_neglog10
from model.detectors.operation import _PerOperation, measured, op_keys, op_label
from model.detectors.operation_stats import EPS_MS, MIN_OBS, SCALE_FLOOR, WARM_MULT, Tail, observe, robust_z
from model.windows import lru_entry

A_RECENT = (
    1.0 / 8.0
)  # weight of the latest request in the operation's recent mean: about its last 15 requests
SD_RECENT = math.sqrt(A_RECENT / (2.0 - A_RECENT))  # SD of that mean over independent N(0, 1) z's
CLIP_RECENT = 3.0  # z's enter the recent mean clipped here: one very slow request is not a slow period


class LatencyDetector(_PerOperation):
    """A row's latency against its (service, operation)'s robust baseline of log latency. Only slowness counts:
    a much faster request is a cache hit, an early return or a failure (which the error member judges), none of
    them a latency anomaly. The raw score is -log10 of the Bonferroni p-value of the two tests.

    A new operation (fewer than MIN_OBS observations) is judged against its service's (or, for a new service,
    all services') latency distribution, after dividing its latency by WARM_MULT: only an extreme value alerts.
    It has no recent mean yet, so only the request's own test applies.
    """

    name: ClassVar[str] = "latency"
    global_novelty: ClassVar[bool] = False
    LAYOUT = (3, 2, 1)  # [location, scale, weight, observations, last time, warm-up values]

    def __init__(self, tau_min: float = 30.0, max_keys: int = 50_000) -> None:
        super().__init__(tau_min, max_keys)
        self.own, self.parent, self.sustained = Tail(), Tail(), Tail()
        self.recent: dict[str, float] = {}  # operation key -> exponential mean of its latest clipped z's

    @staticmethod
    def _new(t: int) -> list[Any]:
        return [0.0, 1.0, 0.0, 0, t, []]

    @staticmethod
    def _sequence(chunk: np.ndarray) -> Any:
        return [float(v) for v in chunk.ravel()]

    def fit(self, frame: Frame) -> LatencyDetector:
        self._reset()
        self.recent = {}
        self._seed(frame)
        z, zp, shifted, sustained, _ = self._run(frame)
        self.own, self.parent = Tail.fit(z), Tail.fit(zp[~shifted])
        self.sustained = Tail.fit(sustained)
        self.fit_raw_ = self._raw(z, zp, shifted, sustained)
        return self

    def _seed(self, frame: Frame) -> None:
        """Start every baseline of the training window from its median/MAD over the whole window, so one whose
        first rows fall inside an incident does not spend the window recovering from it (fit only)."""
        groups: dict[tuple[int, str], list[float]] = {}
        first: dict[tuple[int, str], int] = {}
        for row, d, key in zip(frame.rows, frame.derived, op_keys(frame), strict=True):
            lat = d.get("latency_ms")
            if isinstance(lat, int | float) and lat >= 0.0 and not math.isinf(lat) and measured(row, d):
                for group in ((0, key), (1, row.service), (2, "")):
                    groups.setdefault(group, []).append(math.log(lat + EPS_MS))
                    first.setdefault(group, row.time_unix_nano)
        span = max(frame.rows[-1].time_unix_nano - frame.rows[0].time_unix_nano, 1) if len(frame) else 1
        for (level, key), xs in groups.items():
            if len(xs) < MIN_OBS:
                continue
            v = np.asarray(xs)
            m = float(np.median(v))
            w = max(float(MIN_OBS), len(xs) * min(1.0, self.tau_ns / span))  # its observations in one tau
            scale = max(1.4826 * float(np.median(np.abs(v - m))), SCALE_FLOOR)
            entry: list[Any] = [m, scale, w, MIN_OBS, first[(level, key)], []]
            if level == 2:
                self.all = entry
            else:
                lru_entry(self.ops if level == 0 else self.services, key, partial(list, entry), self.max_keys)

    def _run(
        self, frame: Frame
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[float, float]]]:
        """Per row: own z, parent z (shifted by WARM_MULT where the operation is new), the new-operation flag, the
        sustained statistic and the (median, scale) of log ms it was measured against; learns every row."""
        n = len(frame)
        z, zp, shifted = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
        sustained = np.full(n, np.nan)
        ref: list[tuple[float, float]] = [(math.nan, math.nan)] * n
        shift, keys = math.log(WARM_MULT), op_keys(frame)
        for i, (row, d) in enumerate(zip(frame.rows, frame.derived, strict=True)):
            lat = d.get("latency_ms")
            if not isinstance(lat, int | float) or not lat >= 0.0 or math.isinf(lat) or not measured(row, d):
                continue
            x, t = math.log(lat + EPS_MS), row.time_unix_nano
            svc = lru_entry(self.services, row.service, partial(self._new, t), self.max_keys)
            op = lru_entry(self.ops, keys[i], partial(self._new, t), self.max_keys)
            par = svc if svc[3] >= MIN_OBS else self.all
            z[i] = robust_z(op, x)
            if op[3] >= MIN_OBS:
                ref[i], zp[i] = (op[0], op[1]), robust_z(par, x)
                mean = self.recent.get(keys[i], 0.0)
                mean += A_RECENT * (min(max(z[i], -CLIP_RECENT), CLIP_RECENT) - mean)
                self.recent[keys[i]] = mean
                sustained[i] = min(z[i], mean / SD_RECENT)
            elif par[3] >= MIN_OBS:
                ref[i], zp[i], shifted[i] = (par[0], par[1]), robust_z(par, x, shift), True
            for entry in (op, svc, self.all):
                observe(entry, x, t, self.tau_ns)
        if len(self.recent) > len(self.ops):  # operations the LRU table dropped
            self.recent = {k: v for k, v in self.recent.items() if k in self.ops}
        frame.cache[self.name] = (z, ref, shifted, sustained)
        return z, zp, shifted, sustained, ref

    def _pvalues(
        self, z: np.ndarray, zp: np.ndarray, shifted: np.ndarray, sustained: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(the request's own p-value, the sustained test's; 1 where it does not apply)."""
        p = self.own.sf(z)
        if shifted.any():  # a new operation: its shifted parent tail probability
            p[shifted] = self.parent.sf(zp[shifted])
        return p, self.sustained.sf(sustained)

    def _raw(self, z: np.ndarray, zp: np.ndarray, shifted: np.ndarray, sustained: np.ndarray) -> np.ndarray:
        own, recent = self._pvalues(z, zp, shifted, sustained)
        both = ~np.isnan(sustained)
        p = own.copy()
        p[both] = np.minimum(1.0, 2.0 * np.minimum(own[both], recent[both]))
        return np.where(np.isnan(z) & ~shifted, np.nan, -np.log10(np.clip(p, 1e-300, 1.0)))

    def score_samples(self, frame: Frame) -> np.ndarray:
        z, zp, shifted, sustained, _ = self._run(frame)
        return self._raw(z, zp, shifted, sustained)

    def pvalues(self, frame: Frame, raw: np.ndarray) -> np.ndarray:
        return from_neglog10(raw)

    def explain(self, frame: Frame, i: int, raw: float, p: float) -> str:
        lat, service, label = (
            float(frame.derived[i].get("latency_ms") or 0.0),
            frame.rows[i].service,
            op_label(frame, i),
        )
        cached = frame.cache.get(self.name)
        if cached is None or not math.isfinite(cached[1][i][0]):
            return f"latency {_ms(lat)} ms of {label} in {service}"
        m, s = cached[1][i]
        new = bool(cached[2][i])  # a new operation is measured against its service's (or all) operations
        tail = self.parent if new else self.own
        usual = math.exp(m) - EPS_MS
        p99 = math.exp(m + s * float(tail.isf(np.asarray([0.01]))[0])) - EPS_MS
        whose = f"{service}'s operations ({label} is new)" if new else f"{label} in {service}"
        times = lat / max(usual, EPS_MS)
        clause = (
            f"latency {_ms(lat)} ms, {times:,.0f}x the usual {_ms(usual)} ms of {whose} (p99 {_ms(p99)} ms)"
        )
        sustained = float(cached[3][i])
        if (
            math.isfinite(sustained)
            and self.sustained.sf(np.asarray([sustained]))[0]
            < self.own.sf(np.asarray([float(cached[0][i])]))[0]
        ):
            recent = math.exp(m + s * sustained * SD_RECENT) - EPS_MS
            clause += f"; its latest requests have been slow too (recent typical {_ms(recent)} ms)"
        return clause

    def state(self) -> State:
        values, arrays = super().state()
        for name, tail in (("own", self.own), ("parent", self.parent), ("sustained", self.sustained)):
            arrays[name + "_qs"], values[name + "_beta"] = tail.qs, tail.beta
        keys = list(self.recent)
        values["recent_keys"] = keys
        arrays["recent_mean"] = np.asarray([self.recent[k] for k in keys], dtype=np.float64)
        return values, arrays

    @classmethod
    def from_state(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> LatencyDetector:
        det = super().from_state(values, arrays)
        assert isinstance(det, LatencyDetector)
        det.own = Tail(np.asarray(arrays["own_qs"], dtype=np.float64), float(values["own_beta"]))
        det.parent = Tail(np.asarray(arrays["parent_qs"], dtype=np.float64), float(values["parent_beta"]))
        if "sustained_qs" in arrays:
            qs = np.asarray(arrays["sustained_qs"], dtype=np.float64)
            det.sustained = Tail(qs, float(values["sustained_beta"]))
            det.recent = dict(zip(values["recent_keys"], arrays["recent_mean"].tolist(), strict=True))
        else:  # a state saved before the sustained test: it starts from the request test's calibration
            det.sustained = Tail(det.own.qs.copy(), det.own.beta)
        return det


def _ms(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.2g}"
