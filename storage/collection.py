"""Store stage, data model: Milvus collection names, explicit schemas, index params and filter rendering.

Three kinds of collection:

- ``otad_backlog``: raw rows received before any model exists (no embedding yet).
- ``otad_rows_<version>``: embedded rows, one collection per model version, so embeddings of different
  versions are never compared; every row also carries ``model_version``.
- ``otad_anomalies``: every anomaly event, kept.
- ``otad_feedback``: operator feedback (MarkNormal, Suppress) with the source row's embedding, zero-padded to
  ``FEEDBACK_DIM`` (padding changes no cosine similarity, so versions with other embedding widths fit).

Milvus refuses a collection without a vector field, so the backlog and anomaly collections carry a 2-d
``embedding`` placeholder (always ``PLACEHOLDER_VECTOR``, with a FLAT index that costs nothing to build).
It also keeps the shape open: anomalies can later carry a real embedding for "similar incidents" search.

Every field layout lives here: ``FIELD_TYPES`` types each field once, the ``*_FIELDS`` lists give each
collection's scalar fields in schema order (the order Milvus returns them in), and the schemas are built
from those lists, so what the store writes and reads can never drift from what the collection declares.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from pymilvus import CollectionSchema, DataType, MilvusClient
from pymilvus.milvus_client.index import IndexParams

from storage.errors import StorageError

__all__ = [
    "ANOMALIES_COLLECTION",
    "ANOMALY_FIELDS",
    "BACKLOG_COLLECTION",
    "BACKLOG_FIELDS",
    "PLACEHOLDER_VECTOR",
    "ROWS_INDEX_TYPES",
    "ROW_FIELDS",
    "anomalies_schema",
    "backlog_schema",
    "decode_row",
    "encode_row",
    "index_params",
    "render_filter",
    "rows_collection_name",
    "rows_schema",
]

BACKLOG_COLLECTION = "otad_backlog"
ANOMALIES_COLLECTION = "otad_anomalies"
FEEDBACK_COLLECTION = "otad_feedback"
FEEDBACK_DIM = 1024  # the widest embedding a feedback entry holds
ROWS_PREFIX = "otad_rows_"

PLACEHOLDER_DIM = 2
PLACEHOLDER_VECTOR = [1.0, 0.0]  # constant and non-zero: COSINE is undefined for a zero vector

# VARCHAR limits; Milvus rejects a longer value (the whole upsert call fails), so callers bound them.
UID_MAX = 64
SIGNAL_MAX = 16  # logs | traces | metrics
SERVICE_MAX = 256
TRACE_ID_MAX = 64  # 32 hex digits today; room for other id formats
VERSION_MAX = 128
EXPLANATION_MAX = 4096

# Consistency levels, chosen per collection:
# - backlog and anomalies: "Strong". They are low-rate, and their readers need read-your-writes: the
#   bootstrap trigger counts the backlog right after an upsert, and `otad anomalies` must list an event
#   the moment it was stored. The cost (waiting for the server's tsafe) is small at that rate.
# - rows: "Bounded". The hot path searches for neighbours among reference rows written long before, so a
#   staleness of a few seconds changes no score, while "Strong" would add the tsafe wait to every search
#   on a distributed Milvus. Calls that need exact counts ask for "Strong" per request.
# Milvus Lite ignores the level (a single process always reads its own writes).
STRONG = "Strong"
BOUNDED = "Bounded"

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9_]")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def rows_collection_name(model_version: str) -> str:
    """Name of the rows collection for ``model_version``: ``otad_rows_<version>``.

    Characters outside ``[A-Za-z0-9_]`` become ``_``; when that changed the name (or it is long), a short
    hash of the original is appended, so ``v1.0`` and ``v1_0`` never share a collection.

    Raises:
        StorageError: the version is empty.
    """
    if not model_version:
        raise StorageError("model version must be a non-empty string")
    safe = _SAFE_CHARS.sub("_", model_version)
    if safe != model_version or len(safe) > 64:
        digest = hashlib.sha256(model_version.encode()).hexdigest()[:8]
        safe = f"{safe[:64]}_{digest}"
    return ROWS_PREFIX + safe


# The row travels as a JSON *string*: otad never filters inside it, and Milvus Lite ingests a VARCHAR
# faster than a JSON field (docs/performance.md).
ROW_MAX = 16_384

# Every scalar field of every collection, typed once; a field means the same in each collection holding it.
FIELD_TYPES: dict[str, tuple[DataType, dict[str, Any]]] = {
    "uid": (DataType.VARCHAR, {"is_primary": True, "max_length": UID_MAX}),
    "signal": (DataType.VARCHAR, {"max_length": SIGNAL_MAX}),
    "service": (DataType.VARCHAR, {"max_length": SERVICE_MAX}),
    "class_uid": (DataType.INT64, {}),
    "time_ms": (DataType.INT64, {}),
    "trace_id": (DataType.VARCHAR, {"max_length": TRACE_ID_MAX}),
    "row": (DataType.VARCHAR, {"max_length": ROW_MAX}),
    "model_version": (DataType.VARCHAR, {"max_length": VERSION_MAX}),
    "score": (DataType.FLOAT, {}),
    "is_anomaly": (DataType.BOOL, {}),
    "is_reference": (DataType.BOOL, {}),
    "source_uid": (DataType.VARCHAR, {"max_length": UID_MAX}),
    "detected_ms": (DataType.INT64, {}),
    "threshold": (DataType.FLOAT, {}),
    "explanation": (DataType.VARCHAR, {"max_length": EXPLANATION_MAX}),
    "event": (DataType.JSON, {}),
    "kind": (DataType.VARCHAR, {"max_length": SIGNAL_MAX}),  # normal | suppress
    "created_ms": (DataType.INT64, {}),
    "expires_ms": (DataType.INT64, {}),  # 0: never
    "revoked": (DataType.BOOL, {}),
    "record": (DataType.JSON, {}),  # the rest of a feedback entry: who, why, radius, the source row
}
# Scalar fields per collection, in schema order; each schema ends with the ``embedding`` vector field.
_COMMON_FIELDS = ["uid", "signal", "service", "class_uid", "time_ms"]
BACKLOG_FIELDS = [*_COMMON_FIELDS, "trace_id", "row"]
ROW_FIELDS = [*_COMMON_FIELDS, "trace_id", "model_version", "score", "is_anomaly", "is_reference", "row"]
ANOMALY_FIELDS = [
    *_COMMON_FIELDS,
    "source_uid",
    "detected_ms",
    "score",
    "threshold",
    "model_version",
    "explanation",
    "event",
]
FEEDBACK_FIELDS = [
    "uid",
    "kind",
    "source_uid",
    "service",
    "created_ms",
    "expires_ms",
    "model_version",
    "revoked",
    "record",
]


def _schema(fields: list[str], dim: int) -> CollectionSchema:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    for name in fields:
        dtype, params = FIELD_TYPES[name]
        schema.add_field(name, dtype, **params)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    return schema


def backlog_schema() -> CollectionSchema:
    """Schema of ``otad_backlog``: raw rows, JSON ``row``, placeholder vector."""
    return _schema(BACKLOG_FIELDS, PLACEHOLDER_DIM)


def rows_schema(dim: int) -> CollectionSchema:
    """Schema of one ``otad_rows_<version>`` collection with a ``dim``-wide ``embedding``."""
    return _schema(ROW_FIELDS, dim)


def anomalies_schema() -> CollectionSchema:
    """Schema of ``otad_anomalies``: one row per anomaly event, keyed by the finding uid."""
    return _schema(ANOMALY_FIELDS, PLACEHOLDER_DIM)


def feedback_schema() -> CollectionSchema:
    """Schema of ``otad_feedback``: one entry per feedback, its embedding padded to ``FEEDBACK_DIM``."""
    return _schema(FEEDBACK_FIELDS, FEEDBACK_DIM)


def encode_row(row: Any) -> str:
    """A row dict as compact JSON for the ``row`` field.

    The receiver bounds every row where it enters (receiver/rows/bounds.py), so a row that still does not fit
    is refused as data (the pipeline sets it aside), never cut silently.

    Raises:
        StorageError: (not retryable) the JSON is over ``ROW_MAX`` bytes.
    """
    text = json.dumps(row, separators=(",", ":"), default=str)
    size = len(text.encode())
    if size > ROW_MAX:
        uid = row.get("uid") if isinstance(row, dict) else None
        raise StorageError(
            f"row {uid!r} is {size} bytes of JSON, over the {ROW_MAX}-byte row field", retryable=False
        )
    return text


def decode_row(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` with its ``row`` field parsed back from JSON (in place; other fields untouched)."""
    value = item.get("row")
    if isinstance(value, str):
        item["row"] = json.loads(value)
    return item


ROWS_INDEX_TYPES = {"flat": "FLAT", "autoindex": "AUTOINDEX"}


def index_params(
    client: MilvusClient, *, placeholder: bool, time_field: str = "time_ms", rows_index: str = "autoindex"
) -> IndexParams:
    """Index params: COSINE on ``embedding`` plus inverted indexes on the fields filters use.

    A real embedding gets ``rows_index``: ``autoindex`` (HNSW in Milvus Lite when faiss-cpu is present,
    brute force otherwise; the server's own choice on Milvus) or ``flat`` (exact brute-force search, no
    index to build). The placeholder always gets ``FLAT``: it is never searched for meaning and a graph
    over identical vectors is wasted work.
    """
    if rows_index not in ROWS_INDEX_TYPES:
        raise StorageError(f"rows index must be one of {', '.join(ROWS_INDEX_TYPES)}, got {rows_index!r}")
    params = client.prepare_index_params()
    params.add_index(
        "embedding", index_type="FLAT" if placeholder else ROWS_INDEX_TYPES[rows_index], metric_type="COSINE"
    )
    # INVERTED is the scalar index both Milvus and Milvus Lite implement.
    params.add_index("service", index_type="INVERTED")
    params.add_index(time_field, index_type="INVERTED")
    return params


def _literal(value: Any, name: str) -> str:
    """One filter parameter as a Milvus expression literal (strings quoted and escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StorageError(f"filter parameter {name!r} must be finite, got {value!r}")
        return repr(value)
    if isinstance(value, str):
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\t", "\\t")
        )
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(item, name) for item in value) + "]"
    raise StorageError(f"filter parameter {name!r} has unsupported type {type(value).__name__}")


def render_filter(template: str, params: Mapping[str, Any] | None) -> str:
    """Fill ``{name}`` placeholders in a filter template with safely quoted literals.

    Milvus (2.5+) fills templates server-side from ``filter_params``; Milvus Lite 3.2 does not (its parser
    fails on ``{``), so for Lite the store renders them here. Values are always encoded as literals, never
    pasted as text, and placeholders inside quoted strings of the template are left alone.

    Raises:
        StorageError: a placeholder has no parameter, or a value cannot be a literal.
    """
    params = params or {}
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch in "\"'":  # copy a quoted string of the template verbatim
            j = i + 1
            while j < n and template[j] != ch:
                j += 2 if template[j] == "\\" else 1
            out.append(template[i : j + 1])
            i = j + 1
            continue
        match = _PLACEHOLDER.match(template, i) if ch == "{" else None
        if match:
            name = match.group(1)
            if name not in params:
                raise StorageError(f"filter {template!r} uses {{{name}}} but filter_params has no {name!r}")
            out.append(_literal(params[name], name))
            i = match.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)
