"""The detector API every ensemble member implements (pyod's shape: fit, score_samples, p-values, explain).

A member sees a `Frame` — the rows of one batch with their derived values, contract features and detection
vectors — and answers with raw scores (higher = more anomalous, NaN where it has nothing to say) and calibrated
tail p-values (the probability that a normal row scores at least as high; 1.0 where it has nothing to say).
The ensemble (`model.detectors.ensemble`) combines the members' p-values and applies the one threshold.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from model.calibration import CAL_BLOCK_Q
from model.features import FeatureContract
from model.schema import Row

State = tuple[dict[str, Any], dict[str, np.ndarray]]  # (JSON-safe values, named arrays): never pickled


@dataclass
class Frame:
    """One batch as every member sees it, rows in time order.

    `vectors` (embedding + weighted contract features, `model.version.detection_vectors`) is None when a
    caller scores without the encoder; members that need it then answer NaN.
    """

    rows: list[Row]
    derived: list[dict[str, Any]]
    num: np.ndarray  # (n, n_numeric) float32, contract-scaled
    cat: np.ndarray  # (n, n_categorical) int64, contract vocabulary indices
    contract: FeatureContract
    vectors: np.ndarray | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # per-batch values members share (e.g. signatures)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def signals(self) -> np.ndarray:
        got = self.cache.get("signals")
        if got is None:
            got = self.cache["signals"] = np.asarray([r.signal for r in self.rows], dtype=np.str_)
        return got

    @property
    def services(self) -> list[str]:
        return [r.service for r in self.rows]

    @property
    def sources(self) -> list[str]:
        """Each row's source, "service\x1fsignal": the unit of warm-up, rates and pattern counts."""
        got = self.cache.get("sources")
        if got is None:
            got = self.cache["sources"] = [f"{r.service}\x1f{r.signal}" for r in self.rows]
        return got

    @property
    def times_ns(self) -> np.ndarray:
        got = self.cache.get("times")
        if got is None:
            got = self.cache["times"] = np.asarray([r.time_unix_nano for r in self.rows], dtype=np.int64)
        return got

    def take(self, idx: np.ndarray) -> Frame:
        """The sub-frame of rows `idx` (in the given order)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Frame(
            [self.rows[i] for i in idx],
            [self.derived[i] for i in idx],
            self.num[idx],
            self.cat[idx],
            self.contract,
            None if self.vectors is None else self.vectors[idx],
        )


class Detector(ABC):
    """One ensemble member.

    Contract (tests/unit/model/test_detector_contract.py runs it over every member):
    - `fit(frame)` on the training window, rows in time order. The window may hold incidents: members must not
      let recurring incidents become normal (trim by their own score, count-based statistics, robust scales).
    - `score_samples(frame)` -> (n,) float64 raw scores, NaN where the member does not apply to a row.
      Members that keep per-entity online state (a series, an operation) score each row against the rows
      *before* it and then learn it, so a frame must be given once, in time order.
    - `pvalues(frame, raw)` -> (n,) float64 in (0, 1]: P(a normal row scores >= raw); 1.0 where raw is NaN.
    - `explain(frame, i, raw_i, p_i)` -> one clause in the user's words, with units ("latency 2,310 ms, 14x
      this operation's median 160 ms").
    - `learn(frame, normal)` grows history with the rows the ensemble judged normal (global members; online
      members learn in `score_samples`).
    - `muted(frame)` -> (n,) bool or None: rows of the last `score_samples` the member has already reported
      (an episode's later points): they keep their p-value, so they rank by their own deviation, but do not
      alert again.
    - `state()` / `from_state()` persist what was fitted and learned (JSON values and arrays, never pickle).

    `signals` names the signals a member judges. `global_novelty` members measure "unlike all history": they are muted for rows of an entity still in its
    warm-up (a new service's ordinary rows are novel as a whole). Members that measure a row against its own
    entity's baseline, or that flag what is anomalous regardless of novelty (failures), are not.
    """

    name: ClassVar[str]
    global_novelty: ClassVar[bool] = False
    # The member's prior weight in the combination (model.detectors.ensemble.combine).
    weight: ClassVar[float] = 1.0
    # What the member reads ("" = only itself). Members of one view are not witnesses for each other in the
    # agreement weights (model.detectors.agreement): reading the same inputs, they also share their noise.
    view: ClassVar[str] = ""
    # Whether the ensemble checks the member's p-values against recent traffic (model.detectors.recent); a
    # member whose p-values are conformal over its own online history needs no such check.
    recent_check: ClassVar[bool] = True
    # Whether the ensemble locates the member's null on recent traffic (model.detectors.recent.RecentCenter):
    # for members whose continuous novelty scores shift as a whole when a source drifts (k-NN, isolation).
    center_check: ClassVar[bool] = False
    # The quantile over time blocks at which the member's recent-traffic check, and its own calibration where
    # it fits one (errors, isolation), are taken (model.calibration): 0.9 keeps incidents in under a tenth of
    # the blocks from setting the tail. k-NN's reference calibration (model.detector) stays at CAL_BLOCK_Q.
    block_q: ClassVar[float] = CAL_BLOCK_Q
    # Out-of-sample raw scores of the training rows (each scored before it was learned, or held out), set by
    # fit when the member has them: they seed the ensemble's recent-traffic calibration (model.detectors.recent).
    fit_raw_: np.ndarray | None = None
    # The signals the member judges; the ensemble ignores its answer for the others. Metric points are judged
    # as series, by the series member, not point by point by the global-novelty members.
    signals: ClassVar[frozenset[str]] = frozenset({"logs", "traces", "metrics"})

    @abstractmethod
    def fit(self, frame: Frame) -> Detector: ...

    @abstractmethod
    def score_samples(self, frame: Frame) -> np.ndarray: ...

    @abstractmethod
    def pvalues(self, frame: Frame, raw: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def explain(self, frame: Frame, i: int, raw: float, p: float) -> str: ...

    def learn(self, frame: Frame, normal: np.ndarray) -> None:  # noqa: B027 - optional for online members
        """Grow history with the rows `normal` (bool mask) the ensemble judged normal."""

    def muted(self, frame: Frame) -> np.ndarray | None:
        """Rows of `frame` (as last scored) that may not alert however small their p-value; None: no such rows."""
        return None

    @abstractmethod
    def state(self) -> State: ...

    @classmethod
    @abstractmethod
    def from_state(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> Detector: ...


def empirical_pvalues(sorted_ref: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """P(ref >= raw) with the +1 correction of conformal p-values; 1.0 where raw is NaN."""
    raw = np.asarray(raw, dtype=np.float64)
    n = len(sorted_ref)
    out = np.ones(len(raw), dtype=np.float64)
    ok = ~np.isnan(raw)
    if n and ok.any():
        above = n - np.searchsorted(sorted_ref, raw[ok], side="left")
        out[ok] = (above + 1.0) / (n + 1.0)
    return out


def from_neglog10(raw: np.ndarray) -> np.ndarray:
    """The p-values of members whose raw score is -log10 p; 1.0 where raw is NaN (no opinion)."""
    raw = np.asarray(raw, dtype=np.float64)
    return np.where(np.isnan(raw), 1.0, np.clip(np.power(10.0, -np.nan_to_num(raw)), 1e-300, 1.0))


def gaussian_tail(z: np.ndarray) -> np.ndarray:
    """Two-sided normal tail probability of |z| (1.0 where z is NaN)."""
    z = np.abs(np.asarray(z, dtype=np.float64))
    out = np.ones(len(z), dtype=np.float64)
    ok = ~np.isnan(z)
    out[ok] = [math.erfc(v / math.sqrt(2.0)) for v in z[ok]]
    return np.clip(out, 1e-300, 1.0)
