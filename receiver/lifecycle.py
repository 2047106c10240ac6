"""The model life cycle of a running service: retrain from stored rows, a challenger in shadow, hot swap,
rollback, drift checks and retention (docs/lifecycle.md). `Service.lifecycle` is the one instance; otad's API
(ModelService) and CLI call its five methods.

A version takes over between two batches, on the pipeline's worker thread (`between_batches`): the batch
before was scored and stored by the old version, the batch after is scored and stored by the new one, in its
own rows collection. The new version's scorer is running before the switch (a challenger has scored in
shadow; a rollback target is started first), so the switch is a pointer change: no batch waits for a model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.schema import Row
from model.scorer import ScoredBatch
from model.version import ModelVersion, promote_version
from receiver.challenger import Challenger, feedback_verdict, normal_rows
from receiver.metrics import Metrics
from receiver.monitor import DriftMonitor
from receiver.periodic import PeriodicWork
from receiver.registry import Registry
from receiver.retention import prune_models
from receiver.retrain import MIN_ROWS, fit, store_reference, training_rows
from receiver.scorers import AnyScorer, close_scorer, new_scorer
from receiver.settings import Settings
from storage import MilvusStore, StorageError

logger = logging.getLogger(__name__)

SWITCH_TIMEOUT_S = 120.0  # promote/rollback wait this long for the pipeline to switch


@dataclass
class _Handover:
    mv: ModelVersion
    scorer: AnyScorer
    kind: str  # "promoted" or "rolled back"
    reason: str
    challenger: Challenger | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class _Stopped(Exception):
    pass


class ModelLifecycle(PeriodicWork):
    """Versions, the challenger, drift and retention of one service.

    Args:
        pipeline: the service's pipeline (`receiver.pipeline.Pipeline`); this object becomes its `hooks`.
    """

    def __init__(self, settings: Settings, store: MilvusStore, pipeline: Any, metrics: Metrics):
        self.settings, self.store, self.pipeline, self.metrics = settings, store, pipeline, metrics
        self.registry = Registry(settings.models_dir)
        self.monitor = DriftMonitor(settings, store, metrics)
        self._lock = threading.RLock()
        self._job: dict[str, Any] | None = None  # the last (or running) retrain
        self._worker: threading.Thread | None = None
        self._challenger: Challenger | None = None
        self._handover: _Handover | None = None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="otad-lifecycle", daemon=True)
        self.last_switch_s: float | None = None  # the pipeline thread's time for the last switch
        self.last_drain_s = 0.0  # and before it, waiting for the challenger's last shadow batches
        # Operator feedback (receiver/feedback.py; the Service sets it): rows marked normal train a retrain,
        # are taught to a version taking over, judge a challenger (`feedback_check`: mv -> (ok, why) | None).
        self.feedback: Any = None
        self.feedback_check: Any = lambda mv: feedback_verdict(
            lambda: self._load(mv.version),
            lambda: self._load(self.registry.current() or ""),
            normal_rows(self.feedback),
        )
        pipeline.hooks = self

    # ----- start / stop -----
    def start(self) -> None:
        if self.registry.current() is not None:  # versions that piled up before: beyond OTAD_MODELS_KEEP
            try:
                self._prune()
            except Exception:
                logger.exception("pruning old model versions failed")
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        worker = self._worker
        if worker is not None and worker.is_alive():
            worker.join(30.0)
        self._discard_challenger("the service stopped before it was judged")
        if self._ticker.is_alive():
            self._ticker.join(5.0)

    # ----- the pipeline's hooks (its worker thread) -----
    def pending(self) -> bool:
        return self._handover is not None

    def scored(self, rows: list[Row], scored: ScoredBatch) -> None:
        self.monitor.observe(rows)
        ch = self._challenger
        if ch is not None:
            ch.shadow(rows, scored)

    def between_batches(self) -> None:
        h = self._handover
        if h is None:
            return
        try:
            self._apply(h)
        finally:  # nothing here may end the pipeline's thread, and the caller always gets its answer
            with self._lock:
                if self._challenger is h.challenger:
                    self._challenger = None
                self._handover = None
            h.done.set()

    def _apply(self, h: _Handover) -> None:
        t0 = time.perf_counter()
        old_version = self._current_version()
        try:
            if h.challenger is not None:
                h.challenger.stop()  # every batch so far is in its state
            self.last_drain_s, t0 = time.perf_counter() - t0, time.perf_counter()
            old = self.pipeline.activate(h.mv, h.scorer)
        except Exception as exc:  # e.g. its rows collection cannot be opened: stay with the old version
            h.error = f"cannot switch to {h.mv.version}: {exc}"
            logger.error("%s", h.error)
            close_scorer(h.scorer)
            return
        self.last_switch_s = time.perf_counter() - t0
        try:
            promote_version(self.settings.models_dir, h.mv.version)
            self.monitor.reset(h.mv.version)
            if old is not None:
                threading.Thread(target=close_scorer, args=(old,), name="otad-close-old").start()
            self.registry.event(h.kind, h.mv.version, h.reason, previous=old_version)
        except Exception:  # the switch stands; what follows it is logged
            logger.exception("recording the switch to %s failed", h.mv.version)
        logger.info("model %s %s (%s); was %s", h.mv.version, h.kind, h.reason, old_version)

    # ----- the interface of otad's API -----
    def list_models(self) -> list[dict]:
        """Every saved version, oldest first: training window, rows, quality figures and state."""
        return self.registry.describe(self._current_version(), self._challenger_version())

    def status(self) -> dict:
        """Current and challenger versions, drift figures, the last retrain and why."""
        events = self.registry.read()["events"]
        ch = self._challenger
        return {
            "current": self._current_version(),
            "challenger": None
            if ch is None
            else {"version": ch.mv.version, "rows": ch.rows, "target_rows": ch.target_rows},
            "drift": self.monitor.status(),
            "last_retrain": dict(self._job) if self._job is not None else None,
            "reason": events[-1]["reason"] if events else None,
            "last_event": events[-1] if events else None,
            "last_switch_s": self.last_switch_s,
            "last_drain_s": self.last_drain_s,
            "auto_retrain": self.settings.auto_retrain,
        }

    def retrain(self, reason: str) -> str:
        """Start a retrain in the background; returns its job id (`status()["last_retrain"]`).

        Raises:
            RuntimeError: no model scores yet (the first one trains from the cold-start backlog), or a retrain
                or challenger is already running.
        """
        with self._lock:
            if self.pipeline.scorer is None:
                raise RuntimeError(
                    "no model is scoring yet: the first one trains from the cold-start backlog"
                )
            if self._worker is not None and self._worker.is_alive() or self._challenger is not None:
                raise RuntimeError("a retrain is already running; promote or wait for its challenger first")
            job_id = time.strftime("retrain-%Y%m%d%H%M%S", time.gmtime())
            self._job = {"job": job_id, "reason": reason, "state": "training", "started": time.time()}
            self._worker = threading.Thread(
                target=self._retrain, args=(reason,), name="otad-retrain", daemon=True
            )
            self._worker.start()
        logger.info("retrain started (%s): %s", job_id, reason)
        return job_id

    def promote(self, version: str) -> None:
        """Make `version` current now: the challenger (its rules skipped) or any kept version.

        Raises:
            LookupError: no such saved version. RuntimeError: it is already current, or its rows are gone.
        """
        ch = self._challenger
        if ch is not None and ch.mv.version == version:
            self._switch(_Handover(ch.mv, ch.scorer, "promoted", "by hand", challenger=ch))
            return
        self._switch_saved(version, "promoted", "by hand")

    def rollback(self, version: str | None = None) -> str:
        """Make a kept version current again (None: the one current before); returns it.

        Raises:
            LookupError: no such saved version, or none to roll back to. RuntimeError: it is current already,
                or its rows collection is gone.
        """
        target = version or self.registry.previous({self._current_version() or ""})
        if target is None:
            raise LookupError("no earlier version is kept to roll back to")
        self._switch_saved(target, "rolled back", "rollback" if version is None else f"rollback to {target}")
        return target

    # ----- switching -----
    def _switch_saved(self, version: str, kind: str, reason: str) -> None:
        self.registry.meta(version)  # LookupError when not saved
        if version == self._current_version():
            raise RuntimeError(f"model {version} is already current")
        if not self.store.has_rows_collection(version):
            raise RuntimeError(f"the rows collection of {version} is gone; it can no longer be made current")
        if self.pipeline.scorer is None:
            raise RuntimeError("the service has no model yet; it is training or collecting")
        self._discard_challenger(f"{kind} to {version} instead")
        mv = self._load(version)
        self._switch(_Handover(mv, self._teach(new_scorer(self.settings, mv)), kind, reason))  # started first

    def _load(self, version: str) -> ModelVersion:
        s = self.settings
        return ModelVersion.load(
            Path(s.models_dir) / version,
            k=s.knn_k,
            alert_pvalue=s.alert_pvalue,
            max_rows=s.reference_max_rows,
            false_alerts_per_hour=s.false_alerts_per_hour,
            series_max=s.series_max,
        )

    def _switch(self, h: _Handover) -> None:
        with self._lock:
            busy = self._handover is not None
            if not busy:
                self._handover = h  # an idle pipeline sees `pending` within half a second
        if busy:
            if h.challenger is None:
                close_scorer(h.scorer)
            raise RuntimeError("another version is taking over right now; try again")
        if not h.done.wait(SWITCH_TIMEOUT_S):
            raise RuntimeError(
                f"the pipeline did not switch to {h.mv.version} within {SWITCH_TIMEOUT_S:.0f}s "
                "(a batch is still in hand); it takes over once that batch is done"
            )
        if h.error:
            raise RuntimeError(h.error)
        if h.kind == "promoted" and h.challenger is not None:
            self.metrics.retrains.labels("promoted").inc()
            self._job_update(state="promoted", version=h.mv.version, finished=time.time())
        self._prune()

    def _teach(self, scorer: AnyScorer) -> AnyScorer:
        """Hand the rows operators marked normal to a version about to take over (they join its reference)."""
        marked = normal_rows(self.feedback)
        if marked:
            try:
                scorer.learn_normal(marked)
            except Exception as exc:  # the version still takes over; feedback screening holds all the same
                logger.warning(
                    "could not teach %d rows marked normal to the new version: %s", len(marked), exc
                )
        return scorer

    def _current_version(self) -> str | None:
        scorer = self.pipeline.scorer
        return scorer.mv.version if scorer is not None else self.registry.current()

    def _challenger_version(self) -> str | None:
        ch = self._challenger
        return ch.mv.version if ch is not None else None

    def _job_update(self, **fields: Any) -> None:
        with self._lock:
            if self._job is not None:
                self._job.update(fields)

    # ----- retraining and the challenger -----
    def _check_stop(self, _record: dict[str, float]) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _retrain(self, reason: str) -> None:
        """long: one sequence of steps (read, fit, save, store the reference, start the challenger), each with
        its own failure message."""
        s = self.settings
        current = self._current_version()
        mv = None
        try:
            if current is None:
                raise RuntimeError("no current version")
            rows = training_rows(self.store, current, s.train_max_rows)
            marked = normal_rows(self.feedback)  # flagged when they arrived, normal by an operator's word
            known = {r.uid for r in rows}
            rows = sorted(rows + [r for r in marked if r.uid not in known], key=lambda r: r.time_unix_nano)
            if len(rows) < MIN_ROWS:
                raise RuntimeError(f"only {len(rows)} stored rows of {current} to train on")
            logger.info("retraining on %d stored rows of %s (%s)", len(rows), current, reason)
            mv = fit(s, rows, self._check_stop)
            mv.save(s.models_dir, promote=False)
            self._job_update(state="storing reference", version=mv.version, rows=len(rows))
            ref_emb = store_reference(self.store, self.pipeline.writer, mv, rows)
            scorer = self._teach(new_scorer(s, mv))
        except _Stopped:
            self._job_update(state="stopped")
            if mv is not None:
                self._drop(mv.version)
            return
        except Exception as exc:
            logger.exception("retrain failed (%s)", reason)
            self.metrics.retrains.labels("failed").inc()
            self._job_update(state="failed", error=str(exc), finished=time.time())
            self.registry.event("retrain failed", None, f"{reason}: {exc}")
            if mv is not None:
                self._drop(mv.version)
            return
        with self._lock:
            self._challenger = Challenger(mv, scorer, ref_emb, s.challenger_rows, self._decide)
        self._job_update(state="shadow")
        logger.info("challenger %s scores in shadow for %d rows", mv.version, s.challenger_rows)

    def _decide(self, ch: Challenger) -> None:
        """The challenger's window is scored (its thread): promote it or discard it, with one log line."""
        if self._challenger is not ch or self._handover is not None:
            return
        ref = self.monitor.reference
        verdict = ch.evaluate(self.settings.challenger_alert_factor, ref.emb if ref is not None else None)
        if ch.error is not None:
            verdict.promote, verdict.reasons = False, [f"it failed to score: {ch.error}"]
        if verdict.promote and self.feedback_check is not None:
            judged = self.feedback_check(ch.mv)
            if judged is not None and not judged[0]:
                verdict.promote, verdict.reasons = False, [f"feedback: {judged[1]}"]
        self.registry.verdict(ch.mv.version, {"promote": verdict.promote, **verdict.figures})
        if verdict.promote:
            with self._lock:
                if self._handover is None and self._challenger is ch:
                    self._handover = _Handover(ch.mv, ch.scorer, "promoted", "challenger rules passed", ch)
                    threading.Thread(
                        target=self._await_promotion, args=(self._handover,), daemon=True
                    ).start()
            return
        self._discard_challenger(verdict.summary)

    def _await_promotion(self, h: _Handover) -> None:
        if h.done.wait(SWITCH_TIMEOUT_S) and h.error is None:
            self.metrics.retrains.labels("promoted").inc()
            self._job_update(state="promoted", finished=time.time())
            self._prune()

    def _discard_challenger(self, why: str) -> None:
        with self._lock:
            ch, self._challenger = self._challenger, None
        if ch is None:
            return
        ch.close()
        self._drop(ch.mv.version)
        logger.info("challenger %s discarded: %s", ch.mv.version, why)
        self.metrics.retrains.labels("discarded").inc()
        self.registry.event("discarded", ch.mv.version, why)
        self._job_update(state="discarded", why=why, finished=time.time())

    def _drop(self, version: str) -> None:
        try:
            self.store.drop_rows_collection(version)
        except StorageError as exc:
            logger.error("cannot drop the rows collection of %s: %s", version, exc)
            return
        self.registry.remove(version)

    def _prune(self) -> list[str]:
        protect = {v for v in (self._current_version(), self._challenger_version()) if v}
        return prune_models(self.store, self.registry, self.settings.models_keep, protect)
