"""Store stage, as the pipeline sees it: rows and anomaly events written to Milvus, bad items set aside.

When Milvus refuses the *data* of a write (not an outage), the write is bisected to find the items it refuses; the
rest are stored and each refused item goes to the dead-letter file with its error. One bad row therefore never
blocks the rows behind it, and nothing is dropped without a count and a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.schema import Anomaly, Row, row_to_dict
from receiver.emit import AnomalyEmitter
from receiver.events import AnomalyEvent, anomaly_uid
from receiver.metrics import Metrics
from receiver.ratelog import warn_limited
from storage import MilvusStore, StorageError
from storage.deadletter import DeadLetterFile

logger = logging.getLogger(__name__)

_EXPLANATION_BYTES = 4000  # the anomalies collection's explanation field holds 4096 bytes


def backlog_records(rows: Sequence[Row]) -> list[dict]:
    """Rows as records of the backlog collection (the whole row, resource included, for training)."""
    return [
        {
            "uid": r.uid,
            "signal": r.signal,
            "service": r.service[:128],
            "class_uid": r.class_uid,
            "time_ms": r.time_ms,
            "trace_id": r.trace_id,
            "row": row_to_dict(r),
        }
        for r in rows
    ]


def scored_columns(
    rows: Sequence[Row], scores: np.ndarray, is_anomaly: np.ndarray, *, reference: bool
) -> dict[str, list]:
    """The fields of a model version's rows collection, column by column (see MilvusStore.upsert_row_columns).

    The stored row leaves out the resource attributes: features never read them, the backlog keeps whole
    rows for training, and anomaly events carry the resource of their source row.
    """
    return {
        "uid": [r.uid for r in rows],
        "signal": [r.signal for r in rows],
        "service": [r.service[:128] for r in rows],
        "class_uid": [r.class_uid for r in rows],
        "time_ms": [r.time_unix_nano // 1_000_000 for r in rows],
        "trace_id": [r.trace_id for r in rows],
        "score": np.asarray(scores, dtype=np.float64).tolist(),
        "is_anomaly": np.asarray(is_anomaly, dtype=bool).tolist(),
        "is_reference": [reference] * len(rows),
        "row": [row_to_dict(r, resource=False) for r in rows],
    }


def anomaly_record(uid: str, a: Anomaly, event: dict[str, Any]) -> dict[str, Any]:
    """The anomalies-collection record of one anomaly; `event` adds what its path knows (the finding, or the
    feedback that silenced it)."""
    return {
        "uid": uid,
        "source_uid": a.row.uid,
        "signal": a.row.signal,
        "service": a.row.service[:128],
        "class_uid": a.row.class_uid,
        "time_ms": a.row.time_ms,
        "detected_ms": a.detected_unix_nano // 1_000_000,
        "score": a.score,
        "threshold": a.threshold,
        "model_version": a.model_version,
        "explanation": _cut_bytes(a.explanation, _EXPLANATION_BYTES),
        "event": {
            **event,
            "neighbors": list(a.neighbors),
            "trace_id": a.row.trace_id,
            "span_id": a.row.span_id,
            "raw_score": a.raw_score,
            "detector": a.detector,
        },
    }


def _cut_bytes(text: str, limit: int) -> str:
    data = text.encode("utf-8", "surrogatepass")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def _cause(exc: StorageError) -> str:
    """A short, low-cardinality name for why storage refused data (the metric label and the log key)."""
    return type(exc.__cause__).__name__ if exc.__cause__ is not None else "StorageError"


class Writer:
    """Writes for the pipeline: the backlog, a version's rows, anomaly events; refused items to the dead letters.

    Every method raises StorageError only for an outage (retryable): the caller retries the whole batch, and
    writes are upserts by uid, so what was already written is not duplicated.
    """

    def __init__(
        self,
        store: MilvusStore,
        metrics: Metrics,
        dead_letter_dir: Path,
        *,
        dead_letter_max_bytes: int,
        otad_version: str,
    ) -> None:
        self.store, self.metrics, self.otad_version = store, metrics, otad_version
        self.dead_letters = DeadLetterFile(dead_letter_dir, max_bytes=dead_letter_max_bytes)
        self.dead_lettered = 0

    def write_isolating(
        self,
        stage: str,
        items: Sequence[Any],
        write: Callable[[list[int]], object],
        describe: Callable[[int], dict],
    ) -> int:
        """Write `items` with `write(indices)`, bisecting around the items Milvus refuses as data.

        Returns:
            How many items were dead-lettered.
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
            self._dead_letter(stage, exc, describe(i))
        self.dead_lettered += len(refused)
        return len(refused)

    def _dead_letter(self, stage: str, exc: StorageError, item: dict) -> None:
        cause = _cause(exc)
        if self.dead_letters.append(stage, str(exc), item):
            self.metrics.dead_lettered.labels(stage, cause).inc()
            warn_limited(
                logger,
                f"dead-letter:{stage}:{cause}",
                "Milvus refused %s item %s: %s; written to %s",
                stage,
                item.get("uid"),
                exc,
                self.dead_letters.path,
            )
        else:
            self.metrics.dead_lettered.labels(stage, "dead_letter_full").inc()
            logger.error(
                "Milvus refused %s item %s (%s) and the dead-letter file %s is full "
                "(OTAD_DEAD_LETTER_MAX_BYTES): the item is dropped",
                stage,
                item.get("uid"),
                exc,
                self.dead_letters.path,
            )

    def backlog(self, rows: Sequence[Row]) -> int:
        """Stage rows in the backlog; returns how many were stored (the rest were dead-lettered)."""
        records = backlog_records(rows)
        failed = self.write_isolating(
            "backlog",
            records,
            lambda idx: self.store.upsert_backlog([records[i] for i in idx]),
            lambda i: records[i]["row"],
        )
        return len(records) - failed

    def scored(
        self, version: str, rows: Sequence[Row], columns: dict[str, list], embeddings: np.ndarray
    ) -> None:
        """A version's rows (scored, or reference rows), column by column."""

        def write(idx: list[int]) -> None:
            if len(idx) == len(rows):
                self.store.upsert_row_columns(version, columns, embeddings)
            else:
                self.store.upsert_row_columns(
                    version, {k: [v[i] for i in idx] for k, v in columns.items()}, embeddings[idx]
                )

        self.write_isolating("rows", rows, write, lambda i: row_to_dict(rows[i]))

    def anomalies(self, anomalies: Sequence[Anomaly], emitter: AnomalyEmitter) -> int:
        """Store every anomaly and hand the events due to the emitter; returns how many anomalies were new.

        A replay (or a client's retry) re-scores rows already scored: an anomaly already stored was already
        handed on, so it is neither stored again nor re-sent. Repeats of one pattern are folded into one
        finding by the emitter's aggregator (receiver/aggregate.py): each anomaly is stored with its
        finding's uid and count, and only the finding's Create and Update events are sent.
        """
        uids = [anomaly_uid(a) for a in anomalies]
        seen = self.store.existing_anomaly_uids(uids)
        fresh = [a for a, uid in zip(anomalies, uids, strict=True) if uid not in seen]
        if not fresh:
            return 0
        aggregator = emitter.aggregator
        if aggregator is not None:
            events, send = aggregator.add(fresh)  # the findings, built once
        else:
            events = send = [AnomalyEvent.of(a, self.otad_version) for a in fresh]
        records = [anomaly_record(e.uid, e.anomaly, {"finding": e.finding}) for e in events]
        # Every event is kept, whatever happens to the export. What the aggregator decided to send goes out even
        # when the store fails: the batch comes back re-scored, and the aggregator neither counts nor sends its
        # anomalies again, so an event held back here would never be sent.
        try:
            self.write_isolating(
                "anomalies",
                records,
                lambda idx: self.store.upsert_anomalies([records[i] for i in idx]),
                lambda i: records[i],
            )
        finally:
            emitter.emit(send)
        for event in events:
            self.metrics.anomalies.labels(event.anomaly.row.signal).inc()
        return len(fresh)

    def advance(self, rows: Sequence[Row], emitter: AnomalyEmitter) -> None:
        """Tell the aggregator how far the records' time has come: findings quiet since then send their last
        Update (a batch without anomalies closes findings too)."""
        if emitter.aggregator is not None and rows:
            emitter.emit(emitter.aggregator.advance(max(r.time_unix_nano for r in rows) // 1_000_000))
