"""Calibration: raw k-NN distances to tail p-values and 0-100 scores, fitted per time block (docs/detection.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

P_FLOOR = 1e-6  # the tail probability that maps to score 100


TAIL_Q = 0.99  # the tail starts at this quantile of the reference distances (large reference sets)


TAIL_Q_MIN = 0.9  # ... or lower, down to this, so that the tail fit has about TAIL_MIN points


TAIL_MIN = 50


# Calibration over time blocks: every quantile, the tail's start and its mean excess are taken per block, then
# the CAL_BLOCK_Q-th of each across blocks, so an incident in under 10% of the blocks does not set the tail
# while the ordinary variation between blocks (rare normal events cluster in time too) stays in.
CAL_BLOCK_ROWS = 1_000  # rows per block at least; CAL_BLOCKS_MIN..MAX blocks


CAL_BLOCKS_MIN = 8


CAL_BLOCKS_MAX = 64


CAL_GRID = 20_000  # points of the synthesized typical distribution


CAL_BLOCK_Q = 0.9


def pvalue_to_score(p: np.ndarray | float) -> np.ndarray:
    """0-100: 100 * -log10(p) / 6, so p = 1e-3 scores 50 and p <= P_FLOOR scores 100."""
    p = np.clip(np.asarray(p, dtype=np.float64), P_FLOOR, 1.0)
    return 100.0 * (-np.log10(p)) / (-math.log10(P_FLOOR))


XI_MAX = (
    0.9  # the generalised Pareto shape is kept in [0, XI_MAX]: never a bounded tail, never an infinite mean
)


def gpd_fit_rows(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Pareto (scale, shape) of each row of sorted threshold excesses by probability-weighted moments
    (Hosking & Wallis 1987), the shape in [0, XI_MAX]; a row without spread gets the exponential (its mean, 0)."""
    k = y.shape[1]
    a0 = y.mean(axis=1)
    a1 = (y * (1.0 - (np.arange(1, k + 1) - 0.35) / k)).mean(axis=1)
    d = a0 - 2.0 * a1
    ok = (a0 > 1e-12) & (d > 1e-12)
    safe = np.where(ok, d, 1.0)
    xi = np.where(ok, np.clip(2.0 - a0 / safe, 0.0, XI_MAX), 0.0)
    return np.where(xi > 0, 2.0 * a0 * a1 / safe, a0), xi


def gpd_fit(excess: np.ndarray) -> tuple[float, float]:
    """`gpd_fit_rows` of one sample of excesses. Real score tails are heavier than exponential: an exponential
    fitted to the top percent calls a distance three times the tail's scale one-in-a-billion when it is one in a
    few thousand."""
    y = np.sort(np.asarray(excess, dtype=np.float64))
    if len(y) < 3 or y.mean() <= 0:
        return max(float(y.mean()) if len(y) else 0.0, 1e-9), 0.0
    sigma, xi = gpd_fit_rows(y[None, :])
    return max(float(sigma[0]), 1e-9), float(xi[0])


@dataclass
class Calibration:
    """Tail model of reference distances: empirical up to the tail's start, generalised Pareto beyond."""

    sorted_scores: np.ndarray
    tail_u: float
    tail_beta: float
    tail_q: float = TAIL_Q
    tail_xi: float = 0.0

    @classmethod
    def fit(
        cls,
        scores: np.ndarray,
        times: np.ndarray | None = None,
        grid: int = CAL_GRID,
        block_q: float = CAL_BLOCK_Q,
        block_rows: int = CAL_BLOCK_ROWS,
        min_blocks: int = CAL_BLOCKS_MIN,
    ) -> Calibration:
        """Fit on reference distances; with their `times`, over time blocks (robust to incidents in history)."""
        scores = np.asarray(scores, dtype=np.float64)
        n_blocks = min(CAL_BLOCKS_MAX, len(scores) // block_rows)
        if times is not None and n_blocks >= min_blocks:
            return cls._fit_blocks(scores, np.asarray(times), n_blocks, grid, block_q)
        s = np.sort(scores)
        # At least ~TAIL_MIN exceedances for the tail fit: with a small reference set the 99th percentile
        # leaves two or three points, and their spread alone would set the whole tail.
        q = float(np.clip(1.0 - TAIL_MIN / max(len(s), 1), TAIL_Q_MIN, TAIL_Q))
        u = float(np.quantile(s, q)) if len(s) else 0.0
        excess = s[s > u] - u
        if not len(excess):
            return cls(s, u, max(u * 0.1, 1e-6), q)
        beta, xi = gpd_fit(excess)
        return cls(s, u, max(beta, 1e-9), q, xi)

    @classmethod
    def _fit_blocks(
        cls,
        scores: np.ndarray,
        times: np.ndarray,
        n_blocks: int,
        grid: int = CAL_GRID,
        block_q: float = CAL_BLOCK_Q,
    ) -> Calibration:
        """At every quantile level, and for the tail's start and mean excess, the `block_q`-th value over time
        blocks (CAL_BLOCK_Q unless the member says otherwise). An incident fills the top of the blocks it falls in only, so new rows like it stay beyond the
        threshold instead of being calibrated as normal."""
        blocks = np.array_split(scores[np.argsort(times, kind="stable")], n_blocks)
        q = float(np.clip(1.0 - TAIL_MIN / len(blocks[0]), TAIL_Q_MIN, TAIL_Q))
        levels = (np.arange(grid) + 0.5) / grid
        grid = np.quantile(np.stack([np.quantile(b, levels) for b in blocks]), block_q, axis=0)
        us = np.asarray([np.quantile(b, q) for b in blocks])
        fits = np.asarray(
            [gpd_fit(b[b > u] - u) if (b > u).any() else (0.0, 0.0) for b, u in zip(blocks, us, strict=True)]
        )
        u = float(np.quantile(us, block_q))
        # The tail's start and scale at the block_q-th block; its shape is the distribution's, and the median
        # over blocks is its estimate (a high quantile of per-block shape estimates would be their noise).
        beta, xi = float(np.quantile(fits[:, 0], block_q)), float(np.median(fits[:, 1]))
        return cls(np.sort(grid), u, max(beta, 1e-9, u * 1e-3), q, xi)

    def pvalue(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        n = len(self.sorted_scores)
        above = n - np.searchsorted(self.sorted_scores, raw, side="left")
        p_emp = (above + 1) / (n + 1)
        p_tail = (1 - self.tail_q) * self._tail_sf(np.maximum(raw - self.tail_u, 0.0) / self.tail_beta)
        return np.where(raw > self.tail_u, p_tail, p_emp)

    def _tail_sf(self, y: np.ndarray) -> np.ndarray:
        if self.tail_xi < 1e-6:
            return np.exp(-y)
        return np.power(1.0 + self.tail_xi * y, -1.0 / self.tail_xi)

    def share_at_least(self, raw: np.ndarray) -> np.ndarray:
        """The share of the calibration scores at or above raw (0 beyond the largest): no extrapolation."""
        raw = np.asarray(raw, dtype=np.float64)
        n = len(self.sorted_scores)
        return (n - np.searchsorted(self.sorted_scores, raw, side="left")) / max(n, 1)

    def score(self, raw: np.ndarray) -> np.ndarray:
        return pvalue_to_score(self.pvalue(raw))

    def raw_at(self, p: float) -> float:
        """The raw distance whose tail probability is p (inverse of `pvalue`)."""
        if p >= 1 - self.tail_q:
            return float(np.quantile(self.sorted_scores, 1 - p)) if len(self.sorted_scores) else 0.0
        r = (1 - self.tail_q) / p
        if self.tail_xi < 1e-6:
            return self.tail_u + self.tail_beta * math.log(r)
        return self.tail_u + self.tail_beta * (r**self.tail_xi - 1.0) / self.tail_xi


def calibration_to_arrays(cal: Calibration, prefix: str) -> dict[str, np.ndarray]:
    """A calibration as named arrays (for a state file: never pickled)."""
    return {
        prefix + "scores": cal.sorted_scores,
        prefix + "tail": np.asarray([cal.tail_u, cal.tail_beta, cal.tail_q, cal.tail_xi], dtype=np.float64),
    }


def calibration_from_arrays(arrays: dict[str, np.ndarray], prefix: str) -> Calibration:
    tail = arrays[prefix + "tail"]
    xi = float(tail[3]) if len(tail) > 3 else 0.0
    return Calibration(
        arrays[prefix + "scores"].astype(np.float64), float(tail[0]), float(tail[1]), float(tail[2]), xi
    )
