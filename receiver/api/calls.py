"""otad's API calls, one method per RPC of proto/otad/v1: a request message in, a response message out.

Both transports call these (receiver/api/server.py: gRPC on OTAD_QUERY_ENDPOINT and JSON under /v1/otad/ on the
OTLP/HTTP server). Errors leave as Python exceptions that `status_of` maps: LookupError (NOT_FOUND), ValueError
(INVALID_ARGUMENT), RuntimeError (FAILED_PRECONDITION), NotImplementedError (UNIMPLEMENTED), StorageError
(UNAVAILABLE). Model calls go to the service's `lifecycle` (receiver/lifecycle.py, `ModelLifecycle`).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.embedding import RowEmbedder
from receiver.api import convert
from receiver.api.gen import anomalies_pb2, feedback_pb2, models_pb2
from receiver.feedback import Feedback, find_row
from storage import MilvusStore

logger = logging.getLogger(__name__)

_MAX_PAGE = 1000
_KINDS = {feedback_pb2.FEEDBACK_KIND_NORMAL: "normal", feedback_pb2.FEEDBACK_KIND_SUPPRESS: "suppress"}
_NS_PER_MS = 1_000_000
_HIT_FIELDS = ["row", "score", "is_anomaly", "service"]


class Api:
    """The calls of AnomalyService, FeedbackService and ModelService over one running service.

    Args:
        store: the service's Milvus store.
        feedback: the service's feedback entries.
        current_version: the model version scoring now (None before the first model).
        models_dir: saved model versions.
        lifecycle: the service's `ModelLifecycle`, or None while there is none.
    """

    def __init__(
        self,
        store: MilvusStore,
        feedback: Feedback,
        current_version: Callable[[], str | None],
        models_dir: Path,
        lifecycle: Callable[[], Any],
    ):
        self.store, self.feedback, self.current_version = store, feedback, current_version
        self.models_dir, self.lifecycle = Path(models_dir), lifecycle
        self._embedder: RowEmbedder | None = None

    # ----- AnomalyService -----
    def list_anomalies(
        self, req: anomalies_pb2.ListAnomaliesRequest, who: str
    ) -> anomalies_pb2.ListAnomaliesResponse:
        return list_anomalies(self.store, req)

    def get_anomaly(self, req: anomalies_pb2.GetAnomalyRequest, who: str) -> anomalies_pb2.GetAnomalyResponse:
        if not req.uid:
            raise ValueError("uid is required")
        record = self.store.anomaly_by_uid(req.uid)
        if record is None:
            raise LookupError(f"no anomaly with uid {req.uid!r}")
        k = min(req.neighbors or 5, 100)
        out = anomalies_pb2.GetAnomalyResponse(
            anomaly=convert.anomaly_message(record), model_version=str(record["model_version"])
        )
        try:
            found = find_row(self.store, str(record["source_uid"]), [self._version()])
        except LookupError:
            return out  # the row's collection is gone (retention): the event alone
        out.row.CopyFrom(convert.row_message(found.row["row"]))
        if found.vector is not None:
            hits = self.store.search(
                found.version,
                found.vector,
                k + 1,
                filter="is_anomaly == {f}",
                filter_params={"f": False},
                output_fields=_HIT_FIELDS,
            )[0]
            hits = [h for h in hits if h["uid"] != found.row["uid"]][:k]
            out.neighbors.extend(convert.neighbor_message(h) for h in hits)
            out.deltas.extend(convert.feature_deltas(found.row["row"], [h["row"] for h in hits]))
        return out

    def similar_events(
        self, req: anomalies_pb2.SimilarEventsRequest, who: str
    ) -> anomalies_pb2.SimilarEventsResponse:
        limit = min(req.limit or 10, _MAX_PAGE)
        query = req.WhichOneof("query")
        if query == "uid":
            found = find_row(self.store, req.uid, [self._version()])
            if found.vector is None:
                raise RuntimeError(f"row {req.uid!r} has no stored embedding")
            version, vector, own = found.version, found.vector, str(found.row["uid"])
        elif query == "example":
            version = self._version()
            vector, own = self._embed_example(req.example, version), ""
        else:
            raise ValueError("give uid or example")
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if req.service:
            clauses.append("service == {service}")
            params["service"] = req.service
        if req.anomalies_only:
            clauses.append("is_anomaly == {a}")
            params["a"] = True
        hits = self.store.search(
            version,
            vector,
            limit + 1,
            filter=" and ".join(clauses),
            filter_params=params or None,
            output_fields=_HIT_FIELDS,
        )[0]
        events = [convert.neighbor_message(h) for h in hits if h["uid"] != own][:limit]
        return anomalies_pb2.SimilarEventsResponse(events=events, model_version=version)

    # ----- FeedbackService -----
    def mark_normal(self, req: feedback_pb2.MarkNormalRequest, who: str) -> feedback_pb2.MarkNormalResponse:
        entry = self.feedback.create(
            "normal",
            _required(req.uid, "uid"),
            service=req.service,
            ttl_s=req.ttl_seconds,
            by=req.by,
            reason=req.reason,
            radius=req.radius,
            include_lookalikes=req.include_lookalikes,
            authenticated_as=who,
        )
        return feedback_pb2.MarkNormalResponse(feedback=convert.feedback_message(entry, _now_ms()))

    def suppress(self, req: feedback_pb2.SuppressRequest, who: str) -> feedback_pb2.SuppressResponse:
        entry = self.feedback.create(
            "suppress",
            _required(req.uid, "uid"),
            service=req.service,
            ttl_s=req.ttl_seconds,
            by=req.by,
            reason=req.reason,
            radius=req.radius,
            authenticated_as=who,
        )
        return feedback_pb2.SuppressResponse(feedback=convert.feedback_message(entry, _now_ms()))

    def list_feedback(
        self, req: feedback_pb2.ListFeedbackRequest, who: str
    ) -> feedback_pb2.ListFeedbackResponse:
        entries = self.feedback.entries(
            include_inactive=req.include_inactive, service=req.service, kind=_KINDS.get(req.kind, "")
        )
        now = _now_ms()
        return feedback_pb2.ListFeedbackResponse(feedback=[convert.feedback_message(e, now) for e in entries])

    def revoke_feedback(
        self, req: feedback_pb2.RevokeFeedbackRequest, who: str
    ) -> feedback_pb2.RevokeFeedbackResponse:
        entry = self.feedback.revoke(_required(req.id, "id"), by=req.by or who, reason=req.reason)
        return feedback_pb2.RevokeFeedbackResponse(feedback=convert.feedback_message(entry, _now_ms()))

    # ----- ModelService -----
    def list_models(self, req: models_pb2.ListModelsRequest, who: str) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[convert.model_message(m) for m in self._life().list_models()]
        )

    def get_model_status(
        self, req: models_pb2.GetModelStatusRequest, who: str
    ) -> models_pb2.GetModelStatusResponse:
        status = dict(self._life().status())
        current, challenger = status.pop("current", None), status.pop("challenger", None)
        drift = status.pop("drift", None)
        return models_pb2.GetModelStatusResponse(
            current=_version_name(current),
            challenger=_version_name(challenger),
            drift=convert.struct(drift if isinstance(drift, dict) else {"value": drift} if drift else {}),
            details=convert.struct(status),
        )

    def retrain(self, req: models_pb2.RetrainRequest, who: str) -> models_pb2.RetrainResponse:
        reason = req.reason or "requested through the API"
        logger.info("retrain requested by %s: %s", req.by or who or "anonymous", reason)
        return models_pb2.RetrainResponse(id=str(self._life().retrain(reason)))

    def promote(self, req: models_pb2.PromoteRequest, who: str) -> models_pb2.PromoteResponse:
        version = _required(req.version, "version")
        logger.info("promotion of %s requested by %s: %s", version, req.by or who or "anonymous", req.reason)
        self._life().promote(version)
        return models_pb2.PromoteResponse(current=version)

    def rollback(self, req: models_pb2.RollbackRequest, who: str) -> models_pb2.RollbackResponse:
        logger.info(
            "rollback to %s requested by %s: %s",
            req.version or "the previous version",
            req.by or who,
            req.reason,
        )
        return models_pb2.RollbackResponse(current=str(self._life().rollback(req.version or None)))

    # ----- helpers -----
    def _life(self) -> Any:
        life = self.lifecycle()
        if life is None:
            raise NotImplementedError("this otad has no model life cycle (receiver/lifecycle.py)")
        return life

    def _version(self) -> str:
        version = self.current_version()
        if version is None:
            raise RuntimeError("no model yet: otad is collecting rows for its first model")
        return version

    def _embed_example(self, example: Any, version: str) -> np.ndarray:
        if self._embedder is None or self._embedder.version != version:
            self._embedder = RowEmbedder(self.models_dir / version)
        return self._embedder.embed([convert.row_from_message(example)])[0]


def list_anomalies(
    store: MilvusStore, req: anomalies_pb2.ListAnomaliesRequest
) -> anomalies_pb2.ListAnomaliesResponse:
    """One page of stored anomaly events matching the request, newest first: the API's ListAnomalies, and
    `otad anomalies` when no service answers and it reads the store itself."""
    size = min(req.page_size or 20, _MAX_PAGE)
    if size < 0:
        raise ValueError("page_size must be >= 0")
    clauses, params = _anomaly_filter(req)
    cursor = _decode_token(req.page_token) if req.page_token else None
    page: list[dict[str, Any]] = []
    while len(page) <= size:
        extra, extra_params = [], {}
        if cursor is not None:
            extra = ["(detected_ms < {cd} or (detected_ms == {cd} and uid < {cu}))"]
            extra_params = {"cd": cursor[0], "cu": cursor[1]}
        chunk = store.anomalies_page(clauses + extra, {**params, **extra_params}, size + 1)
        page += [r for r in chunk if _wanted(r, req)]
        if len(chunk) < size + 1:
            break
        cursor = (int(chunk[-1]["detected_ms"]), str(chunk[-1]["uid"]))
    more = len(page) > size
    page = page[:size]
    token = _encode_token(page[-1]) if more and page else ""
    return anomalies_pb2.ListAnomaliesResponse(
        anomalies=[convert.anomaly_message(r) for r in page], next_page_token=token
    )


def _anomaly_filter(req: anomalies_pb2.ListAnomaliesRequest) -> tuple[list[str], dict[str, Any]]:
    """The Milvus filter clauses of a ListAnomalies request (detector and suppression are checked after)."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for clause, key, value, given in (
        ("detected_ms >= {start}", "start", req.start_unix_nano // _NS_PER_MS, req.start_unix_nano > 0),
        ("detected_ms < {end}", "end", -(-req.end_unix_nano // _NS_PER_MS), req.end_unix_nano > 0),
        ("service == {service}", "service", req.service, bool(req.service)),
        ("signal == {signal}", "signal", req.signal, bool(req.signal)),
        ("score >= {min_score}", "min_score", float(req.min_score), req.min_score > 0),
    ):
        if given:
            clauses.append(clause)
            params[key] = value
    return clauses, params


def _wanted(record: dict[str, Any], req: anomalies_pb2.ListAnomaliesRequest) -> bool:
    event = record.get("event") or {}
    if event.get("suppressed_by") and not req.include_suppressed:
        return False
    return not req.detector or req.detector in str(event.get("detector", "")).split("+")


def _encode_token(record: dict[str, Any]) -> str:
    raw = json.dumps([int(record["detected_ms"]), str(record["uid"])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[int, str]:
    try:
        detected, uid = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(detected), str(uid)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"page_token is not one this server gave out ({exc})") from None


def _required(value: str, name: str) -> str:
    if not value:
        raise ValueError(f"{name} is required")
    return value


def _version_name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("version", ""))
    return "" if value is None else str(value)


def _now_ms() -> int:
    return time.time_ns() // _NS_PER_MS
