"""Operator feedback that takes effect at once: MarkNormal and Suppress entries, kept in Milvus, applied to every
scored batch.

An entry holds the embedding of the row it was given on. After a batch is scored (`screen`, on the pipeline
thread), an anomaly whose embedding lies within an active entry's radius (cosine distance) and in its scope is
not reported: it is stored in the anomalies collection with its score and `event.suppressed_by`, counted in
`otad_feedback_silenced_anomalies`, and never emitted. MarkNormal also sends the row (and, when asked, its
stored look-alikes) to the scorer, which adds them to the k-NN member's normal reference (in the scoring child,
a small "learn" message). Embeddings are version-specific: each entry records its model version, and when
the scoring version changes its row is taken from the new version's rows collection, or re-embedded by the
scorer (an "embed" message to the scoring child: the context its look-alikes are scored in; the version's encoder
alone, `model.embedding.RowEmbedder`, is the fallback), before it is matched again. docs/api.md: the API side.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.embedding import RowEmbedder
from model.schema import Anomaly, Row, row_from_dict
from model.scorer import ScoredBatch, Scorer
from model.worker import ScoringProcess
from receiver.events import finding_uid
from receiver.metrics import Metrics
from receiver.writer import anomaly_record
from storage import MilvusStore, StorageError
from storage.collection import ROW_FIELDS

logger = logging.getLogger(__name__)

# Cosine distance within which an anomaly is a look-alike of a feedback entry. Measured on the embeddings
# (tests/integration/test_api.py): repeats of one incident lie within 0.011 of each other, its nearest normal rows
# 0.038 and more away, and another incident 0.23.
DEFAULT_RADIUS = 0.02
SUPPRESS_TTL_S = 86_400  # a Suppress without a TTL lasts a day
LOOKALIKES_MAX = 200  # stored look-alikes a MarkNormal adds to the normal reference
KINDS = ("normal", "suppress")


@dataclass(frozen=True, slots=True)
class FoundRow:
    """A stored row: its content, its embedding under `version`, and the anomaly event on it, if any."""

    row: dict[str, Any]
    vector: np.ndarray | None
    version: str
    anomaly: dict[str, Any] | None


def find_row(store: MilvusStore, uid: str, versions: list[str], *, anomaly_first: bool = True) -> FoundRow:
    """The stored row with this uid (or the source row of the anomaly with this uid), searched in the anomaly's
    model version and then `versions` (with `anomaly_first=False`: `versions` first).

    Raises:
        LookupError: no such row is stored.
    """
    anomaly = store.anomaly_by_uid(uid)
    source = str(anomaly["source_uid"]) if anomaly else uid
    own = [str(anomaly["model_version"])] if anomaly else []
    order = own + versions if anomaly_first else versions + own
    for version in dict.fromkeys(v for v in order if v):
        try:
            hits = store.query_rows(
                version, "uid == {u}", {"u": source}, output_fields=[*ROW_FIELDS, "embedding"], limit=1
            )
        except StorageError:
            continue  # no rows collection for that version
        if hits:
            hit = hits[0]
            vector = hit.get("embedding")
            return FoundRow(
                {**hit, "row": hit["row"]},
                np.asarray(vector, dtype=np.float32) if vector is not None else None,
                version,
                anomaly,
            )
    raise LookupError(f"no stored row or anomaly with uid {uid!r}")


@dataclass(frozen=True, slots=True)
class _Active:
    """An active entry as the matcher needs it: scope, expiry and the unit embedding under `version`."""

    uid: str
    kind: str
    service: str
    expires_ms: int
    version: str
    radius: float
    unit: np.ndarray | None

    @classmethod
    def of(cls, entry: dict[str, Any]) -> _Active:
        vector = entry.get("embedding")
        unit = None
        if vector is not None and len(vector) and float(np.linalg.norm(vector)) > 0:
            unit = np.asarray(vector, dtype=np.float32) / float(np.linalg.norm(vector))
        return cls(
            str(entry["uid"]),
            str(entry["kind"]),
            str(entry["service"]),
            int(entry["expires_ms"]),
            str(entry["model_version"]),
            float(entry["record"].get("radius") or DEFAULT_RADIUS),
            unit,
        )


def is_active(entry: dict[str, Any], now_ms: int) -> bool:
    return not entry["revoked"] and (not entry["expires_ms"] or entry["expires_ms"] > now_ms)


class Feedback:
    """The feedback entries of one service: created and revoked from API threads, applied on the pipeline thread.

    Args:
        store: the service's Milvus store.
        metrics: the service's metrics.
        models_dir: saved model versions (for re-embedding a row under another version).
        current_version: the version scoring now (None before the first model).
    """

    def __init__(
        self,
        store: MilvusStore,
        metrics: Metrics,
        models_dir: Path,
        current_version: Callable[[], str | None],
    ):
        self.store, self.metrics, self.models_dir = store, metrics, Path(models_dir)
        self.current_version = current_version
        self._lock = threading.Lock()
        self._learn: list[Row] = []  # rows marked normal, for the scorer (taken on the pipeline thread)
        self._embedder: RowEmbedder | None = None
        self.learned = 0  # rows feedback added to the k-NN member's normal reference
        now = _now_ms()
        self._active = {e["uid"]: _Active.of(e) for e in store.feedback_entries() if is_active(e, now)}

    # ----- the API side (any thread) -----
    def create(
        self,
        kind: str,
        uid: str,
        *,
        service: str = "",
        ttl_s: int = 0,
        by: str = "",
        reason: str = "",
        radius: float = 0.0,
        include_lookalikes: bool = False,
        authenticated_as: str = "",
    ) -> dict[str, Any]:
        """Store a new entry for the row (or anomaly) `uid` and apply it from the next batch on.

        Raises:
            LookupError: no such row. ValueError: a bad argument.
        """
        if kind not in KINDS:
            raise ValueError(f"feedback kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if ttl_s < 0 or radius < 0 or radius > 2:
            raise ValueError("ttl_seconds must be >= 0 and radius within [0, 2] (cosine distance)")
        current = self.current_version()
        found = find_row(self.store, uid, [current] if current else [], anomaly_first=False)
        if kind == "suppress":
            service = "" if service == "*" else (service or str(found.row["service"]))
            ttl_s = ttl_s or SUPPRESS_TTL_S
        version, vector = found.version, found.vector  # another version's: re-embedded at the next batch
        radius = radius or DEFAULT_RADIUS
        learn: list[Row] = []
        if kind == "normal":
            learn = [row_from_dict(found.row["row"])]
            if include_lookalikes and vector is not None:
                learn += self._lookalikes(version, vector, radius, str(found.row["uid"]))
        now = _now_ms()
        entry: dict[str, Any] = {
            "uid": uuid.uuid4().hex[:16],
            "kind": kind,
            "source_uid": str(found.row["uid"]),
            "service": service,
            "created_ms": now,
            "expires_ms": now + ttl_s * 1000 if ttl_s else 0,
            "model_version": version,
            "revoked": False,
            "record": {
                "by": by or authenticated_as or "anonymous",
                "reason": reason,
                "authenticated_as": authenticated_as,
                "radius": radius,
                "include_lookalikes": include_lookalikes,
                "reference_rows": len(learn),
                "row": found.row["row"],
            },
            "embedding": vector,
        }
        self.store.upsert_feedback(entry, vector)
        with self._lock:
            self._active[entry["uid"]] = _Active.of(entry)
            self._learn.extend(learn)
        logger.info(
            "feedback %s (%s) on row %s by %s: %s",
            entry["uid"],
            kind,
            entry["source_uid"],
            entry["record"]["by"],
            reason or "no reason given",
        )
        return entry

    def revoke(self, uid: str, *, by: str = "", reason: str = "") -> dict[str, Any]:
        """End an entry; it stays stored, marked revoked with who and why.

        Raises:
            LookupError: no such entry.
        """
        found = self.store.feedback_entries(uid=uid)
        if not found:
            raise LookupError(f"no feedback entry {uid!r}")
        entry = found[0]
        if not entry["revoked"]:
            entry["revoked"] = True
            entry["record"].update(revoked_ms=_now_ms(), revoked_by=by or "anonymous", revoke_reason=reason)
            self.store.upsert_feedback(entry, entry.get("embedding"))
            logger.info("feedback %s revoked by %s: %s", uid, by or "anonymous", reason or "no reason given")
        with self._lock:
            self._active.pop(uid, None)
        return entry

    def entries(self, *, include_inactive: bool = False, service: str = "", kind: str = "") -> list[dict]:
        """Stored entries, newest first."""
        now = _now_ms()
        return [
            e
            for e in self.store.feedback_entries()
            if (include_inactive or is_active(e, now))
            and (not service or e["service"] == service)
            and (not kind or e["kind"] == kind)
        ]

    def _embed(
        self, version: str, row: dict[str, Any], scorer: Scorer | ScoringProcess | None
    ) -> np.ndarray | None:
        """The row's embedding under `version`: by the scorer (its context, as the rows it scores), else by the
        version's encoder alone (a fresh context)."""
        try:
            if scorer is not None and scorer.mv.version == version:
                return scorer.embed_rows([row_from_dict(row)])[0]
            if self._embedder is None or self._embedder.version != version:
                self._embedder = RowEmbedder(self.models_dir / version)
            return self._embedder.embed([row_from_dict(row)])[0]
        except Exception as exc:  # a scorer failure shows on its next batch; the entry waits for another try
            logger.warning("cannot embed a feedback row under model %s: %s", version, exc)
            return None

    def _lookalikes(self, version: str, vector: np.ndarray, radius: float, source_uid: str) -> list[Row]:
        hits = self.store.search(version, vector, LOOKALIKES_MAX, output_fields=["row"])[0]
        return [row_from_dict(h["row"]) for h in hits if h["distance"] <= radius and h["uid"] != source_uid]

    # ----- the pipeline side (its worker thread) -----
    def screen(self, scorer: Scorer | ScoringProcess, scored: ScoredBatch) -> list[Anomaly]:
        """The batch's anomalies that no active entry silences; the silenced ones are stored, not reported.

        Rows marked normal since the last batch are handed to `scorer` first (they join the normal reference).
        """
        self._hand_over(scorer)
        if not scored.anomalies or not self._active:
            return scored.anomalies
        active = self._for_version(scorer.mv.version, scorer)
        if not active:
            return scored.anomalies
        units = np.stack([e.unit for e in active if e.unit is not None])
        index = {r.uid: i for i, r in enumerate(scored.rows)}
        kept: list[Anomaly] = []
        muted: list[tuple[Anomaly, _Active]] = []
        for a in scored.anomalies:
            i = index.get(a.row.uid)
            match = None if i is None else _match(active, units, scored.embeddings[i], a.row.service)
            if match is None:
                kept.append(a)
            else:
                muted.append((a, match))
        if muted:
            self._store_muted(muted)
        return kept

    def _hand_over(self, scorer: Scorer | ScoringProcess) -> None:
        with self._lock:
            rows, self._learn = self._learn, []
        if rows:
            try:
                added = scorer.learn_normal(rows)
            except Exception:
                with self._lock:  # the scorer failed (the pipeline restarts it): the rows wait for the next
                    self._learn[:0] = rows
                raise
            self.learned += added
            logger.info("feedback: %d row(s) marked normal, %d new in the normal reference", len(rows), added)

    def _for_version(self, version: str, scorer: Scorer | ScoringProcess | None = None) -> list[_Active]:
        """Active entries with a unit embedding under `version` (re-embedding stale ones once)."""
        now = _now_ms()
        with self._lock:
            entries = list(self._active.values())
        out = []
        for e in entries:
            if e.expires_ms and e.expires_ms <= now:
                with self._lock:
                    self._active.pop(e.uid, None)  # expired: stays stored, listed as inactive
                continue
            if e.version != version:
                e = self._re_embed(e, version, scorer)
            if e.unit is not None and e.version == version:
                out.append(e)
        return out

    def _re_embed(self, e: _Active, version: str, scorer: Scorer | ScoringProcess | None) -> _Active:
        """The entry under `version`: its row's embedding stored with that version's rows, else re-embedded."""
        stored = self.store.feedback_entries(uid=e.uid)
        if not stored:
            return e
        entry = stored[0]
        try:
            found = find_row(self.store, entry["source_uid"], [version], anomaly_first=False)
            vector = found.vector if found.version == version else None
        except LookupError:
            vector = None
        if vector is None:
            vector = self._embed(version, entry["record"]["row"], scorer)
        if vector is None:
            return e
        entry["model_version"] = version
        self.store.upsert_feedback(entry, vector)
        fresh = _Active.of({**entry, "embedding": vector})
        with self._lock:
            if e.uid in self._active:
                self._active[e.uid] = fresh
        logger.info("feedback %s re-embedded for model %s", e.uid, version)
        return replace(fresh)

    def _store_muted(self, muted: list[tuple[Anomaly, _Active]]) -> None:
        uids = [finding_uid(a) for a, _ in muted]
        seen = self.store.existing_anomaly_uids(uids)
        records = [_record(uid, a, e) for uid, (a, e) in zip(uids, muted, strict=True) if uid not in seen]
        self.store.upsert_anomalies(records)
        for a, e in muted:
            self.metrics.feedback_silenced.labels(e.kind, a.row.signal).inc()


def _match(active: list[_Active], units: np.ndarray, vector: np.ndarray, service: str) -> _Active | None:
    """The nearest active entry within its radius and scope, or None."""
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        return None
    distances = 1.0 - units @ (np.asarray(vector, dtype=np.float32) / norm)
    for j in np.argsort(distances):
        e = active[int(j)]
        if distances[j] <= e.radius and (not e.service or e.service == service):
            return e
    return None


def _record(uid: str, a: Anomaly, e: _Active) -> dict[str, Any]:
    """The anomalies-collection record of a silenced anomaly (no finding: it was never reported)."""
    event = {"suppressed_by": e.uid, "feedback_kind": e.kind, "evidence": [list(x) for x in a.evidence]}
    return anomaly_record(uid, a, event)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
