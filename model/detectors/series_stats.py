"""Pure statistics of the series member (model/detectors/series.py): ring buffers, robust scale and period
finding (its generalised Pareto tails are model.calibration.gpd_fit_rows)."""

from __future__ import annotations

import numpy as np

EPS, TINY = 1e-12, float(np.finfo(np.float64).tiny)


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
