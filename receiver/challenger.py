"""A retrained version in shadow: it scores the same batches as the current version (its scores are neither
stored nor emitted), then label-free rules decide whether it takes over.

The rules (`judge`), each on the shadow window:

- **stability**: the challenger's score distribution in the first and second half of the window differ (KS
  statistic) by at most 0.1 more than the current version's do; a model whose scores wander is not ready.
- **alert rate**: the challenger alerts at most OTAD_CHALLENGER_ALERT_FACTOR times as often as the current
  version (with a floor of 0.2 % of rows, so a quiet current version does not forbid every alert). Alerting
  less is accepted: a version trained on recent traffic is expected to be quieter after a drift.
- **reference separation**: recent traffic sits no further from the challenger's reference than 1.25 times as
  far as it sits from the current version's (model/drift.py `embedding_drift`, each in its own version's
  embedding space); a reference that does not cover today's traffic explains anomalies badly.
- **feedback**, when operators marked rows normal (receiver/feedback.py): the challenger alerts on no more of
  them than the current version (plus a tenth of them), both from their saved models (`feedback_verdict`,
  which `ModelLifecycle.feedback_check` can replace).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from model.drift import MAX_EMBED_ROWS, embedding_drift
from model.schema import Row, row_from_dict
from model.scorer import ScoredBatch, Scorer
from model.version import ModelVersion
from receiver.scorers import AnyScorer, close_scorer

logger = logging.getLogger(__name__)

ALERT_FLOOR = 0.002  # the alert-rate rule's floor for the current version's rate
STABILITY_SLACK = 0.1
SEPARATION_SLACK = 1.25
SHADOW_WAIT_S = 60.0  # the longest the pipeline waits for the challenger's shadow batches


@dataclass
class Verdict:
    promote: bool
    reasons: list[str]  # why not (empty when promoted)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        figs = ", ".join(f"{k} {v:.3g}" for k, v in self.figures.items())
        return ("; ".join(self.reasons) or "every rule passed") + (f" ({figs})" if figs else "")


def _drift_d(scores: np.ndarray) -> float:
    half = len(scores) // 2
    if half < 10:
        return 0.0
    return float(stats.ks_2samp(scores[:half], scores[half:], method="asymp").statistic)


def judge(
    champion_scores: np.ndarray,
    challenger_scores: np.ndarray,
    champion_alerts: int,
    challenger_alerts: int,
    *,
    factor: float,
    champion_separation: float | None,
    challenger_separation: float,
) -> Verdict:
    """The label-free promotion rules over one shadow window (both score arrays in arrival order)."""
    n = max(len(challenger_scores), 1)
    champ_rate, chal_rate = champion_alerts / n, challenger_alerts / n
    d_champ, d_chal = _drift_d(champion_scores), _drift_d(challenger_scores)
    figures = {
        "rows": float(len(challenger_scores)),
        "champion_alert_rate": champ_rate,
        "challenger_alert_rate": chal_rate,
        "champion_stability_ks": d_champ,
        "challenger_stability_ks": d_chal,
        "challenger_separation": challenger_separation,
    }
    if champion_separation is not None:
        figures["champion_separation"] = champion_separation
    reasons = []
    if d_chal > d_champ + STABILITY_SLACK:
        reasons.append(f"its scores are unstable (KS {d_chal:.2f} between halves vs {d_champ:.2f})")
    if chal_rate > factor * max(champ_rate, ALERT_FLOOR):
        reasons.append(f"it alerts {chal_rate:.2%} of rows vs {champ_rate:.2%} (more than {factor:g}x)")
    limit = SEPARATION_SLACK * max(champion_separation or 1.0, 1.0)
    if challenger_separation > limit:
        reasons.append(
            f"recent traffic sits far from its reference (ratio {challenger_separation:.2f} > {limit:.2f})"
        )
    return Verdict(not reasons, reasons, figures)


def normal_rows(feedback: Any) -> list[Row]:
    """The rows operators marked normal (active MarkNormal entries of receiver/feedback.py), oldest first."""
    if feedback is None:
        return []
    rows = {}
    for entry in feedback.entries(kind="normal"):
        row = (entry.get("record") or {}).get("row")
        if row:
            r = row_from_dict(row)
            rows[r.uid] = r
    return sorted(rows.values(), key=lambda r: r.time_unix_nano)


def feedback_verdict(
    challenger: Callable[[], ModelVersion], current: Callable[[], ModelVersion], marked_normal: list[Row]
) -> tuple[bool, str] | None:
    """The feedback rule: the challenger may not alert on more of the rows operators marked normal than the
    current version does (plus a tenth of them); both score them from their saved models, learning nothing.
    The loaders run only when rows are marked normal; None when none are."""
    if not marked_normal:
        return None
    n = len(marked_normal)
    theirs = int(np.sum(Scorer(challenger(), learn=False).score(marked_normal).is_anomaly))
    ours = int(np.sum(Scorer(current(), learn=False).score(marked_normal).is_anomaly))
    figures = f"it alerts on {theirs} of the {n} rows operators marked normal, the current version on {ours}"
    return theirs <= ours + n // 10, figures


class Challenger:
    """A retrained version's scorer fed every batch the current version scores, in a thread of its own.

    `on_ready` is called once (from that thread) when `target_rows` rows are scored, or when scoring failed
    (`error` set). Shadow scoring continues until `stop` (the hand-over) or `close` (discarded), so a promoted
    challenger's online state has seen every batch.
    """

    def __init__(
        self,
        mv: ModelVersion,
        scorer: AnyScorer,
        reference_emb: np.ndarray,
        target_rows: int,
        on_ready: Callable[[Challenger], None],
    ):
        self.mv, self.scorer, self.target_rows, self._on_ready = mv, scorer, target_rows, on_ready
        rng = np.random.default_rng(0)
        pick = rng.choice(len(reference_emb), min(len(reference_emb), 2 * MAX_EMBED_ROWS), replace=False)
        self.reference_emb = reference_emb[np.sort(pick)] if len(reference_emb) else reference_emb
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="otad-challenger")
        self._pending: deque[Future] = deque()
        self._lock = threading.Lock()
        self.rows = 0
        self.error: str | None = None
        self.ready = False
        self.closed = False
        self.champion_scores: list[np.ndarray] = []
        self.challenger_scores: list[np.ndarray] = []
        self.champion_alerts = self.challenger_alerts = 0
        self.champion_emb: list[np.ndarray] = []  # a sample of each batch, for reference separation
        self.challenger_emb: list[np.ndarray] = []

    def shadow(self, rows: list[Row], champion: ScoredBatch) -> None:
        """Queue a batch the current version scored (the pipeline thread; at most two batches wait, and a
        challenger that keeps one waiting SHADOW_WAIT_S is given up, so it never stalls the pipeline)."""
        if self.closed or self.error is not None:
            return
        while len(self._pending) >= 2:
            try:
                self._pending[0].result(timeout=SHADOW_WAIT_S)
            except FutureTimeout:
                self.error = f"it took over {SHADOW_WAIT_S:.0f}s to score a batch in shadow"
                self.closed = True
                threading.Thread(target=self._ready, name="otad-challenger-slow", daemon=True).start()
                return
            self._pending.popleft()
        try:
            self._pending.append(self._exec.submit(self._score, rows, champion))
        except RuntimeError:  # closed meanwhile
            pass

    def _score(self, rows: list[Row], champion: ScoredBatch) -> None:
        if self.closed:
            return
        try:
            scored = self.scorer.score(rows)
        except Exception as exc:
            logger.exception("challenger %s failed to score a batch", self.mv.version)
            self.error = f"{type(exc).__name__}: {exc}"
            self._ready()
            return
        if not self.ready:  # the judged window; later batches only keep its state current
            per_batch = max(1, 2 * MAX_EMBED_ROWS * len(rows) // max(self.target_rows, 1))
            take = np.linspace(0, len(rows) - 1, min(per_batch, len(rows))).astype(int)
            self.champion_scores.append(np.asarray(champion.scores))
            self.challenger_scores.append(np.asarray(scored.scores))
            self.champion_alerts += int(np.sum(champion.is_anomaly))
            self.challenger_alerts += int(np.sum(scored.is_anomaly))
            self.champion_emb.append(np.asarray(champion.embeddings)[take])
            self.challenger_emb.append(np.asarray(scored.embeddings)[take])
        self.rows += len(rows)
        if self.rows >= self.target_rows:
            self._ready()

    def _ready(self) -> None:
        with self._lock:
            if self.ready:
                return
            self.ready = True
        try:
            self._on_ready(self)
        except Exception:
            logger.exception("deciding on challenger %s failed", self.mv.version)

    def evaluate(self, factor: float, champion_reference: np.ndarray | None) -> Verdict:
        """The rules over the judged window (`champion_reference`: the current version's reference)."""
        champ = np.concatenate(self.champion_scores) if self.champion_scores else np.zeros(0)
        chal = np.concatenate(self.challenger_scores) if self.challenger_scores else np.zeros(0)
        chal_emb = np.concatenate(self.challenger_emb) if self.challenger_emb else np.zeros((0, 1))
        champ_emb = np.concatenate(self.champion_emb) if self.champion_emb else np.zeros((0, 1))
        champion_sep = (
            embedding_drift(champion_reference, champ_emb)
            if champion_reference is not None and len(champion_reference)
            else None
        )
        return judge(
            champ,
            chal,
            self.champion_alerts,
            self.challenger_alerts,
            factor=factor,
            champion_separation=champion_sep,
            challenger_separation=embedding_drift(self.reference_emb, chal_emb),
        )

    def stop(self) -> None:
        """Stop shadowing once the queued batches are scored (the hand-over: the scorer lives on)."""
        while self._pending:
            try:
                self._pending.popleft().result()
            except Exception:
                logger.exception("a shadow batch failed")
        self.closed = True
        self._exec.shutdown(wait=False)

    def close(self) -> None:
        """Discard: stop shadowing and close the scorer (before its directory goes: a scoring process saves
        its state there when it stops)."""
        self.closed = True
        self._exec.shutdown(wait=False, cancel_futures=True)
        close_scorer(self.scorer)
