"""The pipeline: a bounded queue in front of featurize > embed > score > store > emit, run in batches.

States: `collecting` (no model: rows are staged in the backlog collection), `training` (the first model is being
trained in the background from the stored backlog; ingest keeps flowing), `scoring` (a model is loaded). The
backlog and the first training are `receiver/staging.py`; writes and dead letters are `receiver/writer.py`.
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

from model.heap import settle_heap
from model.schema import Anomaly, Row
from model.scorer import Scorer
from model.version import ModelVersion
from model.worker import ScoringProcess, ScoringProcessError
from receiver.consumer import NoRoomError, Received
from receiver.emit import AnomalyEmitter
from receiver.metrics import Metrics
from receiver.scorers import AnyScorer, PipelineHooks, close_scorer, new_scorer
from receiver.settings import Settings
from receiver.staging import Staging
from receiver.writer import Writer, scored_columns
from storage import MilvusStore, StorageError

logger = logging.getLogger(__name__)

OnStored = Callable[[], None]  # called once every row of an offered part is stored (the spool commits)


def _notify(callbacks: Sequence[OnStored]) -> None:
    for cb in callbacks:
        try:
            cb()
        except Exception:
            logger.exception("an on_stored callback failed")


class Pipeline:
    """The consumer behind the Export handlers (directly, or behind the spool): queue rows, score and store them.

    `consume` (the Consumer protocol) and `offer` are called from gRPC/HTTP threads; one worker thread takes
    batches, one store thread writes them (overlapping the next batch's scoring).
    """

    def __init__(
        self,
        settings: Settings,
        store: MilvusStore,
        emitter: AnomalyEmitter,
        metrics: Metrics,
        version: str,
        model: ModelVersion | None = None,
    ):
        self.settings = settings
        self.store = store
        self.emitter = emitter
        self.metrics = metrics
        self.otad_version = version
        self.writer = Writer(
            store,
            metrics,
            Path(settings.data_dir) / "dead-letter",
            dead_letter_max_bytes=settings.dead_letter_max_bytes,
            otad_version=version,
        )
        self._queue: deque[tuple[list[Row], tuple[OnStored, ...]]] = deque()
        self._queued = 0  # rows in the queue
        self._in_hand = 0  # rows taken from the queue and not yet stored (scoring, storing, retrying)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.draining = False  # stop() was called: not ready for new data
        self._last_progress = time.monotonic()  # rows stored, or nothing to do
        self._busy = False
        self._worker = threading.Thread(target=self._run, name="otad-pipeline", daemon=True)
        self.staging = Staging(settings, store, self.writer, metrics, self.offer, self._stop, self._report)
        self._scorer: Scorer | ScoringProcess | None = None
        self._process_failures = 0  # consecutive batches the scoring process died on
        self.hooks: PipelineHooks | None = None  # receiver/lifecycle.py: hot swap and shadow scoring
        self.screen: Callable[..., list[Anomaly]] | None = None  # receiver/feedback.py, set by the Service
        self.processed = 0
        self.anomaly_count = 0
        if model is not None:
            self.activate(model)
        else:
            self.staging.discard_unpromoted()
        # Storing overlaps with scoring the next batch (Milvus calls release the GIL part of the time);
        # at most two batches are in flight, which bounds memory and keeps backpressure on the queue.
        self._store_exec = ThreadPoolExecutor(1, thread_name_prefix="otad-store")
        self._in_flight: deque[Future] = deque()

    # ----- ingest side (called from gRPC threads; must be fast) -----
    def consume(self, received: Received) -> None:
        """The Consumer protocol: queue the rows or raise NoRoomError (the client retries)."""
        if not self.offer(received.rows, received.on_stored):
            raise NoRoomError(f"otad ingest queue is full ({self._queued} rows); retry later")

    def offer(self, rows: list[Row], on_stored: OnStored | None = None) -> bool:
        """Queue rows for processing. False when the bounded queue has no room.

        `on_stored` is called (from a pipeline thread) once every one of these rows is stored in Milvus (or,
        refused by Milvus as data, written to the dead-letter file).
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
            self._gauge()
            self._cond.notify()
        return True

    def has_room(self) -> bool:
        return self._queued < self.settings.queue_rows

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def state(self) -> str:
        return (
            "scoring" if self._scorer is not None else "training" if self.staging.training else "collecting"
        )

    scorer = property(lambda self: self._scorer, doc="The current version's scorer (None before the first).")

    @property
    def stalled(self) -> bool:
        """Rows are waiting and none has been stored for OTAD_PIPELINE_STALL_S (e.g. Milvus refuses every write)."""
        waiting = self._queued or self._in_hand
        return bool(waiting) and time.monotonic() - self._last_progress > self.settings.pipeline_stall_s

    def status(self) -> dict:
        stalled = self.stalled
        return {
            "state": self.state,
            "ready": not self._stop.is_set() and not self.draining and not stalled,
            "stalled": stalled,
            "model_version": self._scorer.mv.version if self._scorer else None,
            "queued_rows": self._queued + self._in_hand,
            "backlog_rows": self.staging.rows,
            "bootstrap_rows": self.settings.bootstrap_rows,
            # each row once: a row staged before the first model counts when staged, not again when scored
            "processed_rows": self.processed - self.staging.rescored,
            "anomalies": self.anomaly_count,
            "dead_lettered_rows": self.writer.dead_lettered,
            "train_error": self.staging.train_error,
        }

    def _gauge(self) -> None:
        self.metrics.queue_rows.set(self._queued + self._in_hand)  # every waiting row, a batch in retry too

    def _done(self, n: int) -> None:
        """`n` rows in hand are settled (stored, dead-lettered or handed elsewhere)."""
        with self._cond:
            self._in_hand = max(0, self._in_hand - n)
            self._last_progress = time.monotonic()
            self._gauge()

    # ----- lifecycle -----
    def start(self) -> None:
        self._worker.start()
        self.staging.start(self._scorer.mv.version if self._scorer is not None else None)

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
        self.staging.join_training(deadline - time.monotonic() + 30.0)  # ends at the next epoch

    def wait_idle(self, timeout_s: float) -> bool:
        """Test/CLI helper: wait until the queue is empty, the current batch finished and the backlog drained."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (
                not self.staging.busy
                and not self._queued
                and not self._busy
                and not any(not f.done() for f in list(self._in_flight))
            ):
                return True
            time.sleep(0.02)
        return False

    def _take(self) -> tuple[list[Row], list[OnStored]]:
        batch: list[Row] = []
        callbacks: list[OnStored] = []
        wait_until = None
        with self._cond:
            while not self._stop.is_set():
                while self._queue and len(batch) < self.settings.batch_rows:
                    part, cbs = self._queue.popleft()
                    self._queued -= len(part)
                    self._in_hand += len(part)
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
                    if not self._in_hand:
                        self._last_progress = time.monotonic()  # idle is not stalled
                    if self.staging.take_trained() is not None or (self.hooks and self.hooks.pending()):
                        break  # a new model waits to be switched in
                    self._cond.wait(0.5)
            if self._stop.is_set() and batch:
                # Stopping while a batch was still gathering: it is not "in hand" yet, so it goes back to the
                # queue (spooled rows replay at the next start) instead of starting work past the deadline.
                self._queue.appendleft((batch, tuple(callbacks)))
                self._queued += len(batch)
                self._in_hand -= len(batch)
                batch, callbacks = [], []
            self._busy = bool(batch)
            self._gauge()
        return batch, callbacks

    def _requeue(self, rows: list[Row], callbacks: Sequence[OnStored], front: bool) -> None:
        with self._cond:
            (self._queue.appendleft if front else self._queue.append)((rows, tuple(callbacks)))
            self._queued += len(rows)
            self._in_hand = max(0, self._in_hand - len(rows))
            self._gauge()
            self._cond.notify()

    def _run(self) -> None:
        while not self._stop.is_set():
            trained = self.staging.take_trained()
            if trained is not None:  # on this thread, so no batch is half collected
                self.activate(trained)
                self.staging.switched_in()
            if self.hooks is not None:
                self.hooks.between_batches()  # may switch to another version (receiver/lifecycle.py)
            batch, callbacks = self._take()
            if batch:
                self._handle(batch, callbacks)
        self._drain_stores()
        self._store_exec.shutdown(wait=True)
        close_scorer(self._scorer)

    def _handle(self, batch: list[Row], callbacks: list[OnStored]) -> None:
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
        except StorageError as exc:  # Milvus is unreachable or failing: wait, then retry the batch
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

    # ----- processing -----
    def _report(self, anomalies: list[Anomaly]) -> None:
        """Store and emit anomalies found outside the scoring path (the first model's own training rows)."""
        self.anomaly_count += self.writer.anomalies(anomalies, self.emitter)

    def process(self, rows: list[Row], on_stored: Sequence[OnStored] = ()) -> None:
        scorer = self._scorer
        if scorer is None:
            self.staging.collect(rows)
            self.metrics.rows_processed.labels(self.state).inc(len(rows))
            self.processed += len(rows)
            self._done(len(rows))
            _notify(on_stored)
            return
        t0 = time.perf_counter()
        scored = scorer.score(rows)
        self.metrics.stage_seconds.labels("featurize_embed_score").observe(time.perf_counter() - t0)
        if self.hooks is not None:
            self.hooks.scored(rows, scored)  # drift window, challenger in shadow
        scored.anomalies = self.screen(scorer, scored) if self.screen else scored.anomalies  # feedback
        for notice in scored.notices:  # one line per new source or kind, not one anomaly per row of it
            if notice.text:
                logger.info("%s", notice.text)
            (self.metrics.new_sources if notice.entity == "source" else self.metrics.new_kinds).inc(notice.n)
        self.metrics.set_detector_weights(scored.weights)
        columns = scored_columns(rows, scored.scores, scored.is_anomaly, reference=False)
        while len(self._in_flight) >= 2:
            self._in_flight.popleft().result()
        self._in_flight.append(
            self._store_exec.submit(
                self._store, scorer.mv.version, rows, columns, scored.embeddings, scored.anomalies, on_stored
            )
        )

    def _store(
        self,
        version: str,
        rows: list[Row],
        columns: dict[str, list],
        embeddings: np.ndarray,
        anomalies: list[Anomaly],
        on_stored: Sequence[OnStored] = (),
    ) -> None:
        t1 = time.perf_counter()
        try:
            self.writer.scored(version, rows, columns, embeddings)
            self.metrics.stage_seconds.labels("store").observe(time.perf_counter() - t1)
            if anomalies:
                self.anomaly_count += self.writer.anomalies(anomalies, self.emitter)
            self.writer.advance(rows, self.emitter)  # findings quiet since then send their last Update
        except StorageError as exc:
            self.metrics.errors.labels("storage").inc()
            logger.error("storing %d scored rows failed: %s; re-queued", len(rows), exc)
            self._stop.wait(1.0)
            self._requeue(rows, on_stored, front=False)  # re-scored later; uids make the retry idempotent
            return
        self.metrics.rows_processed.labels("scoring").inc(len(rows))
        self.processed += len(rows)
        self._done(len(rows))
        _notify(on_stored)

    def _drain_stores(self) -> None:
        while self._in_flight:
            try:
                self._in_flight.popleft().result()
            except Exception:
                logger.exception("a store batch failed")

    def _keep_unscored(self, rows: list[Row], callbacks: Sequence[OnStored], exc: Exception) -> None:
        """A batch the scorer fails on every time is kept, not lost: its rows go to the backlog collection
        unscored (where `otad train` and a later model see them) and the spool moves past it."""
        logger.error(
            "scoring failed on a batch of %d rows (%s, %d attempt(s)); storing it unscored in the backlog",
            len(rows),
            exc,
            max(self._process_failures, 1),
        )
        self._process_failures = 0
        try:
            stored = self.writer.backlog(rows)
        except StorageError as err:
            logger.error("could not store the unscored batch (%s); re-queued", err)
            self._requeue(rows, callbacks, front=False)
            return
        self.metrics.rows_unscored.inc(stored)
        self._done(len(rows))
        _notify(callbacks)

    # ----- the scorer -----
    def activate(self, mv: ModelVersion, scorer: AnyScorer | None = None) -> AnyScorer | None:
        """Score with `mv` from the next batch; the old scorer closes, or is returned when `scorer` is given."""
        self.store.ensure_rows_collection(mv.version, mv.config.embed_dim)
        old, self._scorer = self._scorer, scorer or new_scorer(self.settings, mv)
        if scorer is None:
            close_scorer(old)
        settle_heap()  # the model and its state are long-lived now
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(mv.version, "scoring").set(1)
        return old if scorer is not None else None

    def _restart_scorer(self) -> None:
        old = self._scorer
        if isinstance(old, ScoringProcess):
            close_scorer(old)
            self._scorer = new_scorer(self.settings, old.mv)
