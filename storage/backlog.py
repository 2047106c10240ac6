"""Store stage, ``otad_backlog``: raw rows kept until a model exists to embed them.

``BacklogMixin`` holds the backlog's operations; ``MilvusStore`` (store.py) combines it with the others.
Rows are keyed by uid, so a replayed request upserts the same entities again instead of adding copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from storage import collection as col
from storage.core import UPSERT_BATCH, StoreCore

__all__ = ["BacklogMixin"]


class BacklogMixin(StoreCore):
    """Operations on ``otad_backlog``."""

    def upsert_backlog(self, rows: list[dict[str, Any]]) -> int:
        """Upsert raw rows (keys: uid, signal, service, class_uid, time_ms, trace_id, row) keyed by uid."""
        if not rows:
            return 0
        columns = {f: [row[f] for row in rows] for f in col.BACKLOG_FIELDS if f != "row"}
        columns["row"] = [col.encode_row(row["row"]) for row in rows]
        columns["embedding"] = [col.PLACEHOLDER_VECTOR] * len(rows)
        return self._upsert_columns(col.BACKLOG_COLLECTION, columns, len(rows))

    def count_backlog(self) -> int:
        """Rows in the backlog (read with Strong consistency)."""
        return self._count(col.BACKLOG_COLLECTION)

    def delete_backlog(self, uids: list[str]) -> None:
        """Remove rows from the backlog by uid (they have been stored in a model version's rows collection)."""
        for start in range(0, len(uids), UPSERT_BATCH):
            self._delete_backlog_part(uids[start : start + UPSERT_BATCH])

    def _delete_backlog_part(self, part: list[str]) -> None:
        self._call(
            f"delete from {col.BACKLOG_COLLECTION}",
            lambda c: c.delete(col.BACKLOG_COLLECTION, ids=part, timeout=self._timeout),
        )

    def iter_backlog(
        self, batch: int = 4096, *, after_time_ms: int | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield backlog rows in pages of up to ``batch`` (in no particular order), newer than ``after_time_ms``."""
        template, params = (
            ("time_ms > {after}", {"after": int(after_time_ms)}) if after_time_ms is not None else ("", None)
        )
        for page in self._iterate(col.BACKLOG_COLLECTION, template, params, col.BACKLOG_FIELDS, batch):
            yield [col.decode_row(r) for r in page]
