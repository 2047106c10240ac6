"""Store stage, ``otad_anomalies``: every anomaly event, kept, keyed by finding uid.

``AnomaliesMixin`` holds these operations; ``MilvusStore`` (store.py) combines it with the others. Keying by
finding uid makes a replay overwrite an event instead of storing (and emitting) it twice.
"""

from __future__ import annotations

import time
from typing import Any

from storage import collection as col
from storage.core import MAX_QUERY_WINDOW, StoreCore
from storage.rows import deleted_count

__all__ = ["AnomaliesMixin"]

_FIRST_WINDOW_MS = 60_000  # latest_anomalies looks at the last minute first, then 4x wider each step


class AnomaliesMixin(StoreCore):
    """Operations on ``otad_anomalies``."""

    def upsert_anomalies(self, events: list[dict[str, Any]]) -> int:
        """Upsert anomaly events keyed by finding uid (a replay overwrites, never duplicates)."""
        if not events:
            return 0
        data = [{**event, "embedding": col.PLACEHOLDER_VECTOR} for event in events]
        return self._upsert(col.ANOMALIES_COLLECTION, data)

    def existing_anomaly_uids(self, uids: list[str]) -> set[str]:
        """Which of these finding uids are already stored (a replay must not emit them again)."""
        return self._existing(col.ANOMALIES_COLLECTION, uids)

    def delete_anomalies_before(self, time_ms: int) -> int:
        """Delete anomaly events about rows older than ``time_ms`` (retention, by the source row's time, as for
        the rows); returns how many were deleted."""
        name = col.ANOMALIES_COLLECTION
        res = self._call(
            f"delete from {name}",
            lambda c: c.delete(
                name, timeout=self._timeout, **self._filter("time_ms < {cut}", {"cut": int(time_ms)})
            ),
        )
        return deleted_count(res)

    def count_anomalies(self) -> int:
        """Anomaly events stored (read with Strong consistency)."""
        return self._count(col.ANOMALIES_COLLECTION)

    def latest_anomalies(
        self,
        limit: int = 20,
        *,
        service: str | None = None,
        min_score: float | None = None,
        since_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """The ``limit`` most recently detected anomalies, newest ``detected_ms`` first.

        Milvus queries have no ORDER BY, so this finds a recent ``detected_ms`` window holding at least
        ``limit`` matches with ``count(*)`` queries (growing 4x from one minute, then bisecting if a burst
        overshoots), fetches that window and sorts it.
        """
        if limit <= 0:
            return []
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for clause, key, value in (
            ("service == {service}", "service", service),
            ("score >= {min_score}", "min_score", min_score),
        ):
            if value is not None:
                clauses.append(clause)
                params[key] = value
        return self._newest(clauses, params, limit, since_ms)

    def _newest(
        self, clauses: list[str], params: dict[str, Any], limit: int, since_ms: int | None
    ) -> list[dict[str, Any]]:
        """The newest `limit` events matching every clause, newest (`detected_ms`, `uid`) first."""
        clauses, params = list(clauses), dict(params)
        lo = self._window_start(clauses, params, limit, since_ms)
        if lo is not None:
            clauses.append("detected_ms >= {lo}")
            params["lo"] = lo
        template = " and ".join(clauses) or "detected_ms >= 0"
        if self._count(col.ANOMALIES_COLLECTION, template, params) <= MAX_QUERY_WINDOW:
            found = self._call(
                "query anomalies",
                lambda c: c.query(
                    col.ANOMALIES_COLLECTION,
                    output_fields=col.ANOMALY_FIELDS,
                    limit=MAX_QUERY_WINDOW,
                    timeout=self._timeout,
                    consistency_level=col.STRONG,
                    **self._filter(template, params),
                ),
            )
        else:  # many events share the newest timestamps: page through them
            found = [
                r
                for page in self._iterate(
                    col.ANOMALIES_COLLECTION, template, params, col.ANOMALY_FIELDS, 4096
                )
                for r in page
            ]
        rows = [dict(r) for r in found]
        rows.sort(key=lambda r: (r["detected_ms"], r["uid"]), reverse=True)
        return rows[:limit]

    def _window_start(
        self, clauses: list[str], params: dict[str, Any], limit: int, floor: int | None
    ) -> int | None:
        """Start of the newest ``detected_ms`` window with >= ``limit`` matches (None = all time)."""

        def count_from(lo: int) -> int:
            return self._count(
                col.ANOMALIES_COLLECTION,
                " and ".join([*clauses, "detected_ms >= {lo}"]),
                {**params, "lo": lo},
            )

        cap = max(8 * limit, 1000)
        now = int(time.time() * 1000)
        newer, span = now, _FIRST_WINDOW_MS
        while True:
            lo = now - span
            if floor is not None and lo <= floor:
                return floor
            if lo <= 0:
                return None
            found = count_from(lo)
            if found >= limit:
                break
            newer, span = lo, span * 4
        for _ in range(32):  # a burst: narrow [lo, newer) until the window holds limit..cap matches
            if found <= cap or newer - lo <= 1:
                break
            mid = (lo + newer) // 2
            mid_found = count_from(mid)
            if mid_found < limit:
                newer = mid
            else:
                lo, found = mid, mid_found
        return lo
