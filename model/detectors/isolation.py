"""Isolation: scikit-learn's IsolationForest on the contract features (robust-scaled numerics and the rarity
of every categorical value), a global view that needs no neighbours.

Split-conformal: the forest is fitted on one half of the rows and calibrated on the other, over time blocks
(`model.calibration`), so an incident in the training window fills the top of its own blocks only. It learns:
normal rows enter a reservoir sample, and the forest is refitted from it every `refit_every` rows, so a new
service or template stops looking isolated once it is ordinary traffic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

from model.calibration import Calibration, calibration_from_arrays, calibration_to_arrays
from model.detectors.base import Detector, Frame, State
from model.vocabulary import label, show


def features(frame: Frame) -> np.ndarray:
    """(n, n_numeric + n_categorical) float32: scaled numerics, then -log training frequency per category."""
    cached = frame.cache.get("isolation.x")
    if cached is None:
        cached = np.hstack([frame.num, frame.contract.rarity_matrix(frame.cat)]).astype(np.float32)
        frame.cache["isolation.x"] = cached
    return cached


class IsolationMember(Detector):
    """IsolationForest raw score (higher = easier to isolate), calibrated on held-out rows."""

    name = "isolation"
    view = "features"  # the contract features, as k-NN does (through them and their embedding)
    global_novelty = True
    center_check = True
    signals = frozenset({"logs", "traces"})

    def __init__(
        self, n_estimators: int = 100, max_rows: int = 4096, refit_every: int = 20_000, seed: int = 0
    ) -> None:
        self.n_estimators = n_estimators
        self.max_rows = max_rows
        self.refit_every = refit_every
        self.seed = seed
        self.seen = 0  # normal rows offered to the reservoir
        self.since_refit = 0
        self.reservoir = np.zeros((0, 0), dtype=np.float32)
        self.fit_rows = np.zeros((0, 0), dtype=np.float32)

    def _forest(self, x: np.ndarray) -> IsolationForest:
        forest = IsolationForest(
            n_estimators=self.n_estimators, max_samples=min(256, len(x)), random_state=self.seed
        )
        return forest.fit(x)

    def _fit_split(self, x: np.ndarray, times: np.ndarray | None) -> None:
        """Fit on the even rows of a seeded shuffle, calibrate on the odd ones."""
        order = np.random.default_rng(self.seed + self.seen).permutation(len(x))
        self.fit_rows = np.ascontiguousarray(x[order[0::2]])
        held = order[1::2]
        self.forest = self._forest(self.fit_rows)
        raw = -self.forest.score_samples(x[held])
        self.calibration = Calibration.fit(raw, None if times is None else times[held], block_q=self.block_q)
        self.fit_raw_ = np.full(len(x), np.nan)
        self.fit_raw_[held] = raw

    def fit(self, frame: Frame) -> IsolationMember:
        x = features(frame)
        if len(x) < 20:
            raise ValueError(f"the isolation member needs at least 20 rows, got {len(x)}")
        self._fit_split(x, frame.times_ns)
        keep = np.linspace(0, len(x) - 1, min(len(x), self.max_rows)).astype(np.int64)
        self.reservoir = np.ascontiguousarray(x[keep])
        self.seen = len(x)
        return self

    def score_samples(self, frame: Frame) -> np.ndarray:
        if not len(frame):
            return np.zeros(0)
        return -self.forest.score_samples(features(frame))

    def pvalues(self, frame: Frame, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        return np.where(np.isnan(raw), 1.0, np.clip(self.calibration.pvalue(np.nan_to_num(raw)), 1e-300, 1.0))

    def learn(self, frame: Frame, normal: np.ndarray) -> None:
        """Reservoir-sample the normal rows (Algorithm R, seeded); refit after `refit_every` of them."""
        x = features(frame)[np.asarray(normal, dtype=bool)]
        rng = np.random.default_rng(self.seed + self.seen)
        free = max(self.max_rows - len(self.reservoir), 0)
        if free:  # fill first, in one copy
            self.reservoir = np.vstack([self.reservoir, x[:free]])
        draws = rng.integers(0, self.seen + free + 1 + np.arange(len(x) - min(free, len(x))))
        for row, j in zip(x[free:], draws, strict=True):
            if j < self.max_rows:
                self.reservoir[j] = row
        self.seen += len(x)
        self.since_refit += len(x)
        if self.since_refit >= self.refit_every and len(self.reservoir) >= 200:
            self._fit_split(self.reservoir, None)
            self.since_refit = 0

    def explain(self, frame: Frame, i: int, raw: float, p: float) -> str:
        """The value furthest from the reservoir's typical one, in the row's own terms."""
        x = features(frame)[i]
        if "isolation.typical" not in frame.cache:
            ref = self.reservoir if len(self.reservoir) else self.fit_rows
            med = np.median(ref, axis=0)
            frame.cache["isolation.typical"] = (med, np.median(np.abs(ref - med), axis=0) + 0.5)
        med, mad = frame.cache["isolation.typical"]
        j = int(np.argmax(np.abs(x - med) / mad))
        contract = frame.contract
        names = contract.numeric_names()
        if j < len(names):
            name = names[j]
            value = frame.derived[i].get(name)
            shown = show(name, value) if value is not None else contract.display(frame.derived[i], name)
            return f"{label(name)} {shown} is far from its usual range (isolation score {raw:.2f})"
        name = contract.categorical[j - len(names)]
        shown = contract.display(frame.derived[i], name)
        if name in ("severity_id", "status_id"):
            shown = show(name, shown)
        share = 100.0 * float(np.exp(-x[j]))
        return f"{label(name)} {shown} is rare (about {share:.2g} % of history)"

    def state(self) -> State:
        values = {
            "n_estimators": self.n_estimators,
            "max_rows": self.max_rows,
            "refit_every": self.refit_every,
            "seed": self.seed,
            "seen": self.seen,
            "since_refit": self.since_refit,
        }
        arrays = {"reservoir": self.reservoir, "fit_rows": self.fit_rows}
        arrays.update(calibration_to_arrays(self.calibration, "cal_"))
        return values, arrays

    @classmethod
    def from_state(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> IsolationMember:
        det = cls(
            int(values["n_estimators"]),
            int(values["max_rows"]),
            int(values["refit_every"]),
            int(values["seed"]),
        )
        det.seen, det.since_refit = int(values["seen"]), int(values["since_refit"])
        det.reservoir = arrays["reservoir"].astype(np.float32)
        det.fit_rows = arrays["fit_rows"].astype(np.float32)
        det.forest = det._forest(det.fit_rows)  # seeded: the same rows give the same forest
        det.calibration = calibration_from_arrays(arrays, "cal_")
        return det
