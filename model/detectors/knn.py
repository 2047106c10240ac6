"""k-NN on the TabularResNet embeddings: local novelty, "unlike anything in history".

The member wraps `model.detector.KnnDetector` (duplicate-aware reference, cross-block cleaning, per-signal
calibration over time blocks); this file adds what the ensemble needs around it: the detection vector, the
rows that never become reference rows, and the member API.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.detector import KnnDetector
from model.detectors.base import Detector, Frame, State
from model.features import FeatureContract

# The detection vector is the learned embedding plus the weighted numeric features and categorical rarity:
# the embedding is trained to ignore magnitudes and never-seen values, the two explicit parts keep them
# visible to the k-NN distance (docs/detection.md §3).
NUMERIC_WEIGHT = 0.15
RARITY_WEIGHT = 0.1
# Deviations from an entity's own baseline (a latency z, a first-seen pair) are evidence in themselves.
DEVIATION_WEIGHT = 0.5
DEVIATION_FEATURES = (
    "ctx.latency_z",
    "ctx.series_z",
    "ctx.slow_excess_60s",
    "ctx.failure_excess_60s",
    "ctx.seen_user_country",
    "ctx.seen_user_agent",
    "ctx.seen_user_route",
    "ctx.seen_user_source",
)
# Rows this far (in feature units) from their own entity's baseline are incidents by their own history: they
# never become reference rows, so a repeat of the incident cannot find them as its normal neighbours.
DEVIANT_FEATURES = ("ctx.latency_z", "ctx.series_z", "ctx.failure_excess_60s")
DEVIANT_UNITS = 10.0
LEARN_PER_BATCH = 256  # at most this many calm rows of a batch are added (index inserts are the costly part)


def deviant_rows(contract: FeatureContract, num: np.ndarray) -> np.ndarray:
    """(n,) bool: rows with |deviation| >= DEVIANT_UNITS in any of DEVIANT_FEATURES."""
    names = contract.numeric_names()
    cols = [j for j, n in enumerate(names) if n in DEVIANT_FEATURES]
    if not cols:
        return np.zeros(len(num), dtype=bool)
    return (np.abs(num[:, cols]) >= DEVIANT_UNITS).any(axis=1)


def numeric_weights(contract: FeatureContract) -> np.ndarray:
    """(n_numeric,) float32: the weight of each numeric feature in the detection vector."""
    names = contract.numeric_names()
    return np.asarray(
        [DEVIATION_WEIGHT if n in DEVIATION_FEATURES else NUMERIC_WEIGHT for n in names], dtype=np.float32
    )


def detection_vectors(
    contract: FeatureContract, emb: np.ndarray, num: np.ndarray, cat: np.ndarray
) -> np.ndarray:
    """(n, embed_dim + n_numeric + n_categorical) float32: what the k-NN detector measures distances on."""
    return np.ascontiguousarray(
        np.concatenate(
            [emb, numeric_weights(contract) * num, RARITY_WEIGHT * contract.rarity_matrix(cat)], axis=1
        ),
        dtype=np.float32,
    )


class KnnMember(Detector):
    """Mean distance to the k nearest normal rows, calibrated per signal (model.detector.KnnDetector).

    `frame.cache["knn.neighbors"]` holds each scored row's neighbour indices for explanations.
    """

    name = "knn"
    view = "features"  # the contract features and their embedding, as isolation reads the features
    global_novelty = True
    center_check = True
    signals = frozenset({"logs", "traces"})

    def __init__(self, k: int = 10, max_rows: int = 100_000, detector: KnnDetector | None = None) -> None:
        self.k = k
        self.max_rows = max_rows
        self.detector = detector or KnnDetector(k=k, max_rows=max_rows)

    def fit(self, frame: Frame) -> KnnMember:
        if frame.vectors is None:
            raise ValueError("the k-NN member needs detection vectors")
        self.detector.fit(
            frame.vectors,
            [r.uid for r in frame.rows],
            times=frame.times_ns,
            groups=frame.signals,
            deviant=deviant_rows(frame.contract, frame.num),
        )
        self.fit_raw_ = np.full(len(frame), np.nan)
        self.fit_raw_[self.detector.kept_rows_] = self.detector.reference_scores_  # leave-one-out distances
        return self

    def score_samples(self, frame: Frame) -> np.ndarray:
        if frame.vectors is None or not len(frame):
            frame.cache["knn.neighbors"] = np.full((len(frame), 1), -1, dtype=np.int64)
            return np.full(len(frame), np.nan)
        raw, idx = self.detector.decision_function(frame.vectors)
        frame.cache["knn.neighbors"] = idx
        return raw

    def pvalues(self, frame: Frame, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        out = np.ones(len(raw))
        ok = ~np.isnan(raw)
        if ok.any():
            out[ok] = self.detector.pvalue(raw[ok], frame.signals[ok])
        return np.clip(out, 1e-300, 1.0)

    def learn(self, frame: Frame, normal: np.ndarray) -> None:
        """Add up to LEARN_PER_BATCH normal, non-deviant rows to the reference (an even sample of the batch)."""
        if frame.vectors is None:
            return
        calm = np.flatnonzero(normal & ~deviant_rows(frame.contract, frame.num))
        if len(calm) > LEARN_PER_BATCH:
            calm = calm[np.linspace(0, len(calm) - 1, LEARN_PER_BATCH).astype(np.int64)]
        if not len(calm):
            frame.cache["knn.added"] = np.zeros(0, dtype=np.int64)
            return
        added = self.detector.add(frame.vectors[calm], [frame.rows[i].uid for i in calm])
        frame.cache["knn.added"] = calm[np.asarray(added, dtype=np.int64)] if added else np.zeros(0, np.int64)

    def explain(self, frame: Frame, i: int, raw: float, p: float) -> str:
        return f"unlike its nearest normal records (distance {raw:.2f}, p {p:.1e})"

    def state(self) -> State:
        return {"k": self.k, "max_rows": self.max_rows}, self.detector.state()

    @classmethod
    def from_state(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> KnnMember:
        k, max_rows = int(values["k"]), int(values["max_rows"])
        return cls(k, max_rows, KnnDetector.from_state(arrays, k=k, max_rows=max_rows))
