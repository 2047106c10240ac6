"""Boundary types shared by every stage: the OCSF-style row, and the anomaly found on it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

Signal = Literal["logs", "traces", "metrics"]
Value = str | int | float | bool

# OCSF ids used by the mapper (class_uid = category_uid * 1000 + n).
AUTHENTICATION = 3002
HTTP_ACTIVITY = 4002
API_ACTIVITY = 6003
APPLICATION_ERROR = 6008
APPLICATION_LOG = 6999  # documented fallback: otad extension "Application Log" (docs/mapping.md)
METRIC_OBSERVATION = 999001  # otad extension class for metric data points (docs/mapping.md)
DETECTION_FINDING = 2004


@dataclass(slots=True)
class Row:
    """One OTLP record as an OCSF-style tabular row.

    `fields` holds the flattened OCSF columns (dot paths such as `http_request.http_method`,
    `http_response.code`, `duration`, `message`) and unmapped attributes as `unmapped.<key>`.
    """

    uid: str
    signal: Signal
    time_unix_nano: int
    service: str
    class_uid: int
    activity_id: int
    severity_id: int
    status_id: int
    fields: dict[str, Value] = field(default_factory=dict)
    trace_id: str = ""  # lowercase hex, "" when absent
    span_id: str = ""
    resource: dict[str, Value] = field(default_factory=dict)  # source resource attributes, for the event

    @property
    def time_ms(self) -> int:
        return self.time_unix_nano // 1_000_000

    @property
    def type_uid(self) -> int:
        return self.class_uid * 100 + self.activity_id


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A scored row at or above the threshold, with its evidence."""

    row: Row
    score: float  # calibrated 0-100
    raw_score: float  # k-NN distance in embedding space
    threshold: float  # on the 0-100 scale
    detector: str
    model_version: str
    explanation: str  # one sentence
    neighbors: tuple[str, ...]  # uids of the nearest normal rows
    evidence: tuple[tuple[str, str, str], ...]  # (feature, observed value, typical value of the neighbours)
    detected_unix_nano: int


def content_uid(*parts: object) -> str:
    """A stable id from content: the same record always gets the same uid (retries do not duplicate)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def metric_point_uid(service: str, metric_name: str, attributes: dict[str, Value], time_unix_nano: int) -> str:
    """The uid of a metric data point: its series identity plus its timestamp."""
    return content_uid("metrics", service, metric_name, sorted(attributes.items()), int(time_unix_nano))


def row_to_dict(row: Row, *, resource: bool = True) -> dict:
    """A JSON-ready dict of a row (stored with it, so models can be retrained from storage).

    With `resource=False` the resource attributes are left out: features never read them, and a scored row
    stored per model version need not repeat its resource (often the largest part) on every record.
    """
    out = {
        "uid": row.uid, "signal": row.signal, "time_unix_nano": row.time_unix_nano, "service": row.service,
        "class_uid": row.class_uid, "activity_id": row.activity_id, "severity_id": row.severity_id,
        "status_id": row.status_id, "fields": row.fields, "trace_id": row.trace_id, "span_id": row.span_id,
    }
    if resource:
        out["resource"] = row.resource
    return out


def row_from_dict(data: dict) -> Row:
    return Row(
        uid=str(data["uid"]), signal=data["signal"], time_unix_nano=int(data["time_unix_nano"]),
        service=str(data["service"]), class_uid=int(data["class_uid"]), activity_id=int(data["activity_id"]),
        severity_id=int(data["severity_id"]), status_id=int(data["status_id"]), fields=dict(data.get("fields") or {}),
        trace_id=str(data.get("trace_id") or ""), span_id=str(data.get("span_id") or ""),
        resource=dict(data.get("resource") or {}),
    )
