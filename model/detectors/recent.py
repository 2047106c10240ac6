"""Recent-traffic calibration: a member's p-value must also be extreme against the traffic it sees now.

Each member is calibrated on its training window. Real telemetry drifts and has heavier tails than any
training window shows: a member whose training calibration calls one row in a hundred of today's ordinary
traffic a one-in-a-million event would flood the ensemble. For every (member, signal) the ensemble keeps
the member's recent raw scores (seeded with its out-of-sample training scores) and a calibration of them
over time blocks (model.calibration: an incident in a few blocks does not set the tail, so a recurring
incident is not absorbed); the p-value used is the larger of the training one and the share of recent
scores at least as high (an empirical null, in Efron's sense, kept online). Beyond every recent score the
member's own p-value stands: recent traffic then holds no evidence against it. For the members whose scores
shift as a whole when a source drifts (k-NN, isolation), the null's location is also taken from recent traffic
(`RecentCenter`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtri

from model.calibration import CAL_BLOCK_Q, Calibration, calibration_from_arrays, calibration_to_arrays

WINDOW = 50_000  # recent raw scores kept per (member, signal)
MIN_ROWS = 50  # below this many recent scores the training calibration stands alone
REFIT_EVERY = 20_000  # rows between refits of the recent calibration
GRID = 2_000  # quantile levels of its typical distribution (the check needs shares down to about 1e-3)
# The recent calibration is taken over time blocks: 16 blocks of at least 62 rows (SMALL_BLOCK_ROWS below 992). A
# window after a cold start is small, and calibrated as one pool, an incident in it was recent traffic's tail for
# every batch after it. Sixteen blocks, not model.calibration's minimum of 8: the 90th percentile of 16 lies below
# the top two, so an incident that spans two blocks does not set the tail either (of 8, it is 30 % the top one).
BLOCK_ROWS = 62
MIN_BLOCKS = 16
# A smaller window is split into 16 blocks of fewer rows, down to this many: pooled, a window of 800 rows let one
# earlier copy of an extreme row (a client's retry) set its tail, and the copy's p-value became 1/800.
SMALL_BLOCK_ROWS = 20


class RecentCalibration:
    """A ring buffer of one member's raw scores (and their times) for one signal, and its calibration."""

    def __init__(self, block_q: float = CAL_BLOCK_Q) -> None:
        self.block_q = block_q
        self.raw = np.zeros(WINDOW, dtype=np.float64)
        self.times = np.zeros(WINDOW, dtype=np.int64)
        self.size = 0
        self.head = 0
        self.since_fit = 0
        self.calibration: Calibration | None = None

    def add(self, raw: np.ndarray, times: np.ndarray) -> None:
        ok = ~np.isnan(raw)
        raw, times = raw[ok][-WINDOW:], times[ok][-WINDOW:]
        for lo in range(0, len(raw), WINDOW):
            part = slice(lo, lo + WINDOW)
            n = len(raw[part])
            idx = (self.head + np.arange(n)) % WINDOW
            self.raw[idx], self.times[idx] = raw[part], times[part]
            self.head = (self.head + n) % WINDOW
            self.size = min(WINDOW, self.size + n)
        self.since_fit += len(raw)
        # Refit after REFIT_EVERY rows, or after a tenth of the window is new while the window is small.
        due = self.since_fit >= min(REFIT_EVERY, max(MIN_ROWS, self.size // 10))
        if self.size >= MIN_ROWS and (self.calibration is None or due):
            rows = min(BLOCK_ROWS, max(SMALL_BLOCK_ROWS, self.size // MIN_BLOCKS))
            self.calibration = Calibration.fit(
                self.raw[: self.size], self.times[: self.size], GRID, self.block_q, rows, MIN_BLOCKS
            )
            self.since_fit = 0

    def pvalues(self, raw: np.ndarray) -> np.ndarray | None:
        if self.calibration is None:
            return None
        return np.where(np.isnan(raw), 1.0, self.calibration.share_at_least(np.nan_to_num(raw)))

    def state(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        values = {"size": self.size, "head": self.head, "since_fit": self.since_fit, "block_q": self.block_q}
        arrays = {
            prefix + "raw": self.raw[: self.size].copy(),
            prefix + "times": self.times[: self.size].copy(),
        }
        values["calibrated"] = self.calibration is not None
        if self.calibration is not None:
            arrays.update(calibration_to_arrays(self.calibration, prefix + "cal_"))
        return values, arrays

    @classmethod
    def from_state(
        cls, values: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str
    ) -> RecentCalibration:
        rc = cls(float(values.get("block_q", CAL_BLOCK_Q)))
        rc.size, rc.head, rc.since_fit = int(values["size"]), int(values["head"]), int(values["since_fit"])
        rc.raw[: rc.size] = arrays[prefix + "raw"]
        rc.times[: rc.size] = arrays[prefix + "times"]
        if values.get("calibrated"):
            rc.calibration = calibration_from_arrays(arrays, prefix + "cal_")
        return rc


# The empirical null's location (Efron 2004): under a calibrated member the lower quartile of its z-values
# (z = Phi^-1(1 - p)) is -0.674. When the latest CENTER_ROWS rows' lower quartile lies above it, the whole of
# recent traffic is more novel than the training window (a deploy, a drifted source): z-values are judged
# against the shifted null. A quartile moves only when three quarters of those rows are more novel, so an
# incident in fewer of them is judged as before (of the latest 1,000 rows, an incident flooding a signal moved
# it; docs/detection.md §6).
CENTER_ROWS = 5_000
CENTER_MIN = 50
CENTER_Q = 0.25
_Z_Q = float(ndtri(CENTER_Q))  # the lower quartile of N(0, 1): -0.674


def zvalues(p: np.ndarray) -> np.ndarray:
    """z = Phi^-1(1 - p), finite for p in [1e-300, 1]."""
    return -ndtri(np.clip(p, 1e-300, 1.0 - 1e-12))


class RecentCenter:
    """The latest z-values of one member for one signal, and the shift of their lower quartile."""

    def __init__(self, z: np.ndarray | None = None) -> None:
        self.z = np.zeros(0) if z is None else np.asarray(z, dtype=np.float64)[-CENTER_ROWS:]

    def shift(self, z: np.ndarray, learn: bool = True) -> float:
        """How far the null's location lies above 0, from the latest rows with the batch's `z` after them;
        with `learn`, those become the latest rows."""
        pool = np.concatenate([self.z, z])[-CENTER_ROWS:]
        if learn:
            self.z = pool
        if len(pool) < CENTER_MIN:
            return 0.0
        return max(0.0, float(np.quantile(pool, CENTER_Q)) - _Z_Q)
