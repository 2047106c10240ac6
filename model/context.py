"""Context features: what a single row cannot say about itself (rates, bursts, first-seen pairs, series baselines).

The tracker is updated in time order, row by row, so a row's features depend only on the rows before it;
training and serving use the same code path, which keeps the two consistent.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np

from model import context_state as cs
from model.statefile import StateFileError
from model.windows import Windows, lru_entry

NAN = float("nan")

# Windowed counters: (feature name, window in ms).
TEMPLATE_RATE = ("ctx.template_share_60s", 60_000)
SERVICE_ROWS = ("ctx.service_rows_60s", 60_000)
SERVICE_FAIL = ("ctx.service_failures_60s", 60_000)
SOURCE_FAIL = ("ctx.source_failures_300s", 300_000)

# Entity pairs whose history is counted: a first-seen pair (a user from a new country) stands out.
PAIRS = (
    ("ctx.seen_user_country", "actor.user.name", "src_endpoint.location.country"),
    ("ctx.seen_user_agent", "actor.user.name", "ua_family"),
    ("ctx.seen_user_route", "actor.user.name", "url_template"),
    ("ctx.seen_user_source", "actor.user.name", "src_subnet"),
)

SERIES = ("ctx.series_z", "ctx.series_log_ratio", "ctx.series_change")
# Latency against the operation's own recent baseline: log duration z-scored per (service, operation).
LATENCY_Z = "ctx.latency_z"
# A latency burst: how many more slow rows (latency z >= SLOW_Z) the service's last 60 s held than its own
# slow share predicts, in Poisson units, set on slow rows only. A raw share calls a lone slow row in a quiet
# minute a burst (1 of 1 is 100%); the excess over the service's baseline does not.
SLOW_EXCESS = ("ctx.slow_excess_60s", 60_000)
SLOW_Z = 3.0
# A failure burst against the service's own failure rate, in the same units (set on failed rows only). An
# absolute share cannot tell a login service that fails 6% of the time from a checkout that suddenly fails 6%.
FAILURE_EXCESS = "ctx.failure_excess_60s"
EXCESS_TAU_MS = 30 * 60_000  # the baseline hit share of both excesses (failures, slow rows) forgets with this

LATENCY_WARMUP = 20  # observations of an operation before its latency z is trusted
LATENCY_ALPHA = (
    0.02  # EWMA weight of one observation at most (outliers learn 20x slower, so a spike stays visible)
)
# Baselines forget by time, not by count, so a busy operation's ten-minute incident does not become its own
# baseline: one observation weighs 1 - exp(-dt / tau), at most the per-observation weight and at least 1/(n+1)
# (a young baseline is the plain mean of everything seen so far).
LATENCY_TAU_MS = 15 * 60_000
SERIES_TAU_MS = 30 * 60_000

# What state() persists besides the pair counts: windowed counters and baselines, by attribute name. Windows
# keep their code-defined length on restore (a window is code, not state); STATE_VERSION versions the layout.
_WINDOWS = ("template", "service_rows", "service_fail", "source_fail", "slow")
_BASELINES = ("series", "latency", "fail_rate", "slow_rate")
# Baselines a state file of an earlier build may lack; they start empty on restore.
_NEW_BASELINES = ("slow_rate",)
STATE_VERSION = 1

# Pair counts saturate: "seen often" is one state, so the feature does not drift as history grows.
PAIR_SATURATION = 20

# Volume-free on purpose (shares and ratios), so a daily traffic rhythm is not an anomaly.
FEATURES = (
    TEMPLATE_RATE[0],
    SERVICE_FAIL[0],
    "ctx.service_failure_ratio_60s",
    FAILURE_EXCESS,
    SOURCE_FAIL[0],
    *(p[0] for p in PAIRS),
    *SERIES,
    LATENCY_Z,
    SLOW_EXCESS[0],
)


# Fixed units (centre, scale) for the features above, not scales fitted to training data: most rows carry 0 in
# them, and a robust scale fitted to mostly-zero data collapses towards 0 and sends a routine value to the clip.
UNITS: dict[str, tuple[float, float]] = {
    TEMPLATE_RATE[0]: (0.0, 0.25),
    SERVICE_FAIL[0]: (0.0, 0.5),
    "ctx.service_failure_ratio_60s": (0.0, 0.05),
    FAILURE_EXCESS: (0.0, 1.0),
    SOURCE_FAIL[0]: (0.0, 0.5),
    **{p[0]: (math.log1p(PAIR_SATURATION), 0.5) for p in PAIRS},  # seen often = 0, first seen = -6
    "ctx.series_z": (0.0, 0.5),
    "ctx.series_log_ratio": (0.0, 0.05),
    "ctx.series_change": (0.0, 0.1),
    LATENCY_Z: (0.0, 1.0),
    SLOW_EXCESS[0]: (0.0, 1.0),
}


class _Series:
    __slots__ = ("mean", "var", "last", "n", "integral", "t_ms")

    def __init__(self) -> None:
        self.t_ms: int | None = None  # time of the last update
        self.integral = True  # every value so far a whole number: a count
        self.mean = 0.0
        self.var = 0.0
        self.last = NAN
        self.n = 0


class ContextTracker:
    """Online context state. `pair_counts` can be primed from training history and saved with a model;
    `state()` / `from_state()` carry the whole state across a restart (model.statefile writes it)."""

    def __init__(
        self,
        max_keys: int = 200_000,
        pair_counts: dict[str, int] | None = None,
        series_alpha: float = 0.05,
        warmup: int = 6,
    ):
        self.template = Windows(TEMPLATE_RATE[1], max_keys)
        self.service_rows = Windows(SERVICE_ROWS[1], max_keys)
        self.service_fail = Windows(SERVICE_FAIL[1], max_keys)
        self.source_fail = Windows(SOURCE_FAIL[1], max_keys)
        self.slow = Windows(SLOW_EXCESS[1], max_keys)
        self.pair_counts: dict[str, int] = dict(pair_counts or {})
        self.series: OrderedDict[str, _Series] = OrderedDict()
        self.latency: OrderedDict[object, _Series] = OrderedDict()
        self.fail_rate: OrderedDict[object, _Series] = OrderedDict()
        self.slow_rate: OrderedDict[object, _Series] = OrderedDict()
        self.max_keys = max_keys
        self.alpha = series_alpha
        self.warmup = warmup

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """All online state as JSON-safe values plus named arrays (model.statefile stores them); no pickle."""
        values: dict[str, Any] = {
            "version": STATE_VERSION,
            "max_keys": self.max_keys,
            "series_alpha": self.alpha,
            "warmup": self.warmup,
        }
        arrays: dict[str, np.ndarray] = {}
        for name in _WINDOWS:
            values[f"windows.{name}"], table = cs.windows_state(getattr(self, name).events)
            cs.pack(f"windows.{name}", table, arrays)
        for name in _BASELINES:
            values[f"baselines.{name}"], table = cs.series_state(getattr(self, name))
            cs.pack(f"baselines.{name}", table, arrays)
        values["pairs"], arrays["pairs.counts"] = cs.counts_state(self.pair_counts)
        return values, arrays

    @classmethod
    def from_state(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> ContextTracker:
        """The tracker `state()` was taken from, LRU order included. Raises StateFileError on a bad state."""
        version = values.get("version")
        if version != STATE_VERSION:
            raise StateFileError(f"context state version {version!r}; this build reads {STATE_VERSION}")
        try:
            tracker = cls(
                max_keys=int(values["max_keys"]),
                series_alpha=float(values["series_alpha"]),
                warmup=int(values["warmup"]),
            )
            for name in _WINDOWS:
                table = cs.unpack(f"windows.{name}", arrays)
                getattr(tracker, name).events = cs.windows_from_state(values[f"windows.{name}"], table)
            for name in _BASELINES:
                if name in _NEW_BASELINES and f"baselines.{name}" not in values:
                    continue
                table = cs.unpack(f"baselines.{name}", arrays)
                setattr(tracker, name, cs.series_from_state(values[f"baselines.{name}"], table, _Series))
            tracker.pair_counts = cs.counts_from_state(values["pairs"], arrays, "pairs.counts")
        except StateFileError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise StateFileError(f"context state is malformed ({e!r})") from e
        return tracker

    @staticmethod
    def pair_keys(values: dict[str, object]) -> list[tuple[str, str | None]]:
        """(feature, pair key or None when either side is missing) for every tracked pair."""
        out = []
        for name, left, right in PAIRS:
            a, b = values.get(left), values.get(right)
            out.append((name, f"{name}|{a}|{b}" if a not in (None, "") and b not in (None, "") else None))
        return out

    def prime(self, values: dict[str, object]) -> None:
        """Count a row's pairs into the history without computing features (training pass one)."""
        for _, key in self.pair_keys(values):
            if key is not None:
                self.pair_counts[key] = self.pair_counts.get(key, 0) + 1

    def update(
        self, values: dict[str, object], t_ms: int, *, learn_pairs: bool = True, exclude_self: bool = False
    ) -> dict[str, float]:
        """Features of one row given everything before it, then add the row to the state.

        Args:
            values: the row's derived values (service, template key, failure flag, pair sides, series value).
            t_ms: the row's time in ms.
            learn_pairs: count this row's pairs into the history (serving); False when primed beforehand.
            exclude_self: subtract the row's own occurrence from primed pair counts (training pass two).
        """
        out: dict[str, float] = {}
        service = values.get("service")
        failed = bool(values.get("failed"))
        same = self.template.add_and_count((service, values.get("template_key")), t_ms)
        rows = self.service_rows.add_and_count(service, t_ms)
        out[TEMPLATE_RATE[0]] = (same + 1) / (rows + 1)
        # A service's failure burst is context for its failures only: a request that succeeded during a
        # burst is not itself anomalous, so it carries zeros rather than the burst's figures.
        if failed:
            fails = self.service_fail.add_and_count(service, t_ms)
            out[SERVICE_FAIL[0]] = math.log1p(fails)
            out["ctx.service_failure_ratio_60s"] = fails / rows if rows else 0.0
        else:
            out[SERVICE_FAIL[0]] = 0.0
            out["ctx.service_failure_ratio_60s"] = 0.0
        fails = self.service_fail.peek(service, t_ms)  # includes this row when it failed
        out[FAILURE_EXCESS] = _excess(self.fail_rate, service, failed, fails, rows, t_ms, self.max_keys)
        source = values.get("src_endpoint.ip")
        if source:
            if failed:
                out[SOURCE_FAIL[0]] = math.log1p(self.source_fail.add_and_count(source, t_ms))
            else:
                out[SOURCE_FAIL[0]] = math.log1p(self.source_fail.peek(source, t_ms))
        else:
            out[SOURCE_FAIL[0]] = NAN
        for name, key in self.pair_keys(values):
            if key is None:
                out[name] = NAN
                continue
            count = self.pair_counts.get(key, 0)
            if exclude_self:
                count = max(count - 1, 0)
            out[name] = math.log1p(min(count, PAIR_SATURATION))
            if learn_pairs:
                self.pair_counts[key] = self.pair_counts.get(key, 0) + 1
        z = out[LATENCY_Z] = self._latency(values, t_ms)
        slow = z >= SLOW_Z  # NaN compares False
        count = self.slow.add_and_count(service, t_ms) + 1 if slow else self.slow.peek(service, t_ms)
        out[SLOW_EXCESS[0]] = _excess(self.slow_rate, service, slow, count, rows, t_ms, self.max_keys)
        series_key, value = values.get("series"), values.get("series_value")
        if series_key is None or not isinstance(value, int | float) or not math.isfinite(value):
            for name in SERIES:
                out[name] = NAN
        else:
            out.update(self._series(str(series_key), float(value), t_ms))
        return out

    def _latency(self, values: dict[str, object], t_ms: int) -> float:
        """z of log(duration) against the (service, operation) baseline; NaN without a duration or history."""
        duration = values.get("latency_ms")
        op = values.get("operation_key")
        if not isinstance(duration, int | float) or not math.isfinite(duration) or duration < 0 or op is None:
            return NAN
        key = (values.get("service"), op)
        s = lru_entry(self.latency, key, _Series, self.max_keys)
        x = math.log1p(float(duration))
        # sd floor 0.1 (about 10% of the duration): a perfectly steady operation does not make noise huge.
        sd = max(math.sqrt(s.var), 0.1)
        z = max(-50.0, min(50.0, (x - s.mean) / sd)) if s.n >= LATENCY_WARMUP else NAN
        if s.n < LATENCY_WARMUP:
            a = 1.0 / (s.n + 1)
        else:
            a = max(_time_weight(LATENCY_ALPHA, s.t_ms, t_ms, LATENCY_TAU_MS), 1.0 / (s.n + 1))
            a = a if abs(z) < 4 else a / 20
        s.t_ms = t_ms if s.t_ms is None else max(s.t_ms, t_ms)
        d = x - s.mean
        s.mean += a * d
        if s.n == 0:
            s.var = 0.0
        elif not abs(z) >= 4:  # outliers move the level slowly but never widen the spread (NaN: warm-up)
            s.var = (1 - a) * (s.var + a * d * d)
        s.n += 1
        return z

    def _series(self, key: str, x: float, t_ms: int) -> dict[str, float]:
        s = lru_entry(self.series, key, _Series, self.max_keys)
        if s.n < self.warmup:
            feats = dict.fromkeys(SERIES, NAN)
        else:
            sd = _series_sd(s, x)
            z = (x - s.mean) / sd
            feats = {
                "ctx.series_z": max(-50.0, min(50.0, z)),
                "ctx.series_log_ratio": math.copysign(math.log1p(abs(x)), x)
                - math.copysign(math.log1p(abs(s.mean)), s.mean),
                "ctx.series_change": max(-50.0, min(50.0, (x - s.last) / (abs(s.last) + 1e-9)))
                if math.isfinite(s.last)
                else NAN,
            }
        # Learn slowly from outlying points so a trend (a leak) stays visible instead of becoming the baseline.
        if s.n == 0:
            s.mean = x
        else:
            z_abs = abs(x - s.mean) / _series_sd(s, x)
            if s.n < self.warmup:
                a = 1.0 / (s.n + 1)
            else:
                a = max(_time_weight(self.alpha, s.t_ms, t_ms, SERIES_TAU_MS), 1.0 / (s.n + 1))
                a = a if z_abs < 4 else a / 10
            d = x - s.mean
            s.mean += a * d
            s.var = (1 - a) * (s.var + a * d * d)
        s.last = x
        s.t_ms = t_ms if s.t_ms is None else max(s.t_ms, t_ms)
        s.integral = s.integral and x == int(x)
        s.n += 1
        return feats


def _excess(
    rates: OrderedDict[object, _Series],
    service: object,
    hit: bool,
    hits: int,
    rows: int,
    t_ms: int,
    max_keys: int,
) -> float:
    """Hits (failures, slow rows) in the service's window beyond its baseline share, in Poisson units; 0 on a row
    that is not a hit. `hits` counts the window's hits (this row's included), `rows` the window's rows before it.

    The baseline is the service's hit share, forgetting by time (tau 30 min); while the window is in excess it
    learns 10x slower, so a ten-minute burst does not become the norm.
    """
    s = lru_entry(rates, service, _Series, max_keys)
    expected = s.mean * (rows + 1)
    z = (hits - expected) / math.sqrt(expected + 1.0)
    a = max(_time_weight(LATENCY_ALPHA, s.t_ms, t_ms, EXCESS_TAU_MS), 1.0 / (s.n + 1))
    if z >= 4 and s.n >= LATENCY_WARMUP:
        a /= 10
    s.mean += a * ((1.0 if hit else 0.0) - s.mean)
    s.t_ms = t_ms if s.t_ms is None else max(s.t_ms, t_ms)
    s.n += 1
    if not hit or s.n <= LATENCY_WARMUP:
        return 0.0
    return max(-50.0, min(50.0, z))


def _time_weight(cap: float, last_ms: int | None, t_ms: int, tau_ms: int) -> float:
    """EWMA weight of an observation dt after the previous one: 1 - exp(-dt/tau), at most `cap`."""
    if last_ms is None:
        return cap
    return min(cap, -math.expm1(-max(t_ms - last_ms, 0) / tau_ms))


def _series_sd(s: _Series, x: float) -> float:
    """The spread a new point is measured against. Counts (integral values) get at least Poisson noise:
    a series that counts 0-3 errors an interval jumping to 4 is not a 6-sigma event."""
    var = s.var
    if s.integral and x == int(x) and s.mean >= 0:
        var += s.mean + 1.0
    return math.sqrt(var) + 1e-9 + 1e-3 * abs(s.mean)
