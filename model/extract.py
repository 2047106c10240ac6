"""What the features read from a row: the derived values (URL templates, user-agent families, subnets, latencies
in messages and attributes, time of day) that FeatureContract turns into vectors."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from model.schema import Row
from model.templates import TemplateMatcher

_ID_SEGMENT = re.compile(r"^(\d+|[0-9a-fA-F-]{8,}|[0-9a-zA-Z_-]*\d[0-9a-zA-Z_-]*)$")


_VERSION = re.compile(r"[\d._]+")


_DURATION = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?)\s?(ms|msec|milliseconds?|s|sec|secs|seconds?|us|µs|microseconds?|ns)\b", re.I
)


_UNIT_MS = {
    "ms": 1.0,
    "msec": 1.0,
    "millisecond": 1.0,
    "milliseconds": 1.0,
    "s": 1e3,
    "sec": 1e3,
    "secs": 1e3,
    "second": 1e3,
    "seconds": 1e3,
    "us": 1e-3,
    "µs": 1e-3,
    "microsecond": 1e-3,
    "microseconds": 1e-3,
    "ns": 1e-6,
}


def message_duration_ms(message: str) -> float | None:
    """The first duration written in a log message (`took 523ms`, `after 5 s`), in ms; None without one.

    Templates mask numbers, so without this a latency that only appears in a message body would be invisible.
    """
    m = _DURATION.search(message[:512])
    if m is None:
        return None
    return float(m.group(1)) * _UNIT_MS[m.group(2).lower()]


_LATENCY_NAME = re.compile(r"(duration|latency|elapsed|response_?time|took)", re.I)


_SECONDS_NAME = re.compile(r"(\.duration$|_s$|_sec$|_secs$|seconds$)", re.I)


_MILLIS_NAME = re.compile(r"(ms$|millis\w*$)", re.I)


_MICROS_NAME = re.compile(r"(_us$|micros\w*$)", re.I)


def attribute_latency_ms(fields: Mapping[str, object]) -> float | None:
    """A latency carried as a numeric attribute (`duration_ms`, `http.server.request.duration` in seconds,
    `latency`), in ms by its name's unit (unknown units are taken as they are); None without one."""
    for key, value in fields.items():
        if not key.startswith("unmapped.") or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        name = key[len("unmapped.") :]
        if not _LATENCY_NAME.search(name):
            continue
        if _MILLIS_NAME.search(name):
            return float(value)
        if _MICROS_NAME.search(name):
            return float(value) / 1e3
        if _SECONDS_NAME.search(name):
            return float(value) * 1e3
        return float(value)
    return None


def url_template(path: str) -> str:
    """`/api/users/123/orders` -> `/api/users/{id}/orders` (ids must not become one class each)."""
    path = path.split("?", 1)[0]
    parts = [("{id}" if seg and _ID_SEGMENT.match(seg) else seg) for seg in path.split("/")[:8]]
    return "/".join(parts)[:120]


def ua_family(ua: str) -> str:
    return _VERSION.sub("", ua)[:80]


def subnet(ip: str) -> str:
    if ":" in ip:
        return ":".join(ip.split(":")[:3]) + "::/48"
    parts = ip.split(".")
    return ".".join(parts[:3]) + ".0/24" if len(parts) == 4 else "invalid"


def time_features(t_ms: int) -> dict[str, float]:
    dt = datetime.fromtimestamp(t_ms / 1000, tz=UTC)
    hour = dt.hour + dt.minute / 60
    dow = dt.weekday() + hour / 24
    return {
        "time.hour_sin": math.sin(2 * math.pi * hour / 24),
        "time.hour_cos": math.cos(2 * math.pi * hour / 24),
        "time.dow_sin": math.sin(2 * math.pi * dow / 7),
        "time.dow_cos": math.cos(2 * math.pi * dow / 7),
    }


Derived = dict[
    str, object
]  # a row's derived values by column name (str, number, None), context features included


def derive(row: Row, matcher: TemplateMatcher | None) -> Derived:
    """The raw value of every candidate column for one row (strings, numbers or None)."""
    f = row.fields
    v: dict[str, object] = {
        "signal": row.signal,
        "service": row.service,
        "class_uid": row.class_uid,
        "activity_id": row.activity_id,
        "severity_id": row.severity_id,
        "status_id": row.status_id,
    }
    route = f.get("http_request.route") or f.get("http_request.url.path")
    if route:
        v["url_template"] = url_template(str(route))
    ua = f.get("http_request.user_agent")
    if ua:
        v["ua_family"] = ua_family(str(ua))
    ip = f.get("src_endpoint.ip")
    if ip:
        v["src_endpoint.ip"] = str(ip)
        v["src_subnet"] = subnet(str(ip))
    user = f.get("actor.user.name")
    v["has_user"] = "yes" if user else "no"
    if user:
        v["actor.user.name"] = str(user)
    message = f.get("message")
    if isinstance(message, str) and row.signal == "logs":
        v["message_length"] = math.log1p(len(message))
        index = matcher.match(message) if matcher is not None else -1
        v["template"] = str(index) if index >= 0 else "<unseen>"
        v["template_key"] = index if index >= 0 else message[:64]
        v["_message"] = message
    took = message_duration_ms(message) if isinstance(message, str) else None
    if took is not None:
        v["message.duration_ms"] = took
    duration = f.get("duration")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        v["latency_ms"] = float(duration)
    elif took is not None:
        v["latency_ms"] = took
    else:
        attr = attribute_latency_ms(f)
        if attr is not None:
            v["latency_ms"] = attr
    if "latency_ms" in v:  # the operation whose own latency baseline this row is measured against
        # What the code did (message template, span name or RPC method) and, when the row names one, the HTTP
        # route it did it for: one access-log template covers every route, and `/` and `/cart` differ tenfold.
        what = v.get("template") or f.get("trace.span.operation") or f.get("api.operation") or row.class_uid
        v["operation_key"] = (what, v.get("url_template"), f.get("http_request.http_method"))
    code = f.get("http_response.code")
    if isinstance(code, int | float) and not isinstance(code, bool):
        v["http_response.code_class"] = float(int(code) // 100)
    v["failed"] = row.status_id == 2 or row.severity_id >= 4
    if row.signal == "metrics":
        v["series"] = f.get("metric.series")
        value = f.get("metric.value")
        v["series_value"] = float(value) if isinstance(value, int | float) else None
    for key, value in f.items():
        if key in v:
            continue
        v[key] = value
    return v
