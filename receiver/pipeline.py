"""The pipeline: a bounded queue in front of featurize > embed > score > store > emit, run in batches.

States: `collecting` (no model: rows are staged in the backlog collection), `training` (the first model is being
trained in the background from the stored backlog; ingest keeps flowing), `scoring` (a model is loaded).

Every acknowledged row is stored once: the backlog is a staging area that rows leave once they are stored in the
model's rows collection (as reference rows of the training window, or scored). Rows Milvus refuses as data are
isolated by bisection and go to the dead-letter file, so one bad row never blocks the rows behind it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from model.features import ContractVersionError
from model.heap import settle_heap
from model.schema import Anomaly, Row, row_from_dict, row_to_dict
from model.train import TrainConfig
from model.version import CURRENT, ModelVersion, Scorer, fit_version, promote_version
from model.worker import ScoringProcess, ScoringProcessError
from receiver.emit import AnomalyEmitter, finding, finding_uid
from receiver.metrics import Metrics
from receiver.ratelog import warn_limited
from receiver.settings import Settings
from storage import MilvusStore, StorageError
from storage.deadletter import DeadLetterFile

logger = logging.getLogger(__name__)

OnStored = Callable[[], None]  # called once every row of an offered part is stored (the spool commits)
_EXPLANATION_BYTES = 4000  # the anomalies collection's explanation field holds 4096 bytes


def _backlog_records(rows: Sequence[Row]) -> list[dict]:
    return [{"uid": r.uid, "signal": r.signal, "service": r.service[:128], "class_uid": r.class_uid,
             "time_ms": r.time_ms, "trace_id": r.trace_id, "row": row_to_dict(r)} for r in rows]


def _cut_bytes(text: str, limit: int) -> str:
    data = text.encode("utf-8", "surrogatepass")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def _notify(callbacks: Sequence[OnStored]) -> None:
    for cb in callbacks:
        try:
            cb()
        except Exception:
            logger.exception("an on_stored callback failed")


def _cause(exc: StorageError) -> str:
    """A short, low-cardinality name for why storage refused data (the metric label and the log key)."""
    return type(exc.__cause__).__name__ if exc.__cause__ is not None else "StorageError"


class Pipeline:
    def __init__(self, settings: Settings, store: MilvusStore, emitter: AnomalyEmitter, metrics: Metrics,
                 version: str, model: ModelVersion | None = None):
        self.settings = settings
        self.store = store
        self.emitter = emitter
        self.metrics = metrics
        self.otad_version = version
        self.dead_letters = DeadLetterFile(Path(settings.data_dir) / "dead-letter",
                                           max_bytes=settings.dead_letter_max_bytes)
        self._queue: deque[tuple[list[Row], tuple[OnStored, ...]]] = deque()
        self._queued = 0  # rows in the queue
        self._in_hand = 0  # rows taken from the queue and not yet stored (scoring, storing, retrying)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.draining = False  # stop() was called: not ready for new data
        self._last_progress = time.monotonic()  # rows stored, or nothing to do
        self._worker = threading.Thread(target=self._run, name="otad-pipeline", daemon=True)
        self._trainer: threading.Thread | None = None
        self._trained: tuple[ModelVersion, list[str]] | None = None  # handed from the trainer to the worker
        self._drainer: threading.Thread | None = None
        self._scorer: Scorer | ScoringProcess | None = None
        self._process_failures = 0  # consecutive batches the scoring process died on
        self.state = "collecting"
        self.train_error: str | None = None
        self.processed = 0
        self.anomaly_count = 0
        self.dead_lettered = 0
        self._backlog_rows = self._count_backlog()  # rows staged by this and earlier runs
        self._train_at = settings.bootstrap_rows  # backlog size that starts the next training attempt
        if model is not None:
            self._activate(model)
        else:
            self._discard_unpromoted()
        # Storing overlaps with scoring the next batch (Milvus calls release the GIL part of the time);
        # at most two batches are in flight, which bounds memory and keeps backpressure on the queue.
        self._store_exec = ThreadPoolExecutor(1, thread_name_prefix="otad-store")
        self._in_flight: deque[Future] = deque()

    def _discard_unpromoted(self) -> None:
        """With no current model, a saved version is one a crash stopped before its promotion: its rows
        collection holds copies of staged rows, so it is dropped (the backlog still has them) and retrained."""
        models = Path(self.settings.models_dir)
        if not models.is_dir() or (models / CURRENT).exists():
            return
        for path in sorted(p for p in models.iterdir() if (p / "model.json").is_file()):
            try:
                self.store.drop_rows_collection(path.name)
            except StorageError as exc:
                logger.error("cannot drop the rows of unpromoted model %s: %s", path.name, exc)
                continue
            shutil.rmtree(path, ignore_errors=True)
            logger.info("discarded model %s: its training was interrupted before it was promoted", path.name)

    def _count_backlog(self) -> int:
        try:
            return self.store.count_backlog()
        except StorageError as exc:
            logger.error("cannot count the backlog at start (%s); counting from 0", exc)
            return 0

    # ----- ingest side (called from gRPC threads; must be fast) -----
    def offer(self, rows: list[Row], on_stored: OnStored | None = None) -> bool:
        """Queue rows for processing. False when the bounded queue has no room (caller answers UNAVAILABLE).

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

    @property
    def full(self) -> bool:
        return self._queued >= self.settings.queue_rows

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def stalled(self) -> bool:
        """Rows are waiting and none has been stored for OTAD_PIPELINE_STALL_S (e.g. Milvus refuses every write)."""
        waiting = self._queued or self._in_hand
        return bool(waiting) and time.monotonic() - self._last_progress > self.settings.pipeline_stall_s

    def status(self) -> dict:
        stalled = self.stalled
        return {
            "state": self.state, "ready": not self._stop.is_set() and not self.draining and not stalled,
            "stalled": stalled, "model_version": self._scorer.mv.version if self._scorer else None,
            "queued_rows": self._queued + self._in_hand, "backlog_rows": self._backlog_rows,
            "bootstrap_rows": self.settings.bootstrap_rows, "processed_rows": self.processed,
            "anomalies": self.anomaly_count, "dead_lettered_rows": self.dead_lettered,
            "train_error": self.train_error,
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
        if self._scorer is not None and self._backlog_rows:
            self._start_drain()  # staged rows an earlier run did not get to score
        elif self._scorer is None and self._backlog_rows >= self._train_at:
            self._start_training()  # an earlier run collected enough (or crashed while training)

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
        """Test/CLI helper: wait until the queue is empty, the current batch finished and the backlog drained."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            draining = (self._drainer is not None and self._drainer.is_alive()) or self._trained is not None
            if not draining and not self._queued and not self._busy \
                    and not any(not f.done() for f in list(self._in_flight)):
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
                    if self._trained is not None:
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
            if self._trained is not None:
                self._switch_in_trained()
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
        self._drain_stores()
        self._store_exec.shutdown(wait=True)
        self._close_scorer(self._scorer)

    # ----- storing, with bad rows set aside -----
    def _write_isolating(self, stage: str, items: Sequence[Any], write: Callable[[list[int]], object],
                         describe: Callable[[int], dict]) -> int:
        """Write `items` with `write(indices)`. When Milvus refuses the *data* (not an outage), bisect to find the
        items it refuses, store the rest, and put each refused item in the dead-letter file with its error.

        Returns:
            How many items were dead-lettered.

        Raises:
            StorageError: Milvus is unreachable or failing (retryable); the caller retries the whole batch
            (writes are upserts by uid, so what was already written is not duplicated).
        """
        refused: list[tuple[int, StorageError]] = []

        def attempt(idx: list[int]) -> None:
            try:
                write(idx)
            except StorageError as exc:
                if exc.retryable:
                    raise
                if len(idx) == 1:
                    refused.append((idx[0], exc))
                    return
                mid = len(idx) // 2
                attempt(idx[:mid])
                attempt(idx[mid:])

        attempt(list(range(len(items))))
        for i, exc in refused:
            cause = _cause(exc)
            item = describe(i)
            if self.dead_letters.append(stage, str(exc), item):
                self.metrics.dead_lettered.labels(stage, cause).inc()
                warn_limited(logger, f"dead-letter:{stage}:{cause}",
                             "Milvus refused %s item %s: %s; written to %s", stage, item.get("uid"), exc,
                             self.dead_letters.path)
            else:
                self.metrics.dead_lettered.labels(stage, "dead_letter_full").inc()
                logger.error("Milvus refused %s item %s (%s) and the dead-letter file %s is full "
                             "(OTAD_DEAD_LETTER_MAX_BYTES): the item is dropped", stage, item.get("uid"), exc,
                             self.dead_letters.path)
        self.dead_lettered += len(refused)
        return len(refused)

    def _upsert_backlog(self, rows: Sequence[Row]) -> int:
        """Stage rows in the backlog; returns how many were stored (the rest were dead-lettered)."""
        records = _backlog_records(rows)
        failed = self._write_isolating(
            "backlog", records, lambda idx: self.store.upsert_backlog([records[i] for i in idx]),
            lambda i: records[i]["row"])
        return len(records) - failed

    def _upsert_scored(self, version: str, rows: Sequence[Row], columns: dict[str, list],
                       embeddings: np.ndarray) -> None:
        def write(idx: list[int]) -> None:
            if len(idx) == len(rows):
                self.store.upsert_row_columns(version, columns, embeddings)
            else:
                self.store.upsert_row_columns(version, {k: [v[i] for i in idx] for k, v in columns.items()},
                                              embeddings[idx])

        self._write_isolating("rows", rows, write, lambda i: row_to_dict(rows[i]))

    # ----- processing -----
    def process(self, rows: list[Row], on_stored: Sequence[OnStored] = ()) -> None:
        scorer = self._scorer
        if scorer is None:
            self._collect(rows)
            self._done(len(rows))
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
            self._upsert_scored(version, rows, columns, embeddings)
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
        self._done(len(rows))
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
                "model_version": a.model_version, "explanation": _cut_bytes(a.explanation, _EXPLANATION_BYTES),
                "event": {"finding": body, "neighbors": list(a.neighbors), "trace_id": a.row.trace_id,
                          "span_id": a.row.span_id, "raw_score": a.raw_score, "detector": a.detector},
            })
            self.metrics.anomalies.labels(a.row.signal).inc()
        # Every event is kept, whatever happens to the export; one Milvus refuses goes to the dead-letter file.
        self._write_isolating("anomalies", events, lambda idx: self.store.upsert_anomalies([events[i] for i in idx]),
                              lambda i: events[i])
        self.emitter.emit(anomalies)
        self.anomaly_count += len(anomalies)

    def _keep_unscored(self, rows: list[Row], callbacks: Sequence[OnStored], exc: Exception) -> None:
        """A batch the scorer fails on every time is kept, not lost: its rows go to the backlog collection
        unscored (where `otad train` and a later model see them) and the spool moves past it."""
        logger.error("scoring failed on a batch of %d rows (%s, %d attempt(s)); storing it unscored in the backlog",
                     len(rows), exc, max(self._process_failures, 1))
        self._process_failures = 0
        try:
            stored = self._upsert_backlog(rows)
        except StorageError as err:
            logger.error("could not store the unscored batch (%s); re-queued", err)
            self._requeue(rows, callbacks, front=False)
            return
        self.metrics.rows_unscored.inc(stored)
        self._done(len(rows))
        _notify(callbacks)

    # ----- before the first model: collect, train, switch in -----
    def _collect(self, rows: list[Row]) -> None:
        stored = self._upsert_backlog(rows)
        self._backlog_rows += stored
        self.metrics.rows_processed.labels(self.state).inc(len(rows))
        self.processed += len(rows)
        if self._trainer is None and self._backlog_rows >= self._train_at:
            self._backlog_rows = self._count_backlog()  # the running count is high after a spool replay
            if self._backlog_rows >= self._train_at:
                self._start_training()

    def _start_training(self) -> None:
        self.state = "training"
        self.metrics.model_info.labels("none", "training").set(1)
        logger.info("bootstrap: %d rows stored; training the first model in the background (ingest continues)",
                    self._backlog_rows)
        self._trainer = threading.Thread(target=self._train, args=(self._backlog_rows,), name="otad-train",
                                         daemon=True)
        self._trainer.start()

    def _read_backlog(self, n: int) -> list[Row]:
        """The first `n` staged rows by time (those collected when training was triggered; rows staged since are
        scored by the new model), at most the newest OTAD_TRAIN_MAX_ROWS of them, oldest first."""
        rows = [row_from_dict(d["row"]) for page in self.store.iter_backlog() for d in page]
        rows.sort(key=lambda r: r.time_unix_nano)
        return rows[:n][-self.settings.train_max_rows:]

    def _train(self, n: int) -> None:
        """Train from the stored backlog, store the training rows as the version's reference rows, then promote
        the version. A crash anywhere before the promotion leaves the backlog as it was: the next start trains
        again from it."""
        s = self.settings
        try:
            rows = self._read_backlog(n)
            logger.info("training the first model on %d stored rows", len(rows))
            mv = fit_version(rows, k=s.knn_k, alert_pvalue=s.alert_pvalue, embed_dim=s.embed_dim,
                             max_rows=s.reference_max_rows,
                             train_config=TrainConfig(epochs=s.train_epochs, seed=s.seed, threads=1))
            mv.save(s.models_dir, promote=False)
            self._store_reference(mv, rows)
            promote_version(s.models_dir, mv.version)
        except Exception as exc:  # keep collecting; a later batch retries training
            logger.exception("training the first model failed; still collecting")
            self.train_error = str(exc)
            self.state = "collecting"
            self._train_at = self._backlog_rows + s.bootstrap_rows
            self._trainer = None
            return
        self._trained = (mv, [r.uid for r in rows])  # the worker switches it in between batches
        with self._cond:
            self._cond.notify_all()

    def _switch_in_trained(self) -> None:
        """On the worker thread, so no batch is half collected: the new model scores from the next batch on;
        the training rows leave the backlog, and rows staged meanwhile are scored by the drain."""
        assert self._trained is not None
        mv, uids = self._trained
        self._trained = None
        self._activate(mv)
        try:
            self.store.delete_backlog(uids)
            self._backlog_rows = max(0, self._backlog_rows - len(uids))
        except StorageError as exc:  # the drain finds them in the rows collection and deletes them then
            logger.error("could not remove the training rows from the backlog (%s); the drain will", exc)
        logger.info("model %s trained on %d rows; now scoring", mv.version, len(uids))
        self._start_drain()

    def _store_reference(self, mv: ModelVersion, rows: list[Row]) -> None:
        """Embed the training rows into the version's collection as the reference window."""
        scorer = Scorer(mv, learn=False)
        self.store.ensure_rows_collection(mv.version, mv.config.embed_dim)
        for start in range(0, len(rows), 4096):
            part = rows[start:start + 4096]
            _, num, cat = scorer.featurize(part)
            emb = scorer.embedder.embed(num, cat)
            zeros = np.zeros(len(part))
            self._upsert_scored(mv.version, part, scored_columns(part, zeros, zeros, reference=True), emb)

    # ----- the backlog drain: staged rows are scored, then leave the backlog -----
    def _start_drain(self) -> None:
        if self._drainer is not None and self._drainer.is_alive():
            return
        self._drainer = threading.Thread(target=self._drain_backlog, name="otad-backlog-drain", daemon=True)
        self._drainer.start()

    def _drain_backlog(self) -> None:
        """Score what is staged in the backlog, in time order (context features follow time), and remove each row
        once it is stored in the rows collection. Rows already there (a crash came between storing and removing)
        are only removed."""
        scorer = self._scorer
        if scorer is None:
            return
        version = scorer.mv.version
        try:
            rows = [row_from_dict(d["row"]) for page in self.store.iter_backlog() for d in page]
            rows.sort(key=lambda r: r.time_unix_nano)
            for start in range(0, len(rows), 4096):
                part = rows[start:start + 4096]
                done = self.store.existing_row_uids(version, [r.uid for r in part])
                if done:
                    self._delete_staged(sorted(done))
                todo = [r for r in part if r.uid not in done]
                on_stored = partial(self._delete_staged, [r.uid for r in todo])
                while todo and not self.offer(todo, on_stored):
                    if self._stop.wait(0.2):
                        return
        except StorageError as exc:
            logger.error("draining the backlog stopped (%s); it resumes at the next start", exc)
            return
        self._backlog_rows = self._count_backlog()  # rows still in flight leave it as they are stored
        if rows:
            logger.info("backlog: %d staged rows handed to model %s", len(rows), version)

    def _delete_staged(self, uids: list[str]) -> None:
        try:
            self.store.delete_backlog(uids)
        except StorageError as exc:  # stays staged: the next start's drain removes it
            logger.error("could not remove %d scored rows from the backlog: %s", len(uids), exc)
            return
        self._backlog_rows = max(0, self._backlog_rows - len(uids))

    # ----- the scorer -----
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
