"""Map to rows, shared part: AnyValue conversion, the attribute -> OCSF column table and the OCSF id tables."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from model.schema import Value, content_uid

_SCALAR_KINDS = frozenset({"string_value", "int_value", "double_value", "bool_value"})
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
MAX_DEPTH = 8  # nesting kept as dot paths; deeper parts become compact JSON strings
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # integer columns stay int64 (what storage and features hold)

# Class-selection hints found in attribute keys (first dot segment).
HTTP, RPC, AUTH, ERROR = 1, 2, 4, 8
_PREFIX_HINTS = {
    "http": HTTP,
    "url": HTTP,
    "rpc": RPC,
    "auth": AUTH,
    "login": AUTH,
    "logon": AUTH,
    "logout": AUTH,
    "password": AUTH,
    "authentication": AUTH,
    "exception": ERROR,
}


class RejectError(ValueError):
    """An item that can never be mapped; the message is the rejection reason."""


def any_value(value: AnyValue, depth: int = 0) -> object:
    """An AnyValue as a plain Python value (bytes as hex, arrays as lists, kvlists as dicts, empty as None)."""
    kind = value.WhichOneof("value")
    if kind in _SCALAR_KINDS:
        return getattr(value, kind)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if depth >= 32:  # protobuf already bounds recursion; this keeps pathological nesting cheap
        return None
    if kind == "array_value":
        return [any_value(item, depth + 1) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value, depth + 1) for kv in value.kvlist_value.values}
    return None


def compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def column_value(value: object) -> Value | None:
    """A value as a row column: numbers stay numeric (bool as 0/1), strings stay, the rest compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):  # JSON bodies can hold any integer; beyond int64 it is kept as text
        return value if INT_MIN <= value <= INT_MAX else str(value)
    if isinstance(value, float):
        # NaN/±inf would poison numeric features; kept as a category ("nan", "inf", "-inf") instead
        return value if math.isfinite(value) else str(value)
    if value is None:
        return None
    return compact_json(value)


def resource_value(value: object) -> Value:
    return value if isinstance(value, str | int | float | bool) else compact_json(value)


def hex_id(raw: bytes, name: str, size: int) -> str:
    """Lowercase hex of a trace/span id; "" when empty or all zero. Raises RejectError on a bad length."""
    if not raw:
        return ""
    if len(raw) != size:
        raise RejectError(f"invalid {name} length {len(raw)}")
    if raw == (_ZERO_TRACE if size == 16 else _ZERO_SPAN):
        return ""
    return raw.hex()


@dataclass(slots=True)
class ResourceContext:
    """What every row of one resource shares."""

    service: str
    resource: dict[str, Value]
    hostname: str | None
    key: str  # stable identity of the resource (series state of cumulative metrics)


def resource_context(resource: Resource) -> ResourceContext:
    flat = {kv.key: resource_value(any_value(kv.value)) for kv in resource.attributes}
    service = flat.get("service.name")
    host = flat.get("host.name")
    return ResourceContext(
        service=service if isinstance(service, str) and service else "unknown_service",
        resource=flat,
        hostname=str(host) if host not in (None, "") else None,
        key=content_uid(sorted(flat.items())),
    )


# --- attribute converters: return None when the value does not fit the column (it then stays unmapped) ---
def _str(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        return None
    return str(value)


def to_int(value: object) -> int | None:
    """An int64 from an int, a whole float or a decimal string; None otherwise (and when out of int64 range)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and (text := value.strip()).isdecimal() and len(text) <= 19:
        value = int(text)
    if isinstance(value, int):
        return value if INT_MIN <= value <= INT_MAX else None
    return None


def _target_path(value: object) -> str | None:
    text = _str(value)
    return text.split("?", 1)[0].split("#", 1)[0] or None if text else None


def _url_path(value: object) -> str | None:
    text = _str(value)
    try:
        return urlsplit(text).path or None if text else None
    except ValueError:
        return None


def _url_host(value: object) -> str | None:
    text = _str(value)
    try:
        return urlsplit(text).hostname if text else None
    except ValueError:
        return None


Converter = Callable[[object], Value | None]
# attribute key -> ((column, rank, converter), ...); the lowest rank present wins a column.
ATTRIBUTE_COLUMNS: dict[str, tuple[tuple[str, int, Converter], ...]] = {
    "http.request.method": (("http_request.http_method", 0, _str),),
    "http.method": (("http_request.http_method", 1, _str),),
    "url.path": (("http_request.url.path", 0, _str),),
    "http.target": (("http_request.url.path", 1, _target_path),),
    "url.full": (("http_request.url.path", 2, _url_path), ("http_request.url.hostname", 2, _url_host)),
    "http.url": (("http_request.url.path", 3, _url_path), ("http_request.url.hostname", 3, _url_host)),
    "server.address": (("http_request.url.hostname", 0, _str),),
    "url.domain": (("http_request.url.hostname", 1, _str),),
    "http.host": (("http_request.url.hostname", 4, _str),),
    "user_agent.original": (("http_request.user_agent", 0, _str),),
    "http.user_agent": (("http_request.user_agent", 1, _str),),
    "http.request.body.size": (("http_request.length", 0, to_int),),
    "http.request_content_length": (("http_request.length", 1, to_int),),
    "http.response.status_code": (("http_response.code", 0, to_int),),
    "http.status_code": (("http_response.code", 1, to_int),),
    "http.response.body.size": (("http_response.length", 0, to_int),),
    "http.response_content_length": (("http_response.length", 1, to_int),),
    "http.route": (("http_request.route", 0, _str),),
    "client.address": (("src_endpoint.ip", 0, _str),),
    "source.address": (("src_endpoint.ip", 1, _str),),
    "net.peer.ip": (("src_endpoint.ip", 2, _str),),
    "http.client_ip": (("src_endpoint.ip", 3, _str),),
    "client.port": (("src_endpoint.port", 0, to_int),),
    "source.port": (("src_endpoint.port", 1, to_int),),
    "client.geo.country.iso_code": (("src_endpoint.location.country", 0, _str),),
    "geo.country.iso_code": (("src_endpoint.location.country", 1, _str),),
    "peer.service": (("dst_endpoint.svc_name", 0, _str),),
    "server.port": (("dst_endpoint.port", 0, to_int),),
    "user.name": (("actor.user.name", 0, _str),),
    "enduser.id": (("actor.user.name", 1, _str),),
    "user.id": (("actor.user.name", 2, _str),),
    "session.id": (("actor.session.uid", 0, _str),),
    "rpc.method": (("api.operation", 0, _str),),
    "rpc.service": (("api.service.name", 0, _str),),
    "error.type": (("error.type", 0, _str),),
    "exception.type": (("error.type", 1, _str),),
    "exception.message": (("error.message", 0, _str),),
    "db.system.name": (("db.system", 0, _str),),
    "db.system": (("db.system", 1, _str),),
    "db.operation.name": (("db.operation", 0, _str),),
    "db.operation": (("db.operation", 1, _str),),
    "log.record.uid": (("metadata.uid", 0, _str),),
    "event.name": (("metadata.event_code", 1, _str),),
}


def map_attributes(
    attrs: dict[str, object], fields: dict[str, Value], ranks: dict[str, int], offset: int = 0
) -> int:
    """Write attributes into `fields` (mapped columns, else `unmapped.<key>`); return the class hints seen.

    `ranks` remembers which source won each column; `offset` lets a later source (a JSON body) lose to
    record attributes.
    """
    hints = 0
    for key, value in attrs.items():
        hint = _PREFIX_HINTS.get(key.partition(".")[0])
        if hint:
            hints |= hint
        targets = ATTRIBUTE_COLUMNS.get(key)
        mapped = False
        if targets is not None:
            if key == "error.type":
                hints |= ERROR
            for column, rank, convert in targets:
                converted = convert(value)
                if converted is None:
                    continue
                mapped = True
                rank += offset
                if ranks.get(column, 1 << 30) > rank:
                    fields[column] = converted
                    ranks[column] = rank
        if not mapped:
            unmapped = column_value(value)
            name = "unmapped." + key
            if unmapped is not None and (not offset or name not in fields):
                fields[name] = unmapped
    return hints


def flatten(
    obj: dict, prefix: str = "", depth: int = 0, out: dict[str, object] | None = None
) -> dict[str, object]:
    """Nested dicts as dot paths (up to MAX_DEPTH levels); lists and deeper objects stay whole."""
    out = {} if out is None else out
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and depth + 1 < MAX_DEPTH:
            flatten(value, path + ".", depth + 1, out)
        elif value is not None:
            out[path] = value
    return out


# --- OCSF id tables -------------------------------------------------------------------------------------
HTTP_ACTIVITY_BY_METHOD = {
    "CONNECT": 1,
    "DELETE": 2,
    "GET": 3,
    "HEAD": 4,
    "OPTIONS": 5,
    "POST": 6,
    "PUT": 7,
    "TRACE": 8,
    "PATCH": 9,
}
API_ACTIVITY_BY_METHOD = {"POST": 1, "GET": 2, "PUT": 3, "PATCH": 3, "DELETE": 4}
# RPC method verbs -> API Activity activity_id (matched on the lowercased method name's start).
API_ACTIVITY_BY_VERB = (
    (("create", "add", "insert", "new", "post", "put", "register"), 1),
    (("get", "list", "read", "fetch", "find", "search", "query", "describe", "lookup", "check"), 2),
    (("update", "set", "patch", "modify", "edit", "change", "replace"), 3),
    (("delete", "remove", "destroy", "drop", "purge"), 4),
)


def http_activity(method: object) -> int:
    if not isinstance(method, str) or not method:
        return 0
    return HTTP_ACTIVITY_BY_METHOD.get(method.upper(), 99)


def api_activity(http_method: object, operation: object) -> int:
    if isinstance(http_method, str) and http_method:
        return API_ACTIVITY_BY_METHOD.get(http_method.upper(), 0)
    if isinstance(operation, str) and operation:
        name = operation.rsplit("/", 1)[-1].lower()
        for verbs, activity in API_ACTIVITY_BY_VERB:
            if name.startswith(verbs):
                return activity
    return 0


def severity_from_number(number: int) -> int:
    """OTel severity_number band -> OCSF severity_id (docs/mapping.md)."""
    if number <= 0:
        return 0
    if number <= 12:
        return 1
    if number <= 16:
        return 3
    if number <= 20:
        return 4
    return 6


# severity_text (upper-cased, trailing digits removed) -> the OTel severity_number of its band start
SEVERITY_TEXT_NUMBER = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "INFORMATION": 9,
    "NOTICE": 10,
    "WARN": 13,
    "WARNING": 13,
    "ERROR": 17,
    "ERR": 17,
    "SEVERE": 17,
    "FATAL": 21,
    "CRITICAL": 21,
    "CRIT": 21,
    "ALERT": 21,
    "EMERG": 21,
    "EMERGENCY": 21,
    "PANIC": 21,
    # java.util.logging, Serilog's and zerolog's short forms, .NET and Android's long ones
    "FINEST": 1,
    "FINER": 5,
    "FINE": 5,
    "VERBOSE": 1,
    "VRB": 1,
    "TRC": 1,
    "DBG": 5,
    "CONFIG": 9,
    "INF": 9,
    "WRN": 13,
    "FTL": 21,
    "CRT": 21,
}
# A one-letter level (Android logcat, glog) counts only as the record's own severity text, never in a message.
SEVERITY_LETTER_NUMBER = {"V": 1, "D": 5, "I": 9, "W": 13, "E": 17, "F": 21}


def severity_number(number: int, text: str) -> int:
    """The record's OTel severity number; when 0, derived from severity_text (0 when unknown)."""
    if number > 0 or not text:
        return number
    word = text.strip().upper().rstrip("0123456789")
    return SEVERITY_TEXT_NUMBER.get(word, 0) or SEVERITY_LETTER_NUMBER.get(word, 0)
