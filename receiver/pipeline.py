"""The pipeline: a bounded queue in front of featurize > embed > score > store > emit, run in batches.

States: `collecting` (no model: rows are stored in the backlog), `training` (the first model is being
trained in the background from the backlog; ingest keeps flowing), `scoring` (a model is loaded).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from model.features import ContractVersionError
from model.schema import Anomaly, Row, row_to_dict
from model.train import TrainConfig
from model.version import ModelVersion, Scorer, fit_version
from receiver.emit import AnomalyEmitter, finding, finding_uid
from receiver.heap import settle_heap
from receiver.metrics import Metrics
from receiver.score_process import ScoringProcess, ScoringProcessError
from receiver.settings import Settings
from storage import MilvusStore, StorageError

logger = logging.getLogger(__name__)

OnStored = Callable[[], None]  # called once every row of an offered part is stored (the spool commits)


def _backlog_records(rows: Sequence[Row]) -> list[dict]:
    return [{"uid": r.uid, "signal": r.signal, "service": r.service[:128], "class_uid": r.class_uid,
             "time_ms": r.time_ms, "trace_id": r.trace_id, "row": row_to_dict(r)} for r in rows]


def _notify(callbacks: Sequence[OnStored]) -> None:
    for cb in callbacks:
        try:
            cb()
        except Exception:
            logger.exception("an on_stored callback failed")


class Pipeline:
    def __init__(self, settings: Settings, store: MilvusStore, emitter: AnomalyEmitter, metrics: Metrics,
                 version: str, model: ModelVersion | None = None):
        self.settings = settings
        self.store = store
        self.emitter = emitter
        self.metrics = metrics
        self.otad_version = version
        self._queue: deque[tuple[list[Row], tuple[OnStored, ...]]] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.draining = False  # stop() was called: not ready for new data
        self._worker = threading.Thread(target=self._run, name="otad-pipeline", daemon=True)
        self._backlog: list[Row] = []  # rows awaiting the first model (also stored in Milvus)
        self._trainer: threading.Thread | None = None
        self._scorer: Scorer | ScoringProcess | None = None
        self._process_failures = 0  # consecutive batches the scoring process died on
        self.state = "collecting"
        self.train_error: str | None = None
        self.processed = 0
        self.anomaly_count = 0
        if model is not None:
            self._activate(model)
        # Storing overlaps with scoring the next batch (Milvus calls release the GIL part of the time);
        # at most two batches are in flight, which bounds memory and keeps backpressure on the queue.
        self._store_exec = ThreadPoolExecutor(1, thread_name_prefix="otad-store")
        self._in_flight: deque[Future] = deque()

    # ----- ingest side (called from gRPC threads; must be fast) -----
    def offer(self, rows: list[Row], on_stored: OnStored | None = None) -> bool:
        """Queue rows for processing. False when the bounded queue has no room (caller answers UNAVAILABLE).

        `on_stored` is called (from a pipeline thread) once every one of these rows is stored in Milvus.
        """
        if not rows:
            if on_stored is not None:
                on_stored()
            return True
        with self._cond:
            if self._queued + len(rows) > self.settings.queue_rows:
                return False
            self._queue.append((rows, (on_stored,) if on_stored else ()))
            self._queued += len(rows)
            self.metrics.queue_rows.set(self._queued)
            self._cond.notify()
        return True

    @property
    def full(self) -> bool:
        return self._queued >= self.settings.queue_rows

    @property
    def queued(self) -> int:
        return self._queued

    def status(self) -> dict:
        return {
            "state": self.state, "ready": not self._stop.is_set() and not self.draining,
            "model_version": self._scorer.mv.version if self._scorer else None,
            "queued_rows": self._queued, "backlog_rows": len(self._backlog),
            "bootstrap_rows": self.settings.bootstrap_rows, "processed_rows": self.processed,
            "anomalies": self.anomaly_count, "train_error": self.train_error,
        }

    # ----- lifecycle -----
    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Drain what is queued (within the timeout), then stop after the batch in hand.

        Rows still queued at the deadline are not processed (with the spool on, they are replayed at the next start).
        """
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while (self._queued or self._busy) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(max(0.1, deadline - time.monotonic()))
        if self._queued:
            logger.warning("stopped with %d rows still queued (not acknowledged as processed)", self._queued)

    def wait_idle(self, timeout_s: float) -> bool:
        """Test/CLI helper: wait until the queue is empty and the current batch finished."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._queued and not self._busy and not any(not f.done() for f in list(self._in_flight)):
                return True
            time.sleep(0.02)
        return False

    _busy = False

    def _take(self) -> tuple[list[Row], list[OnStored]]:
        batch: list[Row] = []
        callbacks: list[OnStored] = []
        wait_until = None
        with self._cond:
            while not self._stop.is_set():
                while self._queue and len(batch) < self.settings.batch_rows:
                    part, cbs = self._queue.popleft()
                    self._queued -= len(part)
                    batch.extend(part)
                    callbacks.extend(cbs)
                    self._busy = True
                if len(batch) >= self.settings.batch_rows:
                    break
                if batch:
                    wait_until = wait_until or time.monotonic() + self.settings.batch_wait_ms / 1000
                    left = wait_until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                else:
                    self._cond.wait(0.5)
            if self._stop.is_set() and batch:
                # Stopping while a batch was still gathering: it is not "in hand" yet, so it goes back to the
                # queue (spooled rows replay at the next start) instead of starting work past the deadline.
                self._queue.appendleft((batch, tuple(callbacks)))
                self._queued += len(batch)
                batch, callbacks = [], []
            self._busy = bool(batch)
            self.metrics.queue_rows.set(self._queued)
        return batch, callbacks

    def _requeue(self, rows: list[Row], callbacks: Sequence[OnStored], front: bool) -> None:
        with self._cond:
            (self._queue.appendleft if front else self._queue.append)((rows, tuple(callbacks)))
            self._queued += len(rows)
            self._cond.notify()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch, callbacks = self._take()
            if not batch:
                continue
            try:
                self.process(batch, callbacks)
                self._process_failures = 0
            except ScoringProcessError as exc:
                self.metrics.errors.labels("pipeline").inc()
                self._process_failures += 1
                if self._process_failures >= 3:  # a batch that kills the scorer every time: not forever
                    self._keep_unscored(batch, callbacks, exc)
                else:
                    logger.error("batch of %d rows: %s; restarting it, batch re-queued", len(batch), exc)
                    self._requeue(batch, callbacks, front=True)
                self._restart_scorer()
            except StorageError as exc:
                self.metrics.errors.labels("storage").inc()
                logger.error("batch of %d rows failed in storage: %s; re-queued", len(batch), exc)
                self._requeue(batch, callbacks, front=True)
                self._stop.wait(1.0)
            except Exception as exc:  # a bug: keep the rows rather than lose them
                self.metrics.errors.labels("pipeline").inc()
                logger.exception("batch of %d rows failed in the pipeline", len(batch))
                self._keep_unscored(batch, callbacks, exc)
            finally:
                self._busy = False
        self._drain_stores()
        self._store_exec.shutdown(wait=True)
        self._close_scorer(self._scorer)

    # ----- processing -----
    def process(self, rows: list[Row], on_stored: Sequence[OnStored] = ()) -> None:
        scorer = self._scorer
        if scorer is None:
            self._collect(rows)
            _notify(on_stored)
            return
        t0 = time.perf_counter()
        scored = scorer.score(rows)
        t1 = time.perf_counter()
        self.metrics.stage_seconds.labels("featurize_embed_score").observe(t1 - t0)
        version = scorer.mv.version
        columns = scored_columns(rows, scored.scores, scored.is_anomaly, reference=False)
        while len(self._in_flight) >= 2:
            self._in_flight.popleft().result()
        self._in_flight.append(self._store_exec.submit(self._store, version, rows, columns, scored.embeddings,
                                                       scored.anomalies, on_stored))

    def _store(self, version: str, rows: list[Row], columns: dict[str, list], embeddings: np.ndarray,
               anomalies: list[Anomaly], on_stored: Sequence[OnStored] = ()) -> None:
        t1 = time.perf_counter()
        try:
            self.store.upsert_row_columns(version, columns, embeddings)
            self.metrics.stage_seconds.labels("store").observe(time.perf_counter() - t1)
            if anomalies:
                self._record_anomalies(anomalies)
        except StorageError as exc:
            self.metrics.errors.labels("storage").inc()
            logger.error("storing %d scored rows failed: %s; re-queued", len(rows), exc)
            self._stop.wait(1.0)
            self._requeue(rows, on_stored, front=False)  # re-scored later; uids make the retry idempotent
            return
        self.metrics.rows_processed.labels("scoring").inc(len(rows))
        self.processed += len(rows)
        _notify(on_stored)

    def _drain_stores(self) -> None:
        while self._in_flight:
            try:
                self._in_flight.popleft().result()
            except Exception:
                logger.exception("a store batch failed")

    def _record_anomalies(self, anomalies: list[Anomaly]) -> None:
        # A replay (or a client's retry) re-scores rows already scored: an event already stored was already
        # handed to the emitter, so it is neither stored again nor re-sent.
        uids = [finding_uid(a) for a in anomalies]
        seen = self.store.existing_anomaly_uids(uids)
        anomalies = [a for a, uid in zip(anomalies, uids, strict=True) if uid not in seen]
        if not anomalies:
            return
        events = []
        for a in anomalies:
            body = finding(a, self.otad_version)
            events.append({
                "uid": body["finding_info"]["uid"], "source_uid": a.row.uid, "signal": a.row.signal,
                "service": a.row.service[:128], "class_uid": a.row.class_uid, "time_ms": a.row.time_ms,
                "detected_ms": a.detected_unix_nano // 1_000_000, "score": a.score, "threshold": a.threshold,
                "model_version": a.model_version, "explanation": a.explanation[:2000],
                "event": {"finding": body, "neighbors": list(a.neighbors), "trace_id": a.row.trace_id,
                          "span_id": a.row.span_id, "raw_score": a.raw_score, "detector": a.detector},
            })
            self.metrics.anomalies.labels(a.row.signal).inc()
        self.store.upsert_anomalies(events)  # every event is kept, whatever happens to the export
        self.emitter.emit(anomalies)
        self.anomaly_count += len(anomalies)

    def _keep_unscored(self, rows: list[Row], callbacks: Sequence[OnStored], exc: Exception) -> None:
        """A batch the scorer fails on every time is kept, not lost: its rows go to the backlog collection
        unscored (where `otad train` and a later model see them) and the spool moves past it."""
        logger.error("scoring failed on a batch of %d rows (%s, %d attempt(s)); storing it unscored in the backlog",
                     len(rows), exc, max(self._process_failures, 1))
        self._process_failures = 0
        try:
            self.store.upsert_backlog(_backlog_records(rows))
        except StorageError as err:
            logger.error("could not store the unscored batch (%s); re-queued", err)
            self._requeue(rows, callbacks, front=False)
            return
        self.metrics.rows_unscored.inc(len(rows))
        _notify(callbacks)

    def _collect(self, rows: list[Row]) -> None:
        self.store.upsert_backlog(_backlog_records(rows))
        self._backlog.extend(rows)
        self.metrics.rows_processed.labels(self.state).inc(len(rows))
        self.processed += len(rows)
        if self._trainer is None and len(self._backlog) >= self.settings.bootstrap_rows:
            self._start_training()

    def _start_training(self) -> None:
        snapshot = list(self._backlog[-self.settings.train_max_rows:])
        self.state = "training"
        self.metrics.model_info.labels("none", "training").set(1)
        logger.info("bootstrap: %d rows collected; training the first model in the background (ingest continues)",
                    len(snapshot))
        self._trainer = threading.Thread(target=self._train, args=(snapshot,), name="otad-train", daemon=True)
        self._trainer.start()

    def _train(self, snapshot: list[Row]) -> None:
        s = self.settings
        try:
            mv = fit_version(snapshot, k=s.knn_k, alert_pvalue=s.alert_pvalue, embed_dim=s.embed_dim,
                             max_rows=s.reference_max_rows,
                             train_config=TrainConfig(epochs=s.train_epochs, seed=s.seed, threads=1))
            mv.save(s.models_dir)
            self._store_reference(mv, snapshot)
        except Exception as exc:  # keep collecting; a later batch retries training
            logger.exception("training the first model failed; still collecting")
            self.train_error = str(exc)
            self.state = "collecting"
            self._trainer = None
            self.settings = s.model_copy(update={"bootstrap_rows": len(self._backlog) + s.bootstrap_rows})
            return
        # Swap in the model on the worker's side: rows that arrived during training are scored next.
        pending = self._backlog[len(snapshot):] if self._backlog[: len(snapshot)] == snapshot else []
        self._backlog = []
        self._activate(mv)
        if pending:
            self.offer(pending)
        logger.info("model %s trained on %d rows; now scoring (%d rows that arrived meanwhile re-queued)",
                    mv.version, len(snapshot), len(pending))

    def _store_reference(self, mv: ModelVersion, rows: list[Row]) -> None:
        """Embed the training backlog into the version's collection as the reference window."""
        scorer = Scorer(mv, learn=False)
        self.store.ensure_rows_collection(mv.version, mv.config.embed_dim)
        for start in range(0, len(rows), 4096):
            part = rows[start:start + 4096]
            _, num, cat = scorer.featurize(part)
            emb = scorer.embedder.embed(num, cat)
            zeros = np.zeros(len(part))
            self.store.upsert_row_columns(mv.version, scored_columns(part, zeros, zeros, reference=True), emb)

    def _activate(self, mv: ModelVersion) -> None:
        self.store.ensure_rows_collection(mv.version, mv.config.embed_dim)
        old, self._scorer = self._scorer, self._new_scorer(mv)
        self._close_scorer(old)
        self.state = "scoring"
        settle_heap()  # the model and its state are long-lived now
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(mv.version, "scoring").set(1)


    def _new_scorer(self, mv: ModelVersion) -> Scorer | ScoringProcess:
        """A scoring child for a saved model version (OTAD_SCORE_PROCESS), else an in-process Scorer."""
        s = self.settings
        path = Path(s.models_dir) / mv.version
        if s.score_process and (path / "model.json").exists():
            try:
                return ScoringProcess(mv, path, k=s.knn_k, alert_pvalue=s.alert_pvalue, max_rows=s.reference_max_rows,
                                      threads=s.torch_threads, nice=s.background_nice)
            except ScoringProcessError as exc:
                logger.error("%s; scoring in the service process instead", exc)
        elif s.score_process:
            logger.warning("model %s is not saved under %s; scoring in the service process", mv.version, path.parent)
        return Scorer(mv, threads=s.torch_threads)

    def _restart_scorer(self) -> None:
        old = self._scorer
        if isinstance(old, ScoringProcess):
            self._close_scorer(old)
            self._scorer = self._new_scorer(old.mv)

    @staticmethod
    def _close_scorer(scorer: Scorer | ScoringProcess | None) -> None:
        if isinstance(scorer, ScoringProcess):
            scorer.close()


def scored_columns(rows: Sequence[Row], scores: np.ndarray, is_anomaly: np.ndarray, *, reference: bool,
                   ) -> dict[str, list]:
    """The fields of a model version's rows collection, column by column (see MilvusStore.upsert_row_columns).

    The stored row leaves out the resource attributes: features never read them, the backlog keeps whole
    rows for training, and anomaly events carry the resource of their source row.
    """
    return {
        "uid": [r.uid for r in rows], "signal": [r.signal for r in rows],
        "service": [r.service[:128] for r in rows], "class_uid": [r.class_uid for r in rows],
        "time_ms": [r.time_unix_nano // 1_000_000 for r in rows], "trace_id": [r.trace_id for r in rows],
        "score": np.asarray(scores, dtype=np.float64).tolist(), "is_anomaly": np.asarray(is_anomaly, dtype=bool).tolist(),
        "is_reference": [reference] * len(rows), "row": [row_to_dict(r, resource=False) for r in rows],
    }


def load_model(settings: Settings, *, incompatible_ok: bool = False) -> ModelVersion | None:
    """The current model version, or None when there is none (or, with incompatible_ok, when it was trained by
    a release whose feature contract this one cannot compute: the service then starts over from a cold start)."""
    try:
        return ModelVersion.load_current(Path(settings.models_dir), k=settings.knn_k,
                                         alert_pvalue=settings.alert_pvalue, max_rows=settings.reference_max_rows)
    except ContractVersionError as exc:
        if not incompatible_ok:
            raise
        logger.warning("the current model cannot be used: %s; starting from a cold start (a new model is trained "
                       "once %d rows have arrived)", exc, settings.bootstrap_rows)
        return None
