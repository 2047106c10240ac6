"""Map to rows, logs: one OTLP LogRecord -> one OCSF row, its class chosen from the record's content."""

from __future__ import annotations

import json
import re
from typing import TypedDict

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from model.schema import (
    API_ACTIVITY,
    APPLICATION_ERROR,
    APPLICATION_LOG,
    AUTHENTICATION,
    HTTP_ACTIVITY,
    Row,
    Value,
    content_uid,
)
from receiver.events import EVENT_NAME
from receiver.rows.access import access_line
from receiver.rows.bounds import MARKER
from receiver.rows.common import (
    AUTH,
    ERROR,
    HTTP,
    RPC,
    ResourceContext,
    any_value,
    api_activity,
    column_value,
    compact_json,
    flatten,
    hex_id,
    http_activity,
    map_attributes,
    severity_from_number,
    severity_number,
    to_int,
)
from receiver.rows.levels import level_in_text

JSON_BODY_LIMIT = 64 * 1024  # larger string bodies stay plain text
_TEXT_SCAN = 2048  # only the start of a message is scanned for auth words
_BODY_RANK = 100  # body keys lose to record attributes of the same meaning
_OCSF_TIME_MAX = (1 << 64) // 1_000_000  # an OCSF `time` (ms) past this is no uint64 time_unix_nano

_AUTH_WORDS = re.compile(
    r"\b(?:log(?:ged)?[ _-]?(?:in|on|out|off)s?(?![a-z])|sign(?:ed)?[ _-]?(?:in|on|out|off)(?![a-z])"
    r"|authenticat|password|passwd|credential)",
    re.IGNORECASE,
)
_LOGOFF_WORDS = re.compile(r"\b(?:log(?:ged)?[ _-]?(?:out|off)|sign(?:ed)?[ _-]?(?:out|off))", re.IGNORECASE)
_AUTH_FAILURE_WORDS = re.compile(
    r"\b(?:fail|invalid|denied|incorrect|wrong|unauthori[sz]ed|reject|locked|expired|bad password)",
    re.IGNORECASE,
)
_AUTH_SUCCESS_WORDS = re.compile(
    r"\b(?:success|succeeded|granted|accepted|logged in|authenticated)", re.IGNORECASE
)
_OUTCOME_KEYS = ("auth.result", "auth.outcome", "auth.status", "event.outcome", "outcome", "login.result")
_OUTCOME_FAILURE = frozenset({"failure", "failed", "fail", "denied", "false", "error", "rejected", "deny"})
_OUTCOME_SUCCESS = frozenset({"success", "succeeded", "ok", "true", "allowed", "allow", "granted"})
# OCSF-shaped bodies: ids taken into the Row itself, captions derivable from them.
_OCSF_TAKEN = frozenset(
    {
        "class_uid",
        "activity_id",
        "severity_id",
        "status_id",
        "type_uid",
        "category_uid",
        "class_name",
        "category_name",
        "activity_name",
        "type_name",
        "severity",
        "status",
        "time",
        "message",
    }
)


_LOGFMT_PAIR = re.compile(r'([A-Za-z_][\w.\-/@]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?=\s|$)')
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def logfmt(line: str) -> dict[str, object] | None:
    """A logfmt line (`time=… level=info msg="…" status=200`, Go's slog text handler, Heroku) as a dict, like
    a JSON object body; None unless the whole line is at least two key=value pairs. Numbers become numbers."""
    out: dict[str, object] = {}
    text, pos = line.strip(), 0
    while pos < len(text):
        # pair after pair from the start: the first word that is not one ends it (a message, not logfmt)
        m = _LOGFMT_PAIR.match(text, pos)
        if m is None:
            return None
        key, value = m.group(1), m.group(2)
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        if _NUMBER.fullmatch(value):
            out[key] = float(value) if any(c in value for c in ".eE") else int(value)
        else:
            out[key] = value
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out if len(out) >= 2 else None


def parse_body(record: LogRecord) -> tuple[object, str | None, dict | None]:
    """(body as a plain value, message text, structured object when the body is a JSON object or kvlist)."""
    if not record.HasField("body"):
        return None, None, None
    raw = any_value(record.body)
    if isinstance(raw, str):
        obj = None
        if len(raw) <= JSON_BODY_LIMIT and raw.lstrip()[:1] == "{":
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                obj = None
        elif len(raw) <= JSON_BODY_LIMIT and "=" in raw:
            obj = logfmt(raw)
        return raw, raw, obj if isinstance(obj, dict) else None
    if isinstance(raw, dict):
        return raw, None, raw
    if raw is None:
        return None, None, None
    return raw, str(column_value(raw)), None


class _OcsfTaken(TypedDict):
    """What an OCSF-shaped body gives the Row itself (None: absent or not an int64 / a string)."""

    class_uid: int | None
    activity_id: int | None
    severity_id: int | None
    status_id: int | None
    time: int | None
    message: str | None


def _apply_ocsf(obj: dict, fields: dict[str, Value]) -> _OcsfTaken:
    """Take the ids, message and time of an OCSF-shaped body; flatten the rest into dot-path columns."""
    message = obj.get("message")
    taken: _OcsfTaken = {
        "class_uid": to_int(obj.get("class_uid")),
        "activity_id": to_int(obj.get("activity_id")),
        "severity_id": to_int(obj.get("severity_id")),
        "status_id": to_int(obj.get("status_id")),
        "time": to_int(obj.get("time")),
        "message": message if isinstance(message, str) else None,
    }
    rest = {k: v for k, v in obj.items() if k not in _OCSF_TAKEN}
    for path, value in flatten(rest).items():
        column = column_value(value)
        if column is not None and path not in fields and path != MARKER:
            fields[path] = float(column) if path == "duration" and isinstance(column, int) else column
    return taken


def _apply_plain(
    obj: dict, fields: dict[str, Value], ranks: dict[str, int], want_level: bool
) -> tuple[int, str | None, str | None]:
    """A plain JSON object body: keys are treated like attributes. Returns (hints, message, level)."""
    message = level = None
    rest = dict(obj)
    for key in ("message", "msg"):
        if isinstance(rest.get(key), str):
            message = rest.pop(key)
            break
    if want_level:
        for key in ("level", "severity"):
            if isinstance(rest.get(key), str):
                level = rest.pop(key)
                break
    return map_attributes(flatten(rest), fields, ranks, offset=_BODY_RANK), message, level


def _auth_outcome(attrs: dict[str, object], text: str) -> int:
    """2 failure, 1 success, 0 unknown, from outcome attributes or else the words of the message."""
    for key in _OUTCOME_KEYS:
        value = attrs.get(key)
        if value is not None:
            word = str(value).strip().lower()
            if word in _OUTCOME_FAILURE:
                return 2
            if word in _OUTCOME_SUCCESS:
                return 1
    if _AUTH_FAILURE_WORDS.search(text):
        return 2
    if _AUTH_SUCCESS_WORDS.search(text):
        return 1
    return 0


def _classify(hints: int, event_name: str, text: str, otel_severity: int) -> int:
    """The class rules of docs/mapping.md, in order."""
    if event_name and _AUTH_WORDS.search(event_name):
        return AUTHENTICATION
    if hints & HTTP:
        return HTTP_ACTIVITY
    if hints & AUTH or _AUTH_WORDS.search(text):
        return AUTHENTICATION
    if hints & RPC:
        return API_ACTIVITY
    if otel_severity >= 17 or hints & ERROR:
        return APPLICATION_ERROR
    return APPLICATION_LOG


def _activity_status(
    class_uid: int,
    fields: dict[str, Value],
    attrs: dict[str, object],
    words: str,
    otel_severity: int,
    code: object,
) -> tuple[int, int]:
    """(activity_id, status_id) of the chosen class: status 2 failure, 1 success, 0 unknown (docs/mapping.md)."""
    activity_id, failure, success = 0, otel_severity >= 17, False
    if isinstance(code, int):
        failure, success = failure or code >= 400, code < 400
    if class_uid == HTTP_ACTIVITY:
        activity_id = http_activity(fields.get("http_request.http_method"))
    elif class_uid == AUTHENTICATION:
        activity_id = 2 if _LOGOFF_WORDS.search(words) else 1 if _AUTH_WORDS.search(words) else 0
        outcome = _auth_outcome(attrs, words)
        failure, success = failure or outcome == 2, success or outcome == 1
    elif class_uid == API_ACTIVITY:
        activity_id = api_activity(fields.get("http_request.http_method"), fields.get("api.operation"))
    elif class_uid == APPLICATION_ERROR:
        activity_id = 1
    return activity_id, 2 if failure else 1 if success else 0


def map_log_record(
    record: LogRecord, ctx: ResourceContext, scope_name: str, received_unix_nano: int
) -> Row | None:
    """One log record as a row; None for otad's own anomaly events. Raises RejectError for bad ids.

    long: one pass over the record in the order of the rules of docs/mapping.md; split, the parts would pass a dozen locals.
    """
    event_name = record.event_name
    if event_name == EVENT_NAME:
        return None
    trace_id = hex_id(record.trace_id, "trace_id", 16)
    span_id = hex_id(record.span_id, "span_id", 8)
    attrs = {kv.key: any_value(kv.value) for kv in record.attributes}
    attr_event = attrs.get("event.name")
    if attr_event == EVENT_NAME:
        return None
    raw_body, message, obj = parse_body(record)

    fields: dict[str, Value] = {}
    ranks: dict[str, int] = {}
    if event_name:
        fields["metadata.event_code"] = event_name
        ranks["metadata.event_code"] = 0
    hints = map_attributes(attrs, fields, ranks) if attrs else 0
    severity_text = record.severity_text
    ocsf = None
    if obj is not None:
        if "class_uid" in obj:
            ocsf = _apply_ocsf(obj, fields)
            body_message = ocsf["message"]
        else:
            body_hints, body_message, level = _apply_plain(
                obj, fields, ranks, want_level=not (severity_text or record.severity_number)
            )
            hints |= body_hints
            severity_text = severity_text or level or ""
        if body_message is not None:
            message = body_message
        elif message is None:
            message = compact_json(obj)
    if message is not None:
        fields["message"] = message
        if obj is None and not (severity_text or record.severity_number):
            # an unparsed line (a filelog receiver without a severity parser): the level its header writes
            severity_text = level_in_text(message)
        if obj is None and (access := access_line(message)) is not None:
            hints |= map_attributes(access, fields, ranks, offset=_BODY_RANK)  # attributes sent win
    if severity_text:
        fields["severity_text"] = severity_text
    if scope_name:
        fields["scope.name"] = scope_name
    if ctx.hostname is not None:
        fields["device.hostname"] = ctx.hostname
    code = fields.get("http_response.code")
    if isinstance(code, int):
        fields["status_code"] = str(code)

    otel_severity = severity_number(record.severity_number, severity_text)
    names = event_name or (attr_event if isinstance(attr_event, str) else "")
    text = (message or "")[:_TEXT_SCAN]
    class_uid = _classify(hints, names, text, otel_severity)
    activity_id, status_id = _activity_status(
        class_uid, fields, attrs, f"{names} {text}", otel_severity, code
    )
    severity_id = severity_from_number(otel_severity)

    time_unix_nano = record.time_unix_nano
    if ocsf is not None:
        class_uid = ocsf["class_uid"] or class_uid
        activity_id = ocsf["activity_id"] if ocsf["activity_id"] is not None else activity_id
        severity_id = ocsf["severity_id"] if ocsf["severity_id"] is not None else severity_id
        status_id = ocsf["status_id"] if ocsf["status_id"] is not None else status_id
        if not time_unix_nano and ocsf["time"] and 0 < ocsf["time"] < _OCSF_TIME_MAX:
            time_unix_nano = ocsf["time"] * 1_000_000
    time_unix_nano = time_unix_nano or record.observed_time_unix_nano or received_unix_nano

    uid = attrs.get("log.record.uid")
    if not isinstance(uid, str | int) or isinstance(uid, bool) or uid == "":
        uid = content_uid(
            ctx.service,
            record.time_unix_nano or record.observed_time_unix_nano,
            record.severity_number,
            record.severity_text,
            raw_body,
            attrs,
            trace_id,
            span_id,
        )
    return Row(
        uid=str(uid),
        signal="logs",
        time_unix_nano=time_unix_nano,
        service=ctx.service,
        class_uid=class_uid,
        activity_id=activity_id,
        severity_id=severity_id,
        status_id=status_id,
        fields=fields,
        trace_id=trace_id,
        span_id=span_id,
        resource=dict(ctx.resource),
    )
