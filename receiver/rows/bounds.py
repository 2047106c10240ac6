"""Map to rows, bounds: every mapped row is cut to what storage can hold, where it enters (docs/receiver.md).

Milvus refuses a whole upsert when one value is too long (uid 64 bytes, service 256, the row JSON 16 KiB), so
`RowMapper._walk` bounds each resource once (`bound_resource`) and each row (`bound_row`) before any row is
queued, spooled or stored. Bounding is deterministic (a retried or replayed request maps to the same rows) and
never drops time, severity, status, class, service, uid, trace/span ids or the mapped OCSF columns. A bounded
row says so in `fields["otad.truncated"]`, e.g. "uid,message,attributes".

A row whose fields are all small costs one cheap pass (lengths and an upper bound of its JSON size); the exact
work only runs for rows that may be too big.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from json.encoder import encode_basestring_ascii
from typing import TypeGuard, cast

from model.schema import Row, Value, content_uid, row_to_dict
from receiver.rows.common import ATTRIBUTE_COLUMNS, RejectError, ResourceContext

__all__ = ["MARKER", "ResourceBounds", "bound_resource", "bound_row"]

# Storage limits (storage/collection.py; restated so the mapper does not import pymilvus, a test pins them).
UID_MAX = 64  # bytes; a longer uid is replaced by content_uid("uid", uid), the original kept in metadata.uid
SERVICE_MAX = 256  # bytes; a longer service name becomes "<prefix>~<8 hex>"
TRACE_ID_MAX = 64  # trace/span ids are validated hex (32/16 chars) before they get here
ROW_MAX = 16_384  # bytes of the row JSON, resource included
ROW_BUDGET = ROW_MAX - 1024  # safety margin: the marker, and room for what storage may add later

# Per-value limits (UTF-8 bytes, cut on a character boundary) and counts.
MESSAGE_MAX = 8192  # `message` (the log body, the span or metric name)
VALUE_MAX = 1024  # any other field value and every resource attribute value
KEY_MAX = (
    128  # field and resource keys; a longer key becomes "<prefix>~<8 hex>" (distinct keys stay distinct)
)
FIELDS_MAX = 128  # fields per row (plus the marker): mapped columns first, extra unmapped.* dropped
RESOURCE_MAX = 64  # resource attributes per row: service.name and host.name first, then in order

MARKER = "otad.truncated"
_ORDER = ("uid", "service", "message", "attributes", "resource")  # marker order, also the metric's `field`
_SHORT = 256  # a string of at most this many characters is within every per-value limit (4 bytes a char)
_SHORT_KEY = KEY_MAX // 4
_ENTRY = (
    32  # JSON bytes of a field beyond its key and string value: quotes, ':' ',' or a number (int64 or float)
)
_is_str = cast(
    "Callable[[object], TypeGuard[str]]", str.__instancecheck__
)  # isinstance(x, str), no Python frame

# The columns the mappers themselves write: kept first, and only ever cut, never dropped.
CORE = frozenset({column for targets in ATTRIBUTE_COLUMNS.values() for column, _, _ in targets}) | {
    MARKER,
    "message",
    "severity_text",
    "scope.name",
    "device.hostname",
    "status_code",
    "status_detail",
    "duration",
    "api.operation",
    "error.type",
    "error.message",
    "dst_endpoint.svc_name",
    "trace.uid",
    "trace.span.uid",
    "trace.span.parent_uid",
    "trace.span.kind",
    "trace.span.operation",
    "trace.span.events",
    "trace.span.exception",
    "metric.name",
    "metric.type",
    "metric.unit",
    "metric.monotonic",
    "metric.temporality",
    "metric.series",
    "metric.value",
    "metric.rate",
    "metric.cumulative",
    "metric.count",
    "metric.sum",
    "metric.mean",
    "metric.min",
    "metric.max",
    "metric.cumulative_count",
    "metric.cumulative_sum",
    "metric.p50",
    "metric.p95",
    "metric.p99",
}
_RESOURCE_FIRST = ("service.name", "host.name")


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def cut_utf8(text: str, limit: int) -> str:
    """The longest prefix of `text` of at most `limit` UTF-8 bytes (never half a character)."""
    if text.isascii():
        return text[:limit]
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    end = limit
    while end and data[end] & 0xC0 == 0x80:  # a continuation byte: the character started before `end`
        end -= 1
    return data[:end].decode("utf-8", "surrogatepass")


def short_hash(text: str, limit: int) -> str:
    """`text` in at most `limit` bytes, stable and distinct: a prefix, "~" and 8 hex digits of the whole."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{cut_utf8(text, limit - 9)}~{digest}"


def cut_json(text: str, budget: int) -> str:
    """The longest prefix of `text` whose JSON string (quotes and escapes included) takes at most `budget` bytes."""
    lo, hi = 0, min(len(text), max(budget - 2, 0))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode_basestring_ascii(text[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def _json_len(value: object) -> int:
    if value.__class__ is str:
        return len(encode_basestring_ascii(value))
    return len(json.dumps(value, default=str))


def _dict_len(sizes: dict[str, int]) -> int:
    """JSON bytes of a dict whose entries ("key":value) take `sizes` bytes each."""
    return 2 + sum(sizes.values()) + max(len(sizes) - 1, 0)


def _sizes(mapping: dict[str, Value]) -> dict[str, int]:
    return {key: len(encode_basestring_ascii(key)) + 1 + _json_len(value) for key, value in mapping.items()}


def _note(notes: dict[str, list[str]], field: str, text: str) -> None:
    found = notes.setdefault(field, [])
    if text not in found:
        found.append(text)


def _bound_items(items: dict[str, Value], field: str, notes: dict[str, list[str]]) -> dict[str, Value]:
    """`items` with over-long keys shortened and string values cut, each noted under `field` (`message` apart)."""
    out: dict[str, Value] = {}
    for key, value in items.items():
        if len(key) > KEY_MAX // 4 and utf8_len(key) > KEY_MAX:
            key = short_hash(key, KEY_MAX)
            _note(notes, field, f"keys over {KEY_MAX} bytes shortened with a hash")
        if value.__class__ is str and len(value) > _SHORT:
            limit, what = (
                (MESSAGE_MAX, "message") if key == "message" and field == "attributes" else (VALUE_MAX, field)
            )
            if utf8_len(value) > limit:
                value = cut_utf8(value, limit)
                _note(
                    notes,
                    what,
                    f"values over {limit} bytes cut" if what != "message" else f"over {limit} bytes, cut",
                )
        out.setdefault(key, value)
    return out


@dataclass(frozen=True, slots=True)
class ResourceBounds:
    """What bounding one resource did, shared by all its rows."""

    notes: tuple[tuple[str, str], ...]  # (field, what was done) for every row of the resource
    fixed: int  # upper bound of a row's JSON bytes outside `fields` and the uid: service, resource, the rest
    sizes: dict[str, int]  # JSON bytes of each resource entry


_SKELETON = len(
    json.dumps(
        row_to_dict(
            Row(
                uid="",
                signal="metrics",
                time_unix_nano=2**64,
                service="",
                class_uid=-(2**63),
                activity_id=-(2**63),
                severity_id=-(2**63),
                status_id=-(2**63),
                trace_id="0" * TRACE_ID_MAX,
                span_id="0" * TRACE_ID_MAX,
            )
        ),
        separators=(",", ":"),
    )
)


def bound_resource(ctx: ResourceContext) -> tuple[ResourceContext, ResourceBounds]:
    """Bound what every row of one resource shares: its service name and resource attributes."""
    notes: dict[str, list[str]] = {}
    service, flat, hostname = ctx.service, ctx.resource, ctx.hostname
    if len(service) > SERVICE_MAX // 4 and utf8_len(service) > SERVICE_MAX:
        service = short_hash(service, SERVICE_MAX)
        _note(notes, "service", f"over {SERVICE_MAX} bytes, shortened with a hash")
    if len(flat) > RESOURCE_MAX:
        first = {key: flat[key] for key in _RESOURCE_FIRST if key in flat}
        _note(notes, "resource", f"{len(flat)} attributes -> {RESOURCE_MAX}")
        flat = dict(list((first | flat).items())[:RESOURCE_MAX])
    flat = _bound_items(flat, "resource", notes)  # once per resource and request: not worth a fast path
    if hostname is not None and len(hostname) > _SHORT and utf8_len(hostname) > VALUE_MAX:
        hostname = cut_utf8(hostname, VALUE_MAX)
    if notes or hostname != ctx.hostname:
        ctx = replace(ctx, service=service, resource=flat, hostname=hostname)
    sizes = _sizes(ctx.resource)
    fixed = _SKELETON + len(encode_basestring_ascii(ctx.service)) - 2 + _dict_len(sizes) - 2
    found = tuple((field, "; ".join(notes[field])) for field in _ORDER if field in notes)
    return ctx, ResourceBounds(found, fixed, sizes)


def bound_row(row: Row, res: ResourceBounds) -> list[tuple[str, str]] | None:
    """Bound `row` in place to what storage holds; the (field, what was done) list, or None when it was whole.

    Raises RejectError only for a trace/span id longer than storage holds (the mappers never make one; checked
    whenever the row is bounded, and pinned by tests/unit/receiver/test_rows_bounds.py).
    """
    fields, uid = row.fields, row.uid  # (trace/span ids: hex_id lets only 32/16 hex digits through)
    if (
        res.notes
        or len(fields) > FIELDS_MAX
        or (len(uid) > UID_MAX // 4 and (len(uid) > UID_MAX or not uid.isascii()))
    ):
        return _bound_exact(row, res)
    # The hot path: one pass of length checks, and an upper bound of the row's JSON bytes: 12 a character bounds
    # any escape (an astral character is two six-character \u escapes), 6 an ASCII control character.
    chars, long, short, short_key = len(uid), 0, _SHORT, _SHORT_KEY
    for key, value in fields.items():
        n = len(key)
        if n > short_key and (n > KEY_MAX or not key.isascii()):
            return _bound_exact(row, res)
        if type(value) is str:
            k = len(value)
            if k > short:
                limit = MESSAGE_MAX if key == "message" else VALUE_MAX
                if k > limit or utf8_len(value) > limit:
                    return _bound_exact(row, res)
                long += 6 * k if value.isascii() else 12 * k
            else:
                chars += k
        chars += n
    fixed = res.fixed + _ENTRY * len(fields)
    if fixed + 12 * chars + long <= ROW_BUDGET:
        return None
    # a wide row or a long message: all its strings at once, ASCII (6 bytes a character at most), else exactly
    strings = "".join(fields) + "".join(filter(_is_str, fields.values())) + uid
    if fixed + 6 * len(strings) <= ROW_BUDGET and strings.isascii():
        return None
    if fixed + len(encode_basestring_ascii(strings)) <= ROW_BUDGET:
        return None
    return _bound_exact(row, res)


def _rank(key: str) -> int:
    return 0 if key in CORE else 2 if key.startswith("unmapped.") else 1


def _bound_exact(row: Row, res: ResourceBounds) -> list[tuple[str, str]] | None:
    if len(row.trace_id) > TRACE_ID_MAX or len(row.span_id) > TRACE_ID_MAX:
        raise RejectError(f"trace_id or span_id longer than {TRACE_ID_MAX} characters")
    notes: dict[str, list[str]] = {}
    for field, note in res.notes:
        _note(notes, field, note)
    fields = row.fields
    if utf8_len(row.uid) > UID_MAX:
        fields.setdefault("metadata.uid", row.uid)
        row.uid = content_uid("uid", row.uid)
        _note(notes, "uid", f"over {UID_MAX} bytes, replaced by a hash")
    if utf8_len(row.service) > SERVICE_MAX:  # bound_resource already did it for every mapper's row
        row.service = short_hash(row.service, SERVICE_MAX)
        _note(notes, "service", f"over {SERVICE_MAX} bytes, shortened with a hash")
    fields.pop(MARKER, None)  # only otad sets it
    if len(fields) > FIELDS_MAX:
        _note(notes, "attributes", f"{len(fields)} fields -> {FIELDS_MAX}")
        fields = dict(sorted(fields.items(), key=lambda item: _rank(item[0]))[:FIELDS_MAX])
    row.fields = _bound_items(fields, "attributes", notes)
    _fit(row, res, notes)
    if not notes:
        return None
    found = [(field, "; ".join(notes[field])) for field in _ORDER if field in notes]
    row.fields[MARKER] = ",".join(field for field, _ in found)
    return found


def _drop(sizes: dict[str, int], key: str) -> int:
    """Remove an entry from `sizes`; the JSON bytes that saves (its comma included)."""
    size = sizes.pop(key)
    return size + 1 if sizes else size


def _fit(row: Row, res: ResourceBounds, notes: dict[str, list[str]]) -> None:
    """Make the row JSON fit ROW_BUDGET: drop unmapped fields and resource attributes largest first, then cut the
    message, then drop the other fields that are not core columns, then cut core values largest first."""
    fields, resource = row.fields, row.resource
    f_sizes = _sizes(fields)
    r_sizes = res.sizes if resource.keys() == res.sizes.keys() else _sizes(resource)
    reserve = len(MARKER) + len(",".join(_ORDER)) + 6  # "otad.truncated":"uid,...",
    over = (
        _SKELETON
        - 4
        + len(encode_basestring_ascii(row.service))
        + len(encode_basestring_ascii(row.uid))
        + _dict_len(f_sizes)
        + _dict_len(r_sizes)
        + reserve
        - ROW_BUDGET
    )
    if over <= 0:
        return
    r_sizes = dict(r_sizes)
    victims = sorted(
        [(size, 0, key) for key, size in f_sizes.items() if _rank(key) == 2]
        + [(size, 1, key) for key, size in r_sizes.items()],
        reverse=True,
    )
    dropped = [0, 0]
    for _, where, key in victims:
        if over <= 0:
            break
        if where:
            del resource[key]
            over -= _drop(r_sizes, key)
        else:
            del fields[key]
            over -= _drop(f_sizes, key)
        dropped[where] += 1
    if dropped[0]:
        _note(notes, "attributes", f"{dropped[0]} unmapped fields dropped to fit the row")
    if dropped[1]:
        _note(notes, "resource", f"{dropped[1]} attributes dropped to fit the row")
    message = fields.get("message")
    if over > 0 and isinstance(message, str) and message:
        over -= _cut(fields, f_sizes, "message", over)
        _note(notes, "message", "cut to fit the row")
    others = sorted(((size, key) for key, size in f_sizes.items() if _rank(key) == 1), reverse=True)
    for _, key in others:
        if over <= 0:
            break
        del fields[key]
        over -= _drop(f_sizes, key)
        _note(notes, "attributes", "fields dropped to fit the row")
    while over > 0:  # only core columns are left: their keys are short, so cutting values always ends
        longest = max(
            (k for k, v in fields.items() if v.__class__ is str and v), key=f_sizes.__getitem__, default=None
        )
        if longest is None:
            raise RejectError(f"row does not fit in {ROW_MAX} bytes")  # unreachable with the limits above
        over -= _cut(fields, f_sizes, longest, max(over, f_sizes[longest] // 2))
        _note(notes, "message" if longest == "message" else "attributes", "cut to fit the row")


def _cut(fields: dict[str, Value], sizes: dict[str, int], key: str, by: int) -> int:
    """Cut the string value of `key` by at least `by` JSON bytes (or to ""); the bytes saved."""
    value = fields[key]
    assert isinstance(value, str)  # callers pick string values only
    size = len(encode_basestring_ascii(value))
    fields[key] = cut = cut_json(value, max(size - by, 2))
    saved = size - len(encode_basestring_ascii(cut))
    sizes[key] -= saved
    return saved
