"""Retention: rows and anomaly events older than OTAD_RETENTION_DAYS are deleted (Milvus deletes by a time
filter); model versions beyond the newest OTAD_MODELS_KEEP are pruned with their rows collections (rolling
back to them is no longer possible)."""

from __future__ import annotations

import logging
import time

from receiver.registry import Registry
from storage import MilvusStore, StorageError

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000


def apply_retention(
    store: MilvusStore, versions: list[str], days: float, now_ms: int | None = None
) -> dict[str, int]:
    """Delete rows (of every kept version; reference rows stay with their version) and anomaly events whose
    record time is more than `days` before `now_ms` (default: now). Returns the counts Milvus reports."""
    cut = (now_ms if now_ms is not None else time.time_ns() // 1_000_000) - int(days * DAY_MS)
    deleted = {"rows": 0, "anomalies": 0}
    for version in versions:
        try:
            if store.has_rows_collection(version):
                deleted["rows"] += store.delete_rows_before(version, cut)
        except StorageError as exc:
            logger.error("retention: cannot delete old rows of %s: %s", version, exc)
    try:
        deleted["anomalies"] += store.delete_anomalies_before(cut)
    except StorageError as exc:
        logger.error("retention: cannot delete old anomaly events: %s", exc)
    if any(deleted.values()):
        logger.info(
            "retention: deleted %d rows and %d anomaly events older than %g days",
            deleted["rows"],
            deleted["anomalies"],
            days,
        )
    return deleted


def prune_models(store: MilvusStore, registry: Registry, keep: int, protect: set[str]) -> list[str]:
    """Remove the oldest saved versions beyond the newest `keep` (never one in `protect`: the current version
    and the challenger): the rows collection is dropped, then the directory. Returns the pruned versions."""
    versions = registry.versions()  # oldest first
    excess = len(versions) - keep
    pruned = []
    for version in versions:
        if excess <= 0:
            break
        if version in protect:
            continue
        try:
            store.drop_rows_collection(version)
        except StorageError as exc:
            logger.error("cannot drop the rows collection of %s (kept for now): %s", version, exc)
            continue
        registry.remove(version)
        registry.event("pruned", version, f"more than OTAD_MODELS_KEEP={keep} versions")
        pruned.append(version)
        excess -= 1
    if pruned:
        logger.info("pruned model versions %s (OTAD_MODELS_KEEP=%d)", ", ".join(pruned), keep)
    return pruned
