"""Boundary types shared by every stage: the OCSF-style row, the anomaly found on it, and their column form
for the scoring child's pipe (named columns, so adding a field cannot shift the others)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from itertools import starmap
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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
    raw_score: float  # the ensemble's combined p-value (score = 100 * -log10(raw_score) / 6)
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


def metric_point_uid(
    service: str, metric_name: str, attributes: dict[str, Value], time_unix_nano: int
) -> str:
    """The uid of a metric data point: its series identity plus its timestamp."""
    return content_uid("metrics", service, metric_name, sorted(attributes.items()), int(time_unix_nano))


def row_to_dict(row: Row, *, resource: bool = True) -> dict[str, Any]:
    """A JSON-ready dict of a row (stored with it, so models can be retrained from storage).

    With `resource=False` the resource attributes are left out: features never read them, and a scored row
    stored per model version need not repeat its resource (often the largest part) on every record.
    """
    out = {
        "uid": row.uid,
        "signal": row.signal,
        "time_unix_nano": row.time_unix_nano,
        "service": row.service,
        "class_uid": row.class_uid,
        "activity_id": row.activity_id,
        "severity_id": row.severity_id,
        "status_id": row.status_id,
        "fields": row.fields,
        "trace_id": row.trace_id,
        "span_id": row.span_id,
    }
    if resource:
        out["resource"] = row.resource
    return out


def row_from_dict(data: Mapping[str, Any]) -> Row:
    """The row of a `row_to_dict` dict (missing optional keys get their defaults)."""
    return Row(
        uid=str(data["uid"]),
        signal=data["signal"],
        time_unix_nano=int(data["time_unix_nano"]),
        service=str(data["service"]),
        class_uid=int(data["class_uid"]),
        activity_id=int(data["activity_id"]),
        severity_id=int(data["severity_id"]),
        status_id=int(data["status_id"]),
        fields=dict(data.get("fields") or {}),
        trace_id=str(data.get("trace_id") or ""),
        span_id=str(data.get("span_id") or ""),
        resource=dict(data.get("resource") or {}),
    )


# ----- column form, for the pipe to the scoring child -----
# Records cross the process boundary as columns keyed by field name: one list per field is as small and fast to
# pickle as a tuple per record, and a decoder matches columns by name, so a field added to `Row` or `Anomaly`
# (with a default) cannot shift the fields after it. Bump BOUNDARY_VERSION when a column changes its meaning or
# type, or a required one is added; the child checks it at its handshake.
BOUNDARY_VERSION = 1
# Column order only sets the payload's size: pickle refers back to a repeated string (a service, a field key)
# in 2 bytes while it has memoized fewer than 256 objects and in 5 after, so the per-row unique ids go last.
_UNIQUE_PER_ROW = ("uid", "trace_id", "span_id")
ROW_COLUMNS = tuple(
    sorted(
        (f.name for f in fields(Row) if f.name != "resource"),  # features never read it
        key=lambda name: name in _UNIQUE_PER_ROW,
    )
)
ANOMALY_COLUMNS = tuple(f.name for f in fields(Anomaly))  # "row" holds the row's index in its batch

Columns = dict[str, list[Any]]
_D = TypeVar("_D", bound="DataclassInstance")


class BoundaryError(ValueError):
    """Columns that do not decode: another boundary version, a missing required column, or unequal lengths."""


def check_boundary_version(version: object) -> None:
    """Raise `BoundaryError` unless the other side of the pipe speaks this side's BOUNDARY_VERSION."""
    if version != BOUNDARY_VERSION:
        raise BoundaryError(
            f"boundary version mismatch: this process speaks {BOUNDARY_VERSION}, the other "
            f"{version!r}; both ends must run the same otad version"
        )


def rows_to_columns(rows: Sequence[Row]) -> Columns:
    """Rows as one list per name of ROW_COLUMNS (`resource` left out: the anomaly event takes it from the
    sender's own row).

    Spelled out rather than looped over the names: a comprehension per attribute is twice as fast as a
    generic getter on the hot path, and tests pin the keys to ROW_COLUMNS.
    """
    return {
        "signal": [r.signal for r in rows],
        "time_unix_nano": [r.time_unix_nano for r in rows],
        "service": [r.service for r in rows],
        "class_uid": [r.class_uid for r in rows],
        "activity_id": [r.activity_id for r in rows],
        "severity_id": [r.severity_id for r in rows],
        "status_id": [r.status_id for r in rows],
        "fields": [r.fields for r in rows],
        "uid": [r.uid for r in rows],
        "trace_id": [r.trace_id for r in rows],
        "span_id": [r.span_id for r in rows],
    }


def rows_from_columns(cols: Mapping[str, list[Any]]) -> list[Row]:
    """Rows from `rows_to_columns`; unknown columns are ignored and missing ones with a default get it.

    Raises:
        BoundaryError: a column without a default is missing, or the columns differ in length.
    """
    return _from_columns(Row, cols, {})


def anomalies_to_columns(anomalies: Sequence[Anomaly], row_index: Sequence[int]) -> Columns:
    """Anomalies as one list per field; the `row` column holds `row_index` (each anomaly's row in its batch)."""
    cols = {name: list(map(attrgetter(name), anomalies)) for name in ANOMALY_COLUMNS if name != "row"}
    cols["row"] = [int(i) for i in row_index]
    return cols


def anomalies_from_columns(cols: Mapping[str, list[Any]], rows: Sequence[Row]) -> list[Anomaly]:
    """Anomalies from `anomalies_to_columns`, each on `rows[index]` (the receiver's rows, resource included).

    Raises:
        BoundaryError: as for `rows_from_columns`.
    """
    if "row" not in cols:
        raise BoundaryError("anomaly columns lack required column 'row'")
    return _from_columns(Anomaly, cols, {"row": [rows[i] for i in cols["row"]]})


def _from_columns(cls: type[_D], cols: Mapping[str, list[Any]], given: Mapping[str, list[Any]]) -> list[_D]:
    """Instances of the dataclass `cls`, built positionally in this process's own field order."""
    known = {f.name: given.get(f.name, cols.get(f.name)) for f in fields(cls)}
    lengths = {len(col) for col in known.values() if col is not None}
    if len(lengths) > 1:
        raise BoundaryError(f"{cls.__name__} columns differ in length: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    columns: list[list[Any]] = []
    for f in fields(cls):
        col = known[f.name]
        if col is None:
            if f.default is not MISSING:
                col = [f.default] * n
            elif f.default_factory is not MISSING:
                col = [f.default_factory() for _ in range(n)]
            else:
                raise BoundaryError(f"{cls.__name__} columns lack required column {f.name!r}")
        columns.append(col)
    return list(starmap(cls, zip(*columns, strict=True)))
