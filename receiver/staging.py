"""Before and around the first model: rows are staged in the backlog collection, the first model is trained from
the stored backlog, and staged rows are drained into the model's rows collection.

The backlog is a staging area: a row leaves it once it is stored in the model's rows collection (as a reference
row of the training window, or scored), so every acknowledged row is stored once. Training reads the *stored*
rows, so the rows an earlier run staged count, and a crash during training only means training again at the next
start. A model becomes current only after its reference rows are stored; a version a crash left unpromoted is
discarded.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from model.schema import Anomaly, Row, row_from_dict
from model.scorer import Scorer
from model.version import CURRENT, ModelVersion, promote_version
from receiver.metrics import Metrics
from receiver.retrain import fit
from receiver.settings import Settings
from receiver.writer import Writer, scored_columns
from storage import MilvusStore, StorageError

logger = logging.getLogger(__name__)

Offer = Callable[[list[Row], Callable[[], None]], bool]  # Pipeline.offer


class _Stopped(Exception):
    """The service stopped while the first model was training."""


class Staging:
    """The backlog and the first model's training; the pipeline calls it from its worker thread.

    Args:
        offer: queues rows for scoring with a callback run once they are stored (the drain uses it).
        stop: set when the service stops (the drain and training give up their waits).
    """

    def __init__(
        self,
        settings: Settings,
        store: MilvusStore,
        writer: Writer,
        metrics: Metrics,
        offer: Offer,
        stop: threading.Event,
        report: Callable[[list[Anomaly]], None] | None = None,
    ) -> None:
        self.settings, self.store, self.writer, self.metrics = settings, store, writer, metrics
        self._report = report  # stores and emits the anomalies found among the cold-start rows
        self._offer, self._stop = offer, stop
        self.rows = self._count()  # rows staged by this and earlier runs
        self._train_at = settings.bootstrap_rows  # backlog size that starts the next training attempt
        self._trainer: threading.Thread | None = None
        self._trained: tuple[ModelVersion, list[str]] | None = None
        self._drainer: threading.Thread | None = None
        self.train_error: str | None = None
        self.rescored = 0  # staged rows since scored and stored by a model (they were counted when staged)

    @property
    def training(self) -> bool:
        return self._trainer is not None and self._trained is None and self._trainer.is_alive()

    @property
    def busy(self) -> bool:
        """A trained model waits to be switched in, or the drain is running."""
        return self._trained is not None or (self._drainer is not None and self._drainer.is_alive())

    def _count(self) -> int:
        try:
            return self.store.count_backlog()
        except StorageError as exc:
            logger.error("cannot count the backlog (%s); counting from 0", exc)
            return 0

    # ----- at start -----
    def discard_unpromoted(self) -> None:
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

    def start(self, version: str | None) -> None:
        """Drain what an earlier run staged (with a model), or train at once if it staged enough (without)."""
        if version is not None and self.rows:
            self.start_drain(version)
        elif version is None and self.rows >= self._train_at:
            self._start_training()

    # ----- collecting -----
    def collect(self, rows: list[Row]) -> None:
        self.rows += self.writer.backlog(rows)
        if self._trainer is None and self.rows >= self._train_at:
            self.rows = self._count()  # the running count is high after a spool replay re-staged rows
            if self.rows >= self._train_at:
                self._start_training()

    def _start_training(self) -> None:
        self.metrics.model_info.labels("none", "training").set(1)
        logger.info(
            "bootstrap: %d rows stored; training the first model in the background (ingest continues)",
            self.rows,
        )
        self._trainer = threading.Thread(
            target=self._train, args=(self.rows,), name="otad-train", daemon=True
        )
        self._trainer.start()

    def _read(self, n: int) -> list[Row]:
        """The first `n` staged rows by time (those collected when training was triggered; rows staged since are
        scored by the new model), at most the newest OTAD_TRAIN_MAX_ROWS of them, oldest first."""
        return self._staged()[:n][-self.settings.train_max_rows :]

    def _stop_between_epochs(self, _record: dict[str, float]) -> None:
        if self._stop.is_set():
            raise _Stopped

    def join_training(self, timeout_s: float) -> None:
        """Wait for a training the stop interrupted to end (native threads must not outlive the interpreter)."""
        trainer = self._trainer
        if trainer is not None and trainer.is_alive():
            trainer.join(max(0.0, timeout_s))

    def _staged(self) -> list[Row]:
        """Every staged row, oldest first."""
        rows = [row_from_dict(d["row"]) for page in self.store.iter_backlog() for d in page]
        rows.sort(key=lambda r: r.time_unix_nano)
        return rows

    def _train(self, n: int) -> None:
        s = self.settings
        try:
            rows = self._read(n)
            logger.info("training the first model on %d stored rows", len(rows))
            mv = fit(s, rows, progress=self._stop_between_epochs)
            mv.save(s.models_dir, promote=False)
            self._store_reference(mv, rows)
            promote_version(s.models_dir, mv.version)
        except _Stopped:  # the service stops: the stored backlog trains again at the next start
            logger.info(
                "training stopped with the service; it starts again from the stored rows at the next start"
            )
            return
        except Exception as exc:  # keep collecting; a later batch retries training
            logger.exception("training the first model failed; still collecting")
            self.train_error = str(exc)
            self._train_at = self.rows + s.bootstrap_rows
            self._trainer = None
            return
        self._trained = (mv, [r.uid for r in rows])  # the worker switches it in between batches

    def _store_reference(self, mv: ModelVersion, rows: list[Row]) -> None:
        """Embed the training rows into the version's collection as the reference window, with the scores the
        ensemble gave them out of sample; the anomalies among them are reported (stored and emitted once)."""
        scorer = Scorer(mv, learn=False)
        judged, found = scorer.judged_anomalies()
        flagged = {a.row.uid for a in found}
        score_of = dict(zip([r.uid for r in mv.judged[0].rows], judged, strict=True)) if mv.judged else {}
        self.store.ensure_rows_collection(mv.version, mv.config.embed_dim)
        for start in range(0, len(rows), 4096):
            part = rows[start : start + 4096]
            _, num, cat = scorer.featurize(part)
            emb = scorer.embedder.embed(num, cat)
            scores = np.asarray([score_of.get(r.uid, 0.0) for r in part])
            alerts = np.asarray([r.uid in flagged for r in part], dtype=np.float64)
            self.writer.scored(mv.version, part, scored_columns(part, scores, alerts, reference=True), emb)
        mv.judged = None  # the training frame is large; the judgement is stored now
        if found and self._report is not None:
            logger.info("%d anomalies among the %d rows the first model trained on", len(found), len(rows))
            self._report(found)

    def take_trained(self) -> ModelVersion | None:
        """The newly trained model, once; the worker activates it and then calls `switched_in`."""
        if self._trained is None:
            return None
        return self._trained[0]

    def switched_in(self) -> None:
        """The new model scores from the next batch on: its training rows leave the backlog, and rows staged
        meanwhile are drained. `busy` stays true until the drain has started (callers waiting for idle)."""
        assert self._trained is not None
        mv, uids = self._trained
        self.delete(uids)
        logger.info("model %s trained on %d rows; now scoring", mv.version, len(uids))
        self.start_drain(mv.version)
        self._trained = None

    # ----- draining -----
    def start_drain(self, version: str) -> None:
        if self._drainer is not None and self._drainer.is_alive():
            return
        self._drainer = threading.Thread(
            target=self._drain, args=(version,), name="otad-backlog-drain", daemon=True
        )
        self._drainer.start()

    def _drain(self, version: str) -> None:
        """Score what is staged, in time order (context features follow time), removing each row once it is
        stored in the rows collection. Rows already there (a crash came between storing and removing) are only
        removed."""
        try:
            rows = self._staged()
            for start in range(0, len(rows), 4096):
                part = rows[start : start + 4096]
                done = self.store.existing_row_uids(version, [r.uid for r in part])
                if done:
                    self.delete(sorted(done))
                todo = [r for r in part if r.uid not in done]
                while todo and not self._offer(todo, partial(self._stored, [r.uid for r in todo])):
                    if self._stop.wait(0.2):
                        return
        except StorageError as exc:
            # At shutdown the store closes under the drain: expected, and nothing is lost (rows stay staged).
            log = logger.info if self._stop.is_set() else logger.error
            log("draining the backlog stopped (%s); it resumes at the next start", exc)
            return
        self.rows = self._count()  # rows still in flight leave it as they are stored
        if rows:
            logger.info("backlog: %d staged rows handed to model %s", len(rows), version)

    def _stored(self, uids: list[str]) -> None:
        """Drained rows are stored in the model's rows collection: they leave the backlog."""
        self.rescored += len(uids)
        self.delete(uids)

    def delete(self, uids: list[str]) -> None:
        """Remove stored rows from the backlog (a failure leaves them staged: the next start's drain removes them)."""
        try:
            self.store.delete_backlog(uids)
        except StorageError as exc:
            logger.error("could not remove %d stored rows from the backlog: %s", len(uids), exc)
            return
        self.rows = max(0, self.rows - len(uids))
