"""Pure statistics of the series member (model/detectors/series.py): ring buffers, robust scale, resolution,
period finding and the calibration tails of its tests (generalised Pareto, model.calibration)."""

from __future__ import annotations

import math

import numpy as np

from model.calibration import gpd_fit, gpd_fit_rows

EPS, TINY = 1e-12, float(np.finfo(np.float64).tiny)
# The member's statistics, in the order of its saved calibration rows ("drift" from the long-run level only
# ranks), and the window of the shape test.
STATS = ("spike", "level", "variance", "drift", "shape")
SHAPE_POINTS = 32


def last(ring: np.ndarray, pos: int, n: int) -> np.ndarray:
    """A copy of the last n values of a ring buffer whose next write position is pos, oldest first."""
    if n <= pos:
        return ring[pos - n : pos].copy()
    return np.concatenate((ring[len(ring) - (n - pos) :], ring[:pos]))


def robust_scale(r: np.ndarray, level: float) -> float:
    """1.4826 MAD, falling back to the mean absolute deviation, then to a tiny share of the level."""
    dev = np.abs(r - float(np.median(r)))
    mad, mean_dev = 1.4826 * float(np.median(dev)), 1.2533 * float(np.mean(dev))
    return mad if mad > 0.0 else (mean_dev if mean_dev > 0.0 else max(1e-6 * abs(level), TINY))


def resolution(x: np.ndarray) -> float:
    """The smallest non-zero step between consecutive values (1 for a counter, ~0 for a continuous gauge)."""
    d = np.abs(np.diff(x))
    d = d[d > 0.0]
    return float(d.min()) if len(d) else 0.0


def find_period(x: np.ndarray, min_lag: int = 4, min_acf: float = 0.3) -> int:
    """The lag of the highest local maximum of the autocorrelation within a third of the history, or 0."""
    n = len(x)
    if n < 3 * min_lag + 3:
        return 0
    f = np.fft.rfft(x - np.mean(x), 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[: n // 3 + 1]
    if acf[0] <= EPS:
        return 0
    acf = acf / acf[0]
    lags = np.arange(min_lag, len(acf) - 1)
    peaks = lags[(acf[lags] > acf[lags - 1]) & (acf[lags] >= acf[lags + 1]) & (acf[lags] > min_acf)]
    return int(peaks[np.argmax(acf[peaks])]) if len(peaks) else 0


def seasonal_gain(
    x: np.ndarray, period: int, window: int
) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """Robust scale of seasonal-median residuals over that of rolling-level residuals (lower = seasonal helps),
    and both residual series."""
    start = max(3 * period, window)
    if len(x) - start < 32:
        return 1.0, None, None
    t = np.arange(start, len(x))
    s_res = x[t] - np.median(np.stack([x[t - k * period] for k in (1, 2, 3)]), axis=0)
    l_res = x[t] - np.median(np.lib.stride_tricks.sliding_window_view(x, window)[t - window], axis=1)
    return robust_scale(s_res, 0.0) / max(robust_scale(l_res, 0.0), EPS), s_res, l_res


def fit_tails(
    srt: np.ndarray, alert_p: float, tail_share: float, grid: int, beta_floor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per test (row of sorted calibration values): threshold u at the top `tail_share` (at least 8 values
    above), a generalised Pareto fit to the excesses (scale at least `beta_floor`), and the cap at which the
    test alone would reach `alert_p` (the series member winsorises calibration values there), as rows
    [u, beta, xi, tail share, cap]; and the quantile grid below u (`grid` values per test)."""
    n_stats, m = srt.shape
    k = max(8, int(m * tail_share))
    u = srt[:, m - k - 1]
    beta, xi = gpd_fit_rows(srt[:, m - k :] - u[:, None])
    share = np.full(n_stats, (k + 1.0) / (m + 1.0))
    thin = np.zeros(n_stats, dtype=bool)
    # An atom at the bottom (a sparse counter's statistics are mostly exactly 0, so u is the smallest value too):
    # the tail is what lies strictly above it, with its own share, not excesses of 0 that make it look steep;
    # fewer than 8 above get an exponential tail and no cap (values are not winsorised until the tail has seen
    # a few moves: capped at a cap fitted to zeros, the counter's ordinary 1s could never be learned). Ties
    # higher up are values winsorised at a cap: they lie at or above it, not on it, and keep the plain fit.
    for j in np.flatnonzero((srt[:, m - k] <= u) & (u <= srt[:, 0])):
        exc = srt[j, m - k :] - u[j]
        exc = exc[exc > 0.0]
        share[j] = (len(exc) + 1.0) / (m + 1.0)
        beta[j], xi[j] = gpd_fit(exc) if len(exc) >= 8 else (float(exc.mean()) if len(exc) else 0.0, 0.0)
        thin[j] = len(exc) < 8
    beta = np.maximum(beta, beta_floor)
    q = np.minimum(alert_p / share, 1.0)
    y = np.where(xi < 1e-6, -np.log(q), (q ** (-np.maximum(xi, 1e-6)) - 1.0) / np.maximum(xi, 1e-6))
    tails = np.stack([u, beta, xi, share, np.where(thin, 1e30, u + beta * y)], axis=1)  # 1e30: float32-safe
    return tails, srt[:, np.linspace(0, m - k - 1, grid).round().astype(np.int64)]


def window_novelty(hist: np.ndarray, x: float, m: int, floor: float) -> float:
    """How unlike every earlier window of the series its latest `m` points (ending with x) are: the distance to
    the nearest earlier window that does not overlap them (the left matrix profile's discord distance, on raw
    values), per point, in robust SDs of the latest 256 values (at least `floor`). 0 while fewer than 32 such
    windows exist.

    Squared distances as |a|^2 - 2 a.b + |b|^2, with a sliding dot product and cumulative sums of squares (no
    window copies), on values centred first so that a series far from 0 keeps its precision."""
    n = len(hist)
    k = n - 2 * m + 2  # earlier windows: those starting at 0 .. k-1 end before the latest m points begin
    if k < 32:
        return 0.0
    center = float(hist.mean())
    h = hist - center
    now = np.append(h[n - m + 1 :], x - center)
    dots = np.correlate(h[: k - 1 + m], now, "valid")
    sq = np.concatenate(([0.0], np.cumsum(h * h)))
    d2 = (sq[m : m + k] - sq[:k]) - 2.0 * dots + float(now @ now)
    # the spread of the latest values, taken at every point (refreshed with the member's refits every 32
    # points, or without robust_scale's fallbacks for a mostly constant stretch, it measured worse)
    recent = hist[-256:]
    scale = robust_scale(recent, float(np.median(recent)))
    return math.sqrt(max(float(d2.min()), 0.0)) / (max(scale, floor, TINY) * math.sqrt(m))
