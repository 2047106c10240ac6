"""Score: featurize > embed > k-NN score > explain over one model version, learning calm rows as it goes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.encoder import Embedder
from model.features import OOV
from model.schema import Anomaly, Row
from model.version import ModelVersion, detection_vectors, deviant_rows

LEARN_BELOW_SCORE = 33.0  # rows scored below this (p > 1e-2) join the normal history
LEARN_PER_BATCH = 256  # at most this many calm rows of a batch are added (index inserts are the costly part)


@dataclass
class ScoredBatch:
    """One scored batch; arrays have one entry per row, in the order of `rows`."""

    rows: list[Row]
    embeddings: np.ndarray  # (n, embed_dim) float32
    raw: np.ndarray  # (n,) float64 k-NN distances
    scores: np.ndarray  # (n,) float64, 0-100
    is_anomaly: np.ndarray  # (n,) bool, scores >= threshold
    anomalies: list[Anomaly]  # the flagged rows, in row order


class Scorer:
    """Online scoring with one model version: featurize -> embed -> k-NN -> calibrate -> explain -> learn.

    It holds the online state (context tracker, learned reference rows), so one Scorer sees a stream's batches
    in time order. `model.worker.ScoringProcess` runs one in a child process.

    Args:
        mv: the model version; with `learn`, its detector and reference rows grow in place.
        learn: add calm rows (score < LEARN_BELOW_SCORE, not deviant) to the normal history.
        threads: torch intra-op threads for the embedding.
    """

    def __init__(self, mv: ModelVersion, *, learn: bool = True, threads: int = 1):
        self.mv = mv
        self.embedder = Embedder(mv.model)
        self.tracker = mv.contract.new_tracker()
        self.matcher = mv.contract.matcher()
        self.learn = learn
        self.threads = threads
        self.num_names = mv.contract.numeric_names()

    @property
    def threshold(self) -> float:
        return self.mv.detector.threshold_

    def featurize(self, rows: list[Row]) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
        """Derived values, numeric (n, n_numeric) float32 and categorical (n, n_categorical) int64 features."""
        derived = self.mv.contract.derive_online(rows, self.tracker, self.matcher)
        num, cat = self.mv.contract.encode(derived)
        return derived, num, cat

    def score(self, rows: list[Row], now_unix_nano: int | None = None) -> ScoredBatch:
        """Score a batch; anomalies are stamped `now_unix_nano` (default: now)."""
        torch.set_num_threads(self.threads)
        derived, num, cat = self.featurize(rows)
        emb = self.embedder.embed(num, cat)
        vectors = detection_vectors(self.mv.contract, emb, num, cat)
        det = self.mv.detector
        raw, idx = det.decision_function(vectors)
        scores = det.score(raw, [r.signal for r in rows])
        flagged = scores >= det.threshold_
        now = now_unix_nano or time.time_ns()
        anomalies = [
            self._anomaly(rows[i], derived[i], num[i], cat[i], raw[i], scores[i], idx[i], now)
            for i in np.flatnonzero(flagged)
        ]
        if self.learn:
            self._learn(rows, vectors, num, cat, scores)
        return ScoredBatch(rows, emb, raw, scores, flagged, anomalies)

    def _learn(
        self, rows: list[Row], vectors: np.ndarray, num: np.ndarray, cat: np.ndarray, scores: np.ndarray
    ) -> None:
        """Add up to LEARN_PER_BATCH calm, non-deviant rows to the detector's normal history."""
        calm = np.flatnonzero((scores < LEARN_BELOW_SCORE) & ~deviant_rows(self.mv.contract, num))
        if len(calm) > LEARN_PER_BATCH:  # an even sample over the batch, deterministic
            calm = calm[np.linspace(0, len(calm) - 1, LEARN_PER_BATCH).astype(np.int64)]
        if not len(calm):
            return
        added = self.mv.detector.add(vectors[calm], [rows[i].uid for i in calm])
        if added:
            pos = calm[np.asarray(added)]
            self.mv.ref_num = np.concatenate([self.mv.ref_num, num[pos]])
            self.mv.ref_cat = np.concatenate([self.mv.ref_cat, cat[pos]])

    def _anomaly(
        self,
        row: Row,
        derived: dict[str, Any],
        num: np.ndarray,
        cat: np.ndarray,
        raw: float,
        score: float,
        nbrs: np.ndarray,
        now: int,
    ) -> Anomaly:
        evidence = self.explain(derived, num, cat, nbrs)
        neighbors = tuple(self.mv.detector.neighbor_uids(nbrs, 5))
        what = {"logs": "log record", "traces": "span", "metrics": "metric point"}[row.signal]
        if evidence:
            diffs = "; ".join(f"{f} {o} vs typical {t}" for f, o, t in evidence)
        else:
            diffs = "an unusual combination of otherwise common values"
        sentence = f"Unusual {what} from {row.service} (score {score:.0f}/100): {diffs}."
        return Anomaly(
            row,
            float(score),
            float(raw),
            self.threshold,
            self.mv.detector.name,
            self.mv.version,
            sentence,
            neighbors,
            tuple(evidence),
            now,
        )

    def explain(
        self, derived: dict[str, Any], num: np.ndarray, cat: np.ndarray, nbrs: np.ndarray, top: int = 3
    ) -> list[tuple[str, str, str]]:
        """The features that differ most from the nearest normal rows: (feature, observed, typical)."""
        nb = nbrs[nbrs >= 0]
        if not len(nb):
            return []
        contract = self.mv.contract
        cand: list[tuple[float, str, str, str]] = []
        med = np.median(self.mv.ref_num[nb], axis=0)
        for j, name in enumerate(self.num_names):
            dev = abs(float(num[j]) - float(med[j]))
            if dev >= 1.5:
                cand.append(
                    (dev, name, contract.display(derived, name), self._typical_numeric(j, float(med[j])))
                )
        ref_cat = self.mv.ref_cat[nb]
        for j, name in enumerate(contract.categorical):
            values, counts = np.unique(ref_cat[:, j], return_counts=True)
            mode = int(values[counts.argmax()])
            if int(cat[j]) != mode and counts.max() >= 0.5 * len(nb):
                typical = (
                    "missing" if mode == 0 else ("unseen" if mode == OOV else contract.vocab[name][mode - 2])
                )
                if name == "template" and typical.isdigit():
                    typical = repr(contract.templates[int(typical)][:60])
                cand.append((3.0, name, contract.display(derived, name), typical[:60]))
        cand.sort(key=lambda c: -c[0])
        return [(n, o, t) for _, n, o, t in cand[:top]]

    def _typical_numeric(self, j: int, scaled: float) -> str:
        specs = self.mv.contract.numeric
        if j >= len(specs):
            return "present" if scaled < 0.5 else "missing"
        spec = specs[j]
        x = scaled * spec.scale + spec.center
        if spec.log:
            x = float(np.sign(x) * np.expm1(abs(x)))
        return f"{x:.4g}"
