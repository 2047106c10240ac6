"""The statistics behind the per-operation members (`model.detectors.operation`): a time-forgetting robust
baseline of log latency, the calibrated tail of its z-scores, the exact binomial tail of a failure window, and
the LRU tables of flat entries they keep, persisted as arrays."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np

NS_PER_MIN = 60_000_000_000
# A baseline's warm-up, and the fewest observations forgetting may leave it with: from 50 values the median/MAD
# scale is within about 15 % (MAD's efficiency is 37 %), so a z of 4 is not an estimation error of a z of 3.
MIN_OBS = 50
HUBER_C = 2.0  # residuals are clipped at 2 scales: one row moves a baseline by a bounded step
HUBER_BETA = 0.9205  # E[min(Z², c²)] for a standard normal Z: keeps the clipped scale unbiased
OUTLIER_Z = 4.0  # a row slower than this learns OUTLIER_SLOW times slower
OUTLIER_SLOW = 10.0
SCALE_FLOOR = 0.05  # log units (5 %): a perfectly steady operation does not turn jitter into alerts
EPS_MS = 1e-3  # latencies are taken as log(ms + 1 µs), so a zero duration stays finite
WARM_MULT = 10.0  # a new operation alerts only when this many times slower than its service usually is
TAIL_FROM = 0.10  # the training z's are exponential beyond this upper quantile
ERR_WINDOW_NS, ERR_WINDOW_MAX = 60 * 1_000_000_000, 100  # the recent window: last 60 s, at most 100 rows
# Recent rows kept per entry beyond the current row's own window (so late rows find theirs), and never more than
# ERR_HARD_KEEP: past that a late row on a busy operation loses its window, not memory.
ERR_KEEP, ERR_HARD_KEEP = 4 * ERR_WINDOW_MAX, 16 * ERR_WINDOW_MAX
ERR_MEMORY = 100  # forgetting leaves a failure rate at least this many observations
PRIOR_ROWS = 20.0  # strength of the service's (or all services') rate as prior of an operation's rate
EXCESS_P = 1e-3  # a window this improbable is an incident: its rows learn OUTLIER_SLOW times slower


class Tail:
    """P(Z >= z) of training z's: empirical in the bulk, exponential beyond the TAIL_FROM quantile. Rows the
    baselines treated as outliers (z >= OUTLIER_Z: the training window's incidents among them) are left out, and
    the exponential's scale is the maximum-likelihood one for excesses truncated there, so they cannot fatten
    the tail nor does leaving them out thin it."""

    LEVELS = np.linspace(1.0, TAIL_FROM, 91)

    def __init__(self, qs: np.ndarray | None = None, beta: float = 1.0) -> None:
        self.qs = qs if qs is not None else np.linspace(-3.0, 1.3, len(self.LEVELS))  # standard normal-ish
        self.beta = beta

    @classmethod
    def fit(cls, z: np.ndarray) -> Tail:
        z = z[np.isfinite(z) & (z < OUTLIER_Z)]
        if len(z) < 200:
            return cls()
        qs = np.quantile(z, 1.0 - cls.LEVELS)
        span, mean = OUTLIER_Z - qs[-1], float(np.mean(z[z > qs[-1]] - qs[-1]))
        lo, hi = 0.05, 50.0  # E[excess | excess < span] = b - span / (exp(span / b) - 1) rises with b
        for _ in range(60):
            b = math.sqrt(lo * hi)
            lo, hi = (b, hi) if b - span / math.expm1(min(span / b, 700.0)) < mean else (lo, b)
        return cls(qs, max(math.sqrt(lo * hi), 0.25))

    def sf(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        out = np.ones(len(z))
        ok = np.isfinite(z)
        u = self.qs[-1]
        bulk = np.interp(z[ok], self.qs, self.LEVELS)
        tail = TAIL_FROM * np.exp(-np.maximum(z[ok] - u, 0.0) / self.beta)
        out[ok] = np.where(z[ok] <= u, bulk, tail)
        return np.clip(out, 1e-300, 1.0)

    def isf(self, p: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-300, 1.0)
        bulk = np.interp(p, self.LEVELS[::-1], self.qs[::-1])
        return np.where(p >= TAIL_FROM, bulk, self.qs[-1] + self.beta * np.log(TAIL_FROM / p))


def robust_z(entry: list[Any] | None, x: float, shift: float = 0.0) -> float:
    """Robust z of x against an established baseline entry [m, s, w, n, t, warm-up buffer]; NaN otherwise."""
    if entry is None or entry[3] < MIN_OBS:
        return math.nan
    return (x - shift - entry[0]) / entry[1]


def observe(entry: list[Any], x: float, t: int, tau_ns: float) -> None:
    """Learn x: median/MAD of the first MIN_OBS values, then a time-forgetting Huber M-estimate of location and
    scale whose weight 1/w follows the decayed number of observations w (never below MIN_OBS)."""
    m, s, w, n, last, buf = entry
    if n < MIN_OBS:
        buf.append(x)
        if len(buf) == MIN_OBS:
            v = np.asarray(buf)
            m = float(np.median(v))
            s = max(1.4826 * float(np.median(np.abs(v - m))), SCALE_FLOOR)
            entry[:] = [m, s, float(MIN_OBS), n + 1, t, []]
        else:
            entry[3], entry[4] = n + 1, max(last, t)
        return
    w = max(w * math.exp(-max(t - last, 0) / tau_ns), float(MIN_OBS)) + 1.0
    r = (x - m) / s
    # Only slow outliers learn slowly: a baseline that is too high (one that began inside an incident) hides
    # incidents, so it comes down at the ordinary pace, while one that is too low merely alerts until it rises.
    # Outliers of either side widen the spread slowly.
    a = 1.0 / w if r < OUTLIER_Z else 1.0 / (w * OUTLIER_SLOW)
    b = a if r > -OUTLIER_Z else a / OUTLIER_SLOW
    c = min(max(r, -HUBER_C), HUBER_C)
    entry[0] = m + a * s * c
    entry[1] = max(s * math.sqrt(1.0 - b + b * c * c / HUBER_BETA), SCALE_FLOOR)
    entry[2], entry[3], entry[4] = w, n + 1, max(last, t)


def pack(table: OrderedDict[str, list[Any]], nf: int, ni: int, width: int) -> dict[str, np.ndarray]:
    """Entries [nf floats, ni ints, sequence of width-tuples] as arrays (sequences flattened, with lengths)."""
    rows = list(table.values())
    flat = [v for e in rows for v in e[nf + ni]]
    return {
        "f": np.asarray([e[:nf] for e in rows], dtype=np.float64).reshape(len(rows), nf),
        "i": np.asarray([e[nf : nf + ni] for e in rows], dtype=np.int64).reshape(len(rows), ni),
        "len": np.asarray([len(e[nf + ni]) for e in rows], dtype=np.int64),
        "seq": np.asarray(flat, dtype=np.float64 if width == 1 else np.int64).reshape(len(flat), width),
    }


def unpack(keys: list[str], a: dict[str, np.ndarray], prefix: str) -> OrderedDict[str, list[Any]]:
    ends = np.cumsum(a[prefix + "len"])
    seq, f, ints = a[prefix + "seq"], a[prefix + "f"], a[prefix + "i"]
    out: OrderedDict[str, list[Any]] = OrderedDict()
    for j, key in enumerate(keys):
        chunk = seq[ends[j] - a[prefix + "len"][j] : ends[j]]
        out[key] = [*map(float, f[j]), *map(int, ints[j]), chunk]
    return out


def binomial_tail(k: int, n: int, rate: float) -> float:
    """Exact binomial tail P(X >= k) for X ~ Bin(n, rate): the pmf summed upwards from k by its term ratio (n is
    at most ERR_WINDOW_MAX, so this is at most a hundred steps)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    rate = min(max(rate, 1e-12), 1.0 - 1e-12)
    log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    term = math.exp(log_pmf + k * math.log(rate) + (n - k) * math.log1p(-rate))
    total, odds = term, rate / (1.0 - rate)
    for j in range(k, n):
        term *= (n - j) / (j + 1) * odds
        total += term
        if term < 1e-17 * total and j > n * rate:
            break
    return min(total, 1.0)
