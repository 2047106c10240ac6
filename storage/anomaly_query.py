"""Store stage, ``otad_anomalies`` read by otad's API: one page of events in a stable order, one event by uid.

Milvus queries have no ORDER BY: a page is the newest ``limit`` matches by (``detected_ms``, ``uid``), found
with the same growing time window as ``latest_anomalies``; the caller's cursor clause (older than the last
event of the previous page) makes the next page.
"""

from __future__ import annotations

from typing import Any

from storage import collection as col
from storage.anomalies import AnomaliesMixin

__all__ = ["AnomalyQueryMixin"]


class AnomalyQueryMixin(AnomaliesMixin):
    """Reads of ``otad_anomalies`` for the API."""

    def anomalies_page(self, clauses: list[str], params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` events matching every clause (filter templates over ``params``), newest
        (``detected_ms``, ``uid``) first."""
        if limit <= 0:
            return []
        return self._newest(clauses, params, limit, None)

    def anomaly_by_uid(self, uid: str) -> dict[str, Any] | None:
        """The event whose uid, or else whose source row uid, is ``uid`` (the newest, if several)."""
        for template in ("uid == {uid}", "source_uid == {uid}"):
            flt = self._filter(template, {"uid": uid})
            found = self._call(
                "query anomalies",
                lambda c: c.query(
                    col.ANOMALIES_COLLECTION,
                    output_fields=col.ANOMALY_FIELDS,
                    limit=100,
                    timeout=self._timeout,
                    consistency_level=col.STRONG,
                    **flt,  # noqa: B023 (called at once, inside this iteration)
                ),
            )
            if found:
                return dict(max(found, key=lambda r: r["detected_ms"]))
        return None
