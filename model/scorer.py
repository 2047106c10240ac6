"""Score: featurize > embed > the detector ensemble > explain over one model version, learning as it goes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.calibration import pvalue_to_score
from model.context import ContextTracker
from model.detectors import Frame, ensemble_from_state
from model.detectors.ensemble import EnsembleResult
from model.detectors.kinds import Notice
from model.detectors.knn import detection_vectors
from model.encoder import Embedder
from model.features import OOV
from model.schema import Anomaly, Row
from model.statefile import StateFileError, load_state, save_state
from model.version import ONLINE_STATE, ModelVersion
from model.vocabulary import label, ratio, show, subject

logger = logging.getLogger(__name__)

WHAT = {"logs": "log record", "traces": "span", "metrics": "metric point"}


@dataclass
class ScoredBatch:
    """One scored batch; arrays have one entry per row, in the order of `rows`."""

    rows: list[Row]
    embeddings: np.ndarray  # (n, embed_dim) float32
    raw: np.ndarray  # (n,) float64 combined p-values of the ensemble
    scores: np.ndarray  # (n,) float64, 0-100 (100 * -log10(p) / 6)
    is_anomaly: np.ndarray  # (n,) bool, the row alerts (p at or below its threshold, not muted or warming up)
    anomalies: list[Anomaly]  # the flagged rows, in row order
    # new sources and kinds of record (one line each, not an anomaly)
    notices: list[Notice] = field(default_factory=list)
    members: dict[str, np.ndarray] = field(default_factory=dict)  # each member's p-values (1.0 = no opinion)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # signal -> member -> agreement weight


class Scorer:
    """Online scoring with one model version: featurize -> embed -> ensemble -> explain -> learn.

    It holds the online state (context tracker, the members' learned history), so one Scorer sees a stream's
    batches in time order. `model.worker.ScoringProcess` runs one in a child process.

    Args:
        mv: the model version; with `learn`, its members' history grows in place.
        learn: let the members learn the rows judged normal.
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
        self._saved_at = time.monotonic()

    # ----- online state: what the scorer learned survives a restart -----
    def save(self, version_dir: Path) -> None:
        """Save the online state (context baselines, the members' learned history, first-seen sources)."""
        values, arrays = self.mv.ensemble.state()
        save_state(
            Path(version_dir) / ONLINE_STATE,
            {
                "ensemble": (values, arrays),
                "context": self.tracker.state(),
                "reference": ({}, {"ref_num": self.mv.ref_num, "ref_cat": self.mv.ref_cat}),
            },
        )
        self._saved_at = time.monotonic()

    def save_if_due(self, version_dir: Path, every_s: float) -> None:
        if time.monotonic() - self._saved_at >= every_s:
            self.save(version_dir)

    def restore(self, version_dir: Path) -> bool:
        """Continue from the online state saved under `version_dir`, if any (a corrupt one is skipped)."""
        try:
            state = load_state(Path(version_dir) / ONLINE_STATE)
        except StateFileError as exc:
            logger.warning(
                "the saved online state of %s is unusable (%s); starting from the model", self.mv.version, exc
            )
            return False
        if state is None:
            return False
        ens = self.mv.ensemble
        restored = ensemble_from_state(*state["ensemble"])
        restored.alert_pvalue, restored.false_alerts_per_hour = ens.alert_pvalue, ens.false_alerts_per_hour
        self.mv.ensemble = restored
        self.tracker = ContextTracker.from_state(*state["context"])
        self.mv.ref_num = state["reference"][1]["ref_num"]
        self.mv.ref_cat = state["reference"][1]["ref_cat"]
        logger.info("model %s continues from its saved online state", self.mv.version)
        return True

    @property
    def threshold(self) -> float:
        """The nominal threshold on the 0-100 scale (a row's own may be higher: OTAD_FALSE_ALERTS_PER_HOUR)."""
        return float(pvalue_to_score(self.mv.ensemble.alert_pvalue))

    def featurize(self, rows: list[Row]) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
        """Derived values, numeric (n, n_numeric) float32 and categorical (n, n_categorical) int64 features."""
        derived = self.mv.contract.derive_online(rows, self.tracker, self.matcher)
        num, cat = self.mv.contract.encode(derived)
        return derived, num, cat

    def score(self, rows: list[Row], now_unix_nano: int | None = None) -> ScoredBatch:
        """Score a batch; anomalies are stamped `now_unix_nano` (default: now)."""
        torch.set_num_threads(self.threads)
        if not rows:
            empty = np.zeros(0)
            return ScoredBatch(
                [], np.zeros((0, self.mv.config.embed_dim), np.float32), empty, empty, empty.astype(bool), []
            )
        order = np.argsort([r.time_unix_nano for r in rows], kind="stable")  # members see time order
        rows_t = [rows[i] for i in order]
        derived, num, cat = self.featurize(rows_t)
        emb = self.embedder.embed(num, cat)
        frame = Frame(
            rows_t, derived, num, cat, self.mv.contract, detection_vectors(self.mv.contract, emb, num, cat)
        )
        result = self.mv.ensemble.score(frame, learn=self.learn)
        added = frame.cache.get("knn.added")
        if added is not None and len(added):
            self.mv.ref_num = np.concatenate([self.mv.ref_num, num[added]])
            self.mv.ref_cat = np.concatenate([self.mv.ref_cat, cat[added]])
        scores = pvalue_to_score(result.combined)
        now = now_unix_nano or time.time_ns()
        back = np.empty_like(order)
        back[order] = np.arange(len(order))  # position in time order of each input row
        anomalies = [
            self._anomaly(frame, result, int(back[i]), scores, now)
            for i in range(len(rows))
            if result.alert[back[i]]
        ]
        members = {name: result.p[back, j] for j, name in enumerate(result.members)}
        return ScoredBatch(
            rows,
            emb[back],
            result.combined[back],
            scores[back],
            result.alert[back],
            anomalies,
            result.notices,
            members,
            self.mv.ensemble.weights_by_signal(),
        )

    def learn_normal(self, rows: list[Row]) -> int:
        """Add rows an operator marked normal to the k-NN member's reference (feedback); returns how many
        were new there. The context tracker sees them as it sees any row."""
        det = self.mv.detector
        if det is None or not rows:
            return 0
        torch.set_num_threads(self.threads)
        _, num, cat = self.featurize(rows)
        vectors = detection_vectors(self.mv.contract, self.embedder.embed(num, cat), num, cat)
        added = np.asarray(det.add(vectors, [r.uid for r in rows]), dtype=np.int64)
        if len(added):
            self.mv.ref_num = np.concatenate([self.mv.ref_num, num[added]])
            self.mv.ref_cat = np.concatenate([self.mv.ref_cat, cat[added]])
        return int(len(added))

    def embed_rows(self, rows: list[Row]) -> np.ndarray:
        """(n, embed_dim) embeddings of rows as this scorer sees them now (feedback re-embeds its row when the
        version changes); the context tracker sees them as it sees any row."""
        torch.set_num_threads(self.threads)
        _, num, cat = self.featurize(rows)
        return self.embedder.embed(num, cat)

    def judged_anomalies(self, now_unix_nano: int | None = None) -> tuple[np.ndarray, list[Anomaly]]:
        """Scores of the model's own training rows (in `mv.judged` order) and the anomalies among them."""
        if self.mv.judged is None:
            return np.zeros(0), []
        frame, result = self.mv.judged
        scores = pvalue_to_score(result.combined)
        now = now_unix_nano or time.time_ns()
        return scores, [
            self._anomaly(frame, result, int(i), scores, now) for i in np.flatnonzero(result.alert)
        ]

    def _anomaly(self, frame: Frame, result: EnsembleResult, i: int, scores: np.ndarray, now: int) -> Anomaly:
        """The anomaly with its explanation: one sentence in the user's words (the record itself, then what
        the strongest member saw), the other members' findings and the nearest normal records after it."""
        row, derived = frame.rows[i], frame.derived[i]
        clauses = self.mv.ensemble.explain(frame, result, i)
        names = [name for name, _ in clauses]
        nbrs = frame.cache.get("knn.neighbors")
        evidence: list[tuple[str, str, str]] = []
        neighbors: tuple[str, ...] = ()
        looks_like: list[str] = []
        det = self.mv.detector
        if nbrs is not None and det is not None and len(nbrs):
            neighbors = tuple(det.neighbor_uids(nbrs[i], 5))
            if "knn" in names:
                evidence = self.explain(derived, frame.num[i], frame.cat[i], nbrs[i])
                looks_like = self._neighbor_content(nbrs[i])
        text = []
        for name, clause in clauses:
            if name == "knn" and evidence:
                clause = "unlike its nearest normal records: " + "; ".join(
                    f"{f} {o}, typically {t}" for f, o, t in evidence
                )
            text.append(clause)
        first = text[0] if text else "an unusual combination of otherwise common values"
        sentence = f"Unusual {WHAT[row.signal]} from {row.service}{subject(row, derived)}: {first}."
        if len(text) > 1:
            sentence += " Also: " + "; ".join(text[1:]) + "."
        p = float(result.combined[i])
        sentence += f" (score {scores[i]:.0f}/100, p {p:.1e}, by {', '.join(names) or 'the ensemble'})"
        if looks_like:
            sentence += " Nearest normal records: " + "; ".join(looks_like) + "."
        return Anomaly(
            row,
            float(scores[i]),
            p,
            float(pvalue_to_score(result.threshold[i])),
            "+".join(names) or "ensemble",
            self.mv.version,
            sentence,
            neighbors,
            tuple(evidence),
            now,
        )

    def _neighbor_content(self, nbrs: np.ndarray, limit: int = 3) -> list[str]:
        """The nearest normal records as content (their message pattern, route, status), not as uids."""
        contract, out = self.mv.contract, []
        cols = {name: j for j, name in enumerate(contract.categorical)}
        for idx in nbrs[nbrs >= 0]:
            if idx >= len(self.mv.ref_cat):
                continue
            parts = []
            for name in ("template", "url_template", "trace.span.operation", "status_code"):
                j = cols.get(name)
                code = int(self.mv.ref_cat[idx, j]) if j is not None else 0
                if code < 2:  # missing or never seen
                    continue
                value = contract.vocab[name][code - 2]
                if name == "template" and value.isdigit() and int(value) < len(contract.templates):
                    value = contract.templates[int(value)]
                parts.append(
                    f"{label(name)} {show(name, value)[:100]!r}" if name != "template" else repr(value[:100])
                )
            text = ", ".join(parts)
            if text and text not in out:
                out.append(text)
            if len(out) >= limit:
                break
        return out

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
                typical = self._typical_numeric(j, float(med[j]))
                if name.endswith(".missing"):  # a presence flag: present / missing, nothing to scale
                    flag = "missing" if derived.get(name[: -len(".missing")]) is None else "present"
                    cand.append((dev, label(name), flag, str(typical)))
                    continue
                value = derived.get(name)
                cand.append(
                    (dev, label(name), show(name, value) + ratio(value, typical, name), show(name, typical))
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
                observed = contract.display(derived, name) if name == "template" else derived.get(name)
                cand.append((3.0, label(name), show(name, observed), show(name, typical)))
        cand.sort(key=lambda c: -c[0])
        return [(n, o, t) for _, n, o, t in cand[:top]]

    def _typical_numeric(self, j: int, scaled: float) -> float | str:
        specs = self.mv.contract.numeric
        if j >= len(specs):
            return "present" if scaled < 0.5 else "missing"
        spec = specs[j]
        x = scaled * spec.scale + spec.center
        if spec.log:
            x = float(np.sign(x) * np.expm1(abs(x)))
        return x
