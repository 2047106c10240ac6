"""Store stage, ``otad_feedback``: operator feedback entries (MarkNormal, Suppress) with their embedding.

``FeedbackMixin`` holds these operations; ``MilvusStore`` (store.py) combines it with the others. An entry
keeps the source row's embedding under the model version it was taken from, zero-padded to
``collection.FEEDBACK_DIM`` (the true width is in ``record["dim"]``); entries are few, so the service keeps
the active ones in memory and this module only stores, lists and updates them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storage import collection as col
from storage.core import MAX_QUERY_WINDOW, StoreCore
from storage.errors import StorageError

__all__ = ["FeedbackMixin"]


class FeedbackMixin(StoreCore):
    """Operations on ``otad_feedback``."""

    _feedback_ready = False

    def _feedback(self) -> str:
        if not self._feedback_ready:
            self._create_if_missing(
                col.FEEDBACK_COLLECTION,
                col.feedback_schema(),
                col.STRONG,
                placeholder=False,
                time_field="created_ms",
            )
            self._feedback_ready = True
        return col.FEEDBACK_COLLECTION

    def upsert_feedback(self, entry: dict[str, Any], vector: np.ndarray | None) -> None:
        """Store (or replace, by ``uid``) one entry: the ``FEEDBACK_FIELDS`` values and its embedding.

        Raises:
            StorageError: the embedding is wider than ``FEEDBACK_DIM``, or Milvus failed.
        """
        padded = np.zeros(col.FEEDBACK_DIM, dtype=np.float32)
        record = dict(entry.get("record") or {})
        if vector is not None and len(vector):
            v = np.asarray(vector, dtype=np.float32).ravel()
            if len(v) > col.FEEDBACK_DIM:
                raise StorageError(
                    f"feedback holds embeddings up to {col.FEEDBACK_DIM} wide, got {len(v)}", retryable=False
                )
            padded[: len(v)] = v
            record["dim"] = len(v)
        else:
            padded[0] = 1.0  # COSINE is undefined for a zero vector; dim 0 marks "no embedding yet"
            record["dim"] = 0
        data = {f: entry[f] for f in col.FEEDBACK_FIELDS if f != "record"}
        data["record"] = record
        data["embedding"] = padded.tolist()
        self._upsert(self._feedback(), [data])

    def feedback_entries(self, *, uid: str | None = None) -> list[dict[str, Any]]:
        """Every stored entry (or the one with ``uid``), newest first, each with ``embedding`` (its true width,
        None when it has none)."""
        template, params = ("uid == {uid}", {"uid": uid}) if uid is not None else ("", None)
        found = self._call(
            "query feedback",
            lambda c: c.query(
                self._feedback(),
                output_fields=[*col.FEEDBACK_FIELDS, "embedding"],
                limit=MAX_QUERY_WINDOW,
                timeout=self._timeout,
                consistency_level=col.STRONG,
                **self._filter(template or "created_ms >= 0", params),
            ),
        )
        out = []
        for item in found:
            entry = dict(item)
            record = entry.get("record") or {}
            dim = int(record.get("dim") or 0)
            vector = entry.pop("embedding", None)
            entry["embedding"] = (
                np.asarray(vector[:dim], dtype=np.float32) if dim and vector is not None else None
            )
            out.append(entry)
        out.sort(key=lambda e: (e["created_ms"], e["uid"]), reverse=True)
        return out
