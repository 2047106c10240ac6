"""Metric data points judged as series: per-series online baselines and a few calibrated change tests.

A series' expected value is the median of its last values or, once a period is found in its history, the median
of the values one, two and three periods back; a shift becomes the new normal once it fills half that window.
Three tests look at residuals in robust SDs: a spike (this point), a level shift or trend (exponential mean) and
a variance change (log exponential mean square); a fourth asks whether the latest 32 points form a shape unlike
every earlier window of the series (the left matrix profile's discord). Each is calibrated on the series' own
past values of it (quantiles below its top decile, a generalised Pareto tail above) and the p-values are
combined by a weighted Bonferroni (the shape test a tenth of the alert level, the others 0.3 each). After an alert the series is in an episode and alerts again only on much stronger evidence: the
alert is about the change, not about each point after it. Its later points keep their spike test's p-value, so
they rank by their own deviation, and are muted (`muted`): the ensemble does not alert on them.

A fourth statistic, the distance from the median of the series' whole kept history (calibrated the same way),
ranks the points that cannot alert: a point still far from the series' long-run level after the short baseline
has absorbed a change ranks above ordinary points, but never alerts. Below the alert level the member's value is
therefore a rank (the smaller of two p-values), not a calibrated p-value.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from model.detectors.base import Detector, Frame, State, from_neglog10
from model.detectors.series_explain import explain
from model.detectors.series_stats import (
    SHAPE_POINTS,
    STATS,
    find_period,
    fit_tails,
    last,
    resolution,
    robust_scale,
    seasonal_gain,
    window_novelty,
)

N_STATS = len(STATS)
DRIFT = STATS.index("drift")
# The tests that alert and their shares of the alert level (weighted Bonferroni). The shape test finds windows
# the others miss, but a full share would tax their marginal alerts more than it adds (docs/detection.md §6).
TEST_WEIGHTS = {0: 0.3, 1: 0.3, 2: 0.3, 4: 0.1}
A_LEVEL, A_VAR = 1.0 / 8.0, 1.0 / 16.0  # exponential weights of the level and variance tests
SD_LEVEL = math.sqrt(A_LEVEL / (2.0 - A_LEVEL))  # SD of an exponential mean of N(0, 1) values
CLIP_Z = 3.0  # level and variance tests clip residuals here (Huber-style): one spike is not a level change
SEASONAL_GAIN, SEASONAL_KEEP = 0.8, 0.9  # a period is taken if it cuts the residual scale 20 %, kept to 10 %
GRID = 33  # quantiles kept of each test's calibration values below its tail threshold
TAIL_SHARE = 0.1  # the top share of each test's calibration values its tail is fitted to
# SD of rounding to a step of 1 (Sheppard): the least a stepped series varies, in steps.
QUANTUM_SD = 1.0 / math.sqrt(12.0)
# A point ranked by its drift alone stays at least this multiple above the alert level.
MUTED_ABOVE = 1.0 + 1e-6
# Scalar state of a series, in this order in the saved arrays.
FLOATS = ("level", "scale", "ew_level", "ew_var", "episode_p", "base")
INTS = ("n", "pos", "n_res", "n_cal", "cal_pos", "period", "quiet", "in_episode", "fitted", "shape_from")
logger = logging.getLogger(__name__)
_CONFIG = "max_series history calib level_window refresh min_points alert_p worse quiet_p refractory".split()


@dataclass(slots=True, eq=False)
class _Series:
    """The online state of one series: ring buffers, running statistics and the fitted calibration."""

    vals: np.ndarray  # ring buffer of values
    res: np.ndarray  # ring buffer of residuals (for the scale)
    cal: np.ndarray  # (tests, calib) ring buffer of past test values (for the p-values)
    tails: list[list[float]]  # per statistic [u, beta, xi, tail share, cap], see _fit_tails
    grid: list[list[float]]  # per statistic, quantiles of the calibration values below u
    level: float = 0.0
    scale: float = 0.0
    ew_level: float = 0.0
    ew_var: float = 1.0
    episode_p: float = 1.0
    base: float = 0.0  # the median of the kept history (the long-run level)
    n: int = 0
    pos: int = 0
    n_res: int = 0
    n_cal: int = 0
    cal_pos: int = 0
    period: int = 0
    quiet: int = 0
    in_episode: int = 0
    fitted: int = 0
    shape_from: int = 0  # the shape test alerts once its calibration row holds only values from this point on
    pending: list[list[float]] = field(default_factory=list)  # test values not yet in `cal`

    @classmethod
    def new(cls, history: int, calib: int) -> _Series:
        tails = [[math.inf, 1.0, 0.0, 1.0, math.inf] for _ in range(N_STATS)]
        grid = [[0.0] * GRID for _ in range(N_STATS)]
        cal = np.zeros((N_STATS, calib), np.float32)
        return cls(np.zeros(history), np.zeros(min(history, 256)), cal, tails, grid)


class SeriesDetector(Detector):
    """Per-series online change detection on metric values, with calibrated p-values and alert episodes.

    `min_points` is the warm-up of every series: it cannot alert before it has a level (`level_window` points)
    and as many scored points of its own again, so that each test's tail, extrapolated from the top decile of
    its calibration values, rests on at least 8 of them (fewer make the fitted shape meaningless).
    """

    name: ClassVar[str] = "series"
    recent_check: ClassVar[bool] = False  # calibrated online on each series' own history

    def __init__(
        self,
        max_series: int = 10_000,
        history: int = 1024,
        calib: int = 1024,
        level_window: int = 64,
        refresh: int = 8,
        min_points: int = 128,
        alert_p: float = 1e-3,
        worse: float = 1e-2,
        quiet_p: float = 0.01,
        refractory: int = 16,
    ) -> None:
        # Series tracked at once (about 45 KB each); the least recently seen is dropped, and starts its warm-up
        # again when it returns: a stream with more live series than this would never judge any.
        self.max_series = max_series
        self.dropped = 0
        self.history = history  # values kept per series (bounds the longest period found: history / 3)
        self.calib = calib  # past test values per series the p-values are calibrated on
        self.level_window = level_window  # the median baseline: a shift is the new normal after half of it
        self.refresh = refresh  # the level is refitted every `refresh` points, scale and tails every 4x that
        self.min_points = min_points
        self.alert_p = alert_p  # the ensemble's alert level: a p below it opens an episode
        self.worse = worse  # in an episode, p must beat `worse` x the episode's best p to alert again
        self.quiet_p = quiet_p  # the episode ends after `refractory` points in a row with p >= quiet_p
        self.refractory = refractory
        self.series: dict[str, _Series] = {}

    def fit(self, frame: Frame) -> SeriesDetector:
        self.series.clear()
        self.fit_raw_ = self.score_samples(frame)
        return self

    def score_samples(self, frame: Frame) -> np.ndarray:
        n = len(frame)
        raw = np.full(n, np.nan)
        details: dict[int, tuple[Any, ...]] = {}
        muted = np.zeros(n, dtype=bool)
        for i in range(n):
            row, d = frame.rows[i], frame.derived[i]
            key, x = d.get("series"), d.get("series_value")
            ok = row.signal == "metrics" and key is not None
            if not ok or not isinstance(x, float | int) or not math.isfinite(x):
                continue
            st = self._get(str(key))
            out = self._step(st, float(x))
            if out is not None:
                raw[i] = -math.log10(out[0])
                details[i] = out[1]
                muted[i] = out[2]
        frame.cache["series.details"] = details
        frame.cache["series.muted"] = muted
        return raw

    def muted(self, frame: Frame) -> np.ndarray | None:
        return frame.cache.get("series.muted")

    def pvalues(self, frame: Frame, raw: np.ndarray) -> np.ndarray:
        return from_neglog10(raw)

    def explain(self, frame: Frame, i: int, raw: float, p: float) -> str:
        detail = frame.cache.get("series.details", {}).get(i)
        if detail is None:
            return f"series value unusual for this series (p={p:.2g})"
        return explain(detail, str(frame.rows[i].fields.get("metric.unit", "")))

    def _get(self, key: str) -> _Series:
        st = self.series.pop(key, None) or _Series.new(self.history, self.calib)
        self.series[key] = st  # (re)inserted last: the dict is in least-recently-seen order
        while len(self.series) > self.max_series:
            del self.series[next(iter(self.series))]
            if self.dropped % 1000 == 0:
                logger.warning(
                    "series member at its capacity of %d series: the least recently seen are dropped and warm up"
                    " again when they return (%d dropped so far)",
                    self.max_series,
                    self.dropped + 1,
                )
            self.dropped += 1
        return st

    def _step(self, st: _Series, x: float) -> tuple[float, tuple[Any, ...], bool] | None:
        """Score `x` against the series' state, then learn it: (p, detail, muted); None in the warm-up."""
        result = None
        if st.n >= self.level_window:
            pred = self._predict(st)
            z = (x - pred) / st.scale
            hist = last(st.vals, st.pos, min(st.n, len(st.vals)))
            shape = window_novelty(hist, x, SHAPE_POINTS, st.scale)
            stats = (*self._update_stats(st, z), abs(x - st.base) / st.scale, shape)
            if st.n >= self.min_points and st.fitted:
                p_tests = [self._tail_p(st.tails[j], st.grid[j], s) for j, s in enumerate(stats)]
                # the shape test alerts once the series has a full calibration row of its own (measured both ways:
                # active from the start, it re-alerted inside an outage's episode; docs/detection.md §6)
                if st.n - st.shape_from < self.calib:
                    p_tests[STATS.index("shape")] = 1.0
                test = min(TEST_WEIGHTS, key=lambda j: p_tests[j] / TEST_WEIGHTS[j])
                p, muted = self._episode(
                    st,
                    min(1.0, max(p_tests[test] / TEST_WEIGHTS[test], 1e-300)),
                    p_tests[0] / TEST_WEIGHTS[0],
                )
                # a point that cannot alert may still rank by its drift from the long-run level, above the alert level
                if p >= self.alert_p:
                    floor = self.alert_p * MUTED_ABOVE
                    p = min(p, floor + (1.0 - floor) * p_tests[DRIFT])
                detail = (
                    test,
                    x,
                    pred,
                    st.scale,
                    z,
                    st.ew_level,
                    st.ew_var,
                    st.period,
                    self.level_window,
                    shape,
                )
                result = (p, detail, muted)
            self._add_calibration(st, stats)
            st.res[st.n_res % len(st.res)] = x - pred
            st.n_res += 1
        self._push(st, x)
        return result

    def _predict(self, st: _Series) -> float:
        if st.period:
            h, period = len(st.vals), st.period
            a, b, c = (float(st.vals[(st.pos - k * period) % h]) for k in (1, 2, 3))
            return a + b + c - max(a, b, c) - min(a, b, c)  # median of three
        return st.level

    @staticmethod
    def _update_stats(st: _Series, z: float) -> tuple[float, float, float]:
        """Update the exponential statistics with the standardised residual z and return the three test values."""
        zc = min(max(z, -CLIP_Z), CLIP_Z)
        st.ew_level += A_LEVEL * (zc - st.ew_level)
        st.ew_var += A_VAR * (zc * zc - st.ew_var)
        return abs(z), abs(st.ew_level) / SD_LEVEL, abs(math.log(st.ew_var + 1e-6))

    @staticmethod
    def _tail_p(tail: list[float], grid: list[float], s: float) -> float:
        """Calibrated P(stat >= s): a generalised Pareto tail above u, the interpolated quantile grid below."""
        u, beta, xi, share, _ = tail
        if s > u:
            y = (s - u) / beta
            return share * (math.exp(-y) if xi < 1e-6 else (1.0 + xi * y) ** (-1.0 / xi))
        i = bisect_left(grid, s)
        if i == 0:
            return 1.0
        lo, hi = grid[i - 1], grid[i]
        frac = (i - 1 + ((s - lo) / (hi - lo) if hi > lo else 0.0)) / (GRID - 1)
        return 1.0 - frac * (1.0 - share)

    def _episode(self, st: _Series, p: float, p_point: float) -> tuple[float, bool]:
        """(p, muted): repeat alerts of one episode are muted unless a point's own deviation gets `worse`-fold
        stronger than the episode's strongest evidence.

        `p` is the weighted Bonferroni p-value of the tests (the alert's), `p_point` that of the spike test alone.
        Only the spike test can alert again: the other tests read windows that hold the episode's own earlier
        points, so their evidence grows as the episode goes on without anything new (the shape test's distance
        with every further point of an outage). A muted point keeps the spike test's p-value: it ranks by its own
        deviation (a point far off inside an episode above an ordinary one, and above a fresh small alert
        elsewhere when it is further off), while the window tests, still high after an incident, do not lift
        the ordinary points that follow it.
        """
        if st.in_episode:
            p_point = min(max(p_point, 1e-300), 1.0)
            again = self.alert_p * p_point / (st.episode_p * self.worse)
            st.episode_p = min(st.episode_p, p)
            st.quiet = st.quiet + 1 if p >= self.quiet_p else 0
            if st.quiet >= self.refractory:
                st.in_episode, st.episode_p = 0, 1.0
            if again < self.alert_p:
                return again, False
            return p_point, True
        if p < self.alert_p:
            st.in_episode, st.episode_p, st.quiet = 1, p, 0
        return p, False

    @staticmethod
    def _add_calibration(st: _Series, stats: tuple[float, ...]) -> None:
        """Learn every point, each statistic winsorised at its alert level: anomalies keep their rank in the
        calibration (censoring them would thin the tail and spiral) but cannot stretch the fitted tail."""
        st.pending.append([min(s, t[4], 1e30) for s, t in zip(stats, st.tails, strict=True)])  # float32-safe

    @staticmethod
    def _flush(st: _Series) -> None:
        """Move the pending test values into the calibration ring (batched: one numpy write per refit)."""
        if not st.pending:
            return
        c, rows = st.cal.shape[1], st.pending[-st.cal.shape[1] :]
        idx = (st.cal_pos + np.arange(len(rows))) % c
        st.cal[:, idx] = np.asarray(rows, dtype=np.float32).T
        st.cal_pos = int(idx[-1] + 1) % c
        st.n_cal = min(st.n_cal + len(st.pending), c)
        st.pending.clear()

    def _push(self, st: _Series, x: float) -> None:
        st.vals[st.pos] = x
        st.pos = (st.pos + 1) % len(st.vals)
        st.n += 1
        w = self.level_window
        if st.n >= w and (st.n % self.refresh == 0 or not st.scale):
            recent = np.sort(last(st.vals, st.pos, w))
            st.level = 0.5 * float(recent[(w - 1) // 2] + recent[w // 2])
            if st.n % (self.refresh * 4) == 0 or not st.scale:
                self._refit(st)

    def _refit(self, st: _Series) -> None:
        """Refit the scale, the calibration tails and (less often) the period from the ring buffers."""
        early = last(st.vals, st.pos, self.level_window) - st.level
        st.scale = robust_scale(st.res[: min(st.n_res, len(st.res))] if st.n_res >= 16 else early, st.level)
        # A series that moves in steps (a counter: 0, 1, 2) varies at least by its rounding, SD step/sqrt(12):
        # with a scale of 0 a single request on a quiet route was a z of 10^300.
        kept = last(st.vals, st.pos, min(st.n, len(st.vals)))
        step = resolution(kept)
        st.scale = max(st.scale, QUANTUM_SD * step)
        if not st.n_res:  # the variance statistic starts at the spread of the first window (0 for a flat one)
            st.ew_var = float(np.mean(np.minimum((early / st.scale) ** 2, CLIP_Z**2)))
        st.base = float(np.median(kept))
        self._flush(st)
        if st.n_cal >= 32:
            self._fit_tails(st, step / st.scale)
        if st.n % (self.refresh * 32) == 0:
            self._fit_period(st)

    def _fit_tails(self, st: _Series, step: float) -> None:
        """`step`: the series' resolution in robust SDs. The spike and drift statistics move on that lattice,
        and their tails fall at most one e-fold per step: without it, the first 1 of a quiet counter whose
        calibration held only zeros was p = 1e-17. (The same floor on the level test cost NAB 3.9 points.)"""
        srt = np.sort(st.cal[:, : st.n_cal], axis=1).astype(np.float64)
        floors = np.maximum([step, 0.0, 0.0, step, 0.0], 0.1)  # 0.1: never steeper (values in robust SDs)
        tails, grid = fit_tails(srt, self.alert_p, TAIL_SHARE, GRID, floors)
        st.tails, st.grid, st.fitted = tails.tolist(), grid.tolist(), 1

    def _fit_period(self, st: _Series) -> None:
        """Use the strongest autocorrelation period when it clearly explains the series better than its level."""
        x = last(st.vals, st.pos, min(st.n, len(st.vals)))
        found, w = find_period(x), self.level_window
        new = seasonal_gain(x, found, w) if found else (1.0, None, None)
        cur = seasonal_gain(x, st.period, w) if st.period else (1.0, None, None)
        if st.period and cur[0] < SEASONAL_KEEP and cur[0] <= new[0]:
            return  # hysteresis: the period in use stays while it still helps, so the model does not flip
        period, res = (found, new[1]) if new[0] < SEASONAL_GAIN else (0, cur[2])
        if (
            period != st.period and res is not None
        ):  # re-take the residuals behind the scale for the new model
            m = min(len(res), len(st.res))
            st.res[:m], st.n_res = res[-m:], m
        st.period = period

    def state(self) -> State:
        sts = list(self.series.values())
        for st in sts:
            self._flush(st)
        config = {k: getattr(self, k) for k in _CONFIG}
        shapes = {"vals": (self.history,), "res": (min(self.history, 256),), "cal": (N_STATS, self.calib)}
        shapes |= {"tails": (N_STATS, 5), "grid": (N_STATS, GRID)}
        n = len(sts)
        arrays: dict[str, np.ndarray] = {
            k: np.array([getattr(t, k) for t in sts], np.float64).reshape(n, *v) for k, v in shapes.items()
        }
        arrays["floats"] = np.array([[getattr(t, f) for f in FLOATS] for t in sts]).reshape(n, len(FLOATS))
        arrays["ints"] = np.array([[getattr(t, f) for f in INTS] for t in sts], np.int64).reshape(
            n, len(INTS)
        )
        return {"config": config, "keys": list(self.series)}, arrays

    @classmethod
    def from_state(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> SeriesDetector:
        det = cls(**values["config"])
        for i, key in enumerate(values["keys"]):
            st = _Series.new(det.history, det.calib)
            st.vals[:], st.res[:] = arrays["vals"][i], arrays["res"][i]
            # A state saved before the drift or shape statistic has fewer rows: the drift row starts empty and
            # ranks nothing (p = 1) until the next refit, and the long-run level is taken at that refit too; the
            # shape test waits until its row holds `calib` values of its own (`shape_from`).
            saved = len(arrays["cal"][i])
            st.cal[:saved] = arrays["cal"][i]
            for f, v in zip(FLOATS, arrays["floats"][i].tolist(), strict=False):
                setattr(st, f, v)
            for f, v in zip(INTS, arrays["ints"][i].tolist(), strict=False):
                setattr(st, f, v)
            if saved < N_STATS:
                st.shape_from = st.n
            st.tails[:saved], st.grid[:saved] = arrays["tails"][i].tolist(), arrays["grid"][i].tolist()
            st.grid[saved:] = [[math.inf] * GRID for _ in range(N_STATS - saved)]
            det.series[key] = st
        return det
