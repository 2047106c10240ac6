"""otad's API: stored records (rows, anomaly events, feedback entries, model descriptions) as proto messages,
and the feature deltas of an anomaly against its nearest normal rows."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import ParseDict

from model.schema import Row, Value
from receiver.api.gen import anomalies_pb2, common_pb2, feedback_pb2, models_pb2

_NS_PER_MS = 1_000_000
KIND_NAMES = {"normal": feedback_pb2.FEEDBACK_KIND_NORMAL, "suppress": feedback_pb2.FEEDBACK_KIND_SUPPRESS}
MAX_DELTAS = 8


def field_value(value: Any) -> common_pb2.FieldValue:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return common_pb2.FieldValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.FieldValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.FieldValue(double_value=value)
    return common_pb2.FieldValue(string_value=str(value))


def row_message(row: dict[str, Any]) -> common_pb2.Row:
    """A stored row dict (`model.schema.row_to_dict`) as a Row message."""
    msg = common_pb2.Row(
        uid=str(row.get("uid", "")),
        signal=str(row.get("signal", "")),
        time_unix_nano=int(row.get("time_unix_nano", 0)),
        service=str(row.get("service", "")),
        class_uid=int(row.get("class_uid", 0)),
        activity_id=int(row.get("activity_id", 0)),
        severity_id=int(row.get("severity_id", 0)),
        status_id=int(row.get("status_id", 0)),
        trace_id=str(row.get("trace_id", "")),
        span_id=str(row.get("span_id", "")),
    )
    for key, value in (row.get("fields") or {}).items():
        msg.fields[key].CopyFrom(field_value(value))
    return msg


def row_from_message(msg: common_pb2.Row) -> Row:
    """An example Row message as a row (missing ids get placeholders)."""
    fields: dict[str, Value] = {}
    for key, value in msg.fields.items():
        kind = value.WhichOneof("kind")
        if kind is not None:
            fields[key] = getattr(value, kind)
    signal = msg.signal if msg.signal in ("logs", "traces", "metrics") else "logs"
    return Row(
        uid=msg.uid or "example",
        signal=signal,  # type: ignore[arg-type]
        time_unix_nano=msg.time_unix_nano,
        service=msg.service,
        class_uid=msg.class_uid,
        activity_id=msg.activity_id,
        severity_id=msg.severity_id,
        status_id=msg.status_id,
        fields=fields,
        trace_id=msg.trace_id,
        span_id=msg.span_id,
    )


def neighbor_message(hit: dict[str, Any]) -> common_pb2.Neighbor:
    """A search hit (`MilvusStore.search` with row, score, is_anomaly) as a Neighbor message."""
    return common_pb2.Neighbor(
        row=row_message(hit.get("row") or {"uid": hit["uid"]}),
        distance=float(hit["distance"]),
        score=float(hit.get("score") or 0.0),
        is_anomaly=bool(hit.get("is_anomaly")),
    )


def anomaly_message(record: dict[str, Any]) -> anomalies_pb2.Anomaly:
    """An otad_anomalies record as an Anomaly message."""
    event = record.get("event") or {}
    return anomalies_pb2.Anomaly(
        uid=str(record["uid"]),
        source_uid=str(record["source_uid"]),
        signal=str(record["signal"]),
        service=str(record["service"]),
        time_unix_nano=int(record["time_ms"]) * _NS_PER_MS,
        detected_unix_nano=int(record["detected_ms"]) * _NS_PER_MS,
        score=float(record["score"]),
        threshold=float(record["threshold"]),
        detector=str(event.get("detector", "")),
        model_version=str(record["model_version"]),
        explanation=str(record["explanation"]),
        neighbor_uids=[str(u) for u in event.get("neighbors") or []],
        trace_id=str(event.get("trace_id", "")),
        span_id=str(event.get("span_id", "")),
        p_value=float(event.get("raw_score") or 0.0),
        suppressed_by=str(event.get("suppressed_by", "")),
    )


def feedback_message(entry: dict[str, Any], now_ms: int) -> feedback_pb2.Feedback:
    """A stored feedback entry as a Feedback message."""
    record = entry.get("record") or {}
    expires = int(entry["expires_ms"])
    return feedback_pb2.Feedback(
        id=str(entry["uid"]),
        kind=KIND_NAMES.get(str(entry["kind"]), feedback_pb2.FEEDBACK_KIND_UNSPECIFIED),
        source_uid=str(entry["source_uid"]),
        service=str(entry["service"]),
        created_unix_nano=int(entry["created_ms"]) * _NS_PER_MS,
        expires_unix_nano=expires * _NS_PER_MS,
        by=str(record.get("by", "")),
        reason=str(record.get("reason", "")),
        authenticated_as=str(record.get("authenticated_as", "")),
        model_version=str(entry["model_version"]),
        radius=float(record.get("radius") or 0.0),
        include_lookalikes=bool(record.get("include_lookalikes")),
        reference_rows=int(record.get("reference_rows") or 0),
        revoked=bool(entry["revoked"]),
        revoked_unix_nano=int(record.get("revoked_ms") or 0) * _NS_PER_MS,
        revoked_by=str(record.get("revoked_by", "")),
        revoke_reason=str(record.get("revoke_reason", "")),
        active=not entry["revoked"] and (not expires or expires > now_ms),
        row=row_message(record.get("row") or {}),
    )


def struct(data: Any) -> struct_pb2.Struct:
    """A JSON-like dict as a Struct (values that JSON cannot hold become strings)."""
    msg = struct_pb2.Struct()
    if isinstance(data, dict):
        ParseDict({str(k): _jsonable(v) for k, v in data.items()}, msg)
    return msg


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value) if math.isfinite(float(value)) else str(value)
    return str(value)


def model_message(info: dict[str, Any]) -> models_pb2.ModelInfo:
    """A life-cycle model description (`ModelLifecycle.list_models`) as a ModelInfo message."""
    created = info.get("created") or info.get("created_unix_nano") or 0
    if isinstance(created, float) or (isinstance(created, int) and created < 10**12):
        created = int(float(created) * 1e9)  # seconds since the epoch
    return models_pb2.ModelInfo(
        version=str(info.get("version", "")),
        created_unix_nano=int(created) if isinstance(created, int | float) else 0,
        train_start_unix_nano=int(info.get("train_start_unix_nano") or info.get("train_start_ns") or 0),
        train_end_unix_nano=int(info.get("train_end_unix_nano") or info.get("train_end_ns") or 0),
        rows=int(info.get("rows") or 0),
        quality=struct(info.get("quality") or {}),
        state=str(info.get("state", "")),
    )


def feature_deltas(row: dict[str, Any], neighbors: list[dict[str, Any]]) -> list[anomalies_pb2.FeatureDelta]:
    """How the row's fields differ from its nearest normal rows: numbers against their median, other values
    against the value most of them share; the largest differences first."""
    fields = row.get("fields") or {}
    others = [n.get("fields") or {} for n in neighbors]
    if not others:
        return []
    found: list[tuple[float, str, str, str]] = []
    for key, value in fields.items():
        seen = [o[key] for o in others if key in o]
        if not seen:
            found.append((1.0, key, _show(value), "absent"))
        elif _is_number(value) and all(_is_number(v) for v in seen):
            typical = sorted(float(v) for v in seen)[len(seen) // 2]
            spread = max(abs(typical), 1e-9)
            change = abs(float(value) - typical) / spread
            if change >= 0.5:
                found.append((min(change, 100.0), key, _show(value), f"{typical:.4g}"))
        else:
            mode, count = Counter(_show(v) for v in seen).most_common(1)[0]
            if mode != _show(value) and count * 2 >= len(others):
                found.append((2.0, key, _show(value), mode))
    for key in sorted({k for o in others for k in o} - set(fields)):
        if sum(key in o for o in others) * 2 >= len(others):
            found.append((1.0, key, "absent", _show(next(o[key] for o in others if key in o))))
    found.sort(key=lambda d: -d[0])
    return [anomalies_pb2.FeatureDelta(feature=f, observed=o, typical=t) for _, f, o, t in found[:MAX_DELTAS]]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 120 else text[:119] + "…"
