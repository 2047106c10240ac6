"""OTLP/JSON codec: the Collector file-exporter format (one Export*ServiceRequest per line).

OTLP/JSON differs from protobuf's canonical JSON in two ways that matter here
(opentelemetry-proto docs/specification.md, "JSON Protobuf Encoding"): trace and span ids are
lowercase hex strings rather than base64, and enums are integers. Unknown fields are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

if TYPE_CHECKING:
    from receiver.otlp.otlpjson_fast import LightMessage

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})

SignalRequest = ExportLogsServiceRequest | ExportTraceServiceRequest | ExportMetricsServiceRequest

_TOP_KEYS: dict[str, type[SignalRequest]] = {
    "resourceLogs": ExportLogsServiceRequest,
    "resourceSpans": ExportTraceServiceRequest,
    "resourceMetrics": ExportMetricsServiceRequest,
}
Signal = Literal["logs", "traces", "metrics"]
_SIGNALS: dict[str, Signal] = {
    "resourceLogs": "logs",
    "resourceSpans": "traces",
    "resourceMetrics": "metrics",
}
_M = TypeVar("_M", bound=Message)


class OtlpJsonError(ValueError):
    """A line that is not an OTLP/JSON export request."""


def _walk_ids(node: object, convert) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = convert(value)
            else:
                _walk_ids(value, convert)
    elif isinstance(node, list):
        for item in node:
            _walk_ids(item, convert)


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _hex_to_b64(value: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(value)).decode("ascii")
    except ValueError as exc:
        raise OtlpJsonError(f"id {value[:40]!r} is not hex") from exc


def to_dict(request: Message) -> dict:
    """A request as an OTLP/JSON dict (hex ids, integer enums, camelCase keys)."""
    data = json_format.MessageToDict(request, use_integers_for_enums=True)
    _walk_ids(data, _b64_to_hex)
    return data


def to_json_line(request: Message) -> str:
    return json.dumps(to_dict(request), separators=(",", ":"))


def _top_key(data: object) -> str:
    if not isinstance(data, dict):
        raise OtlpJsonError("an OTLP/JSON request must be a JSON object")
    kinds = [k for k in _TOP_KEYS if k in data]
    if len(kinds) != 1:
        raise OtlpJsonError("expected exactly one of resourceLogs, resourceSpans, resourceMetrics")
    return kinds[0]


def from_dict(data: dict) -> SignalRequest:
    """Parse one OTLP/JSON request; the signal is told by its top-level key."""
    return parse(data, _TOP_KEYS[_top_key(data)])


def from_dict_light(data: dict) -> tuple[Signal, SignalRequest | LightMessage]:
    """(signal, request) of one OTLP/JSON request, the request as a light message when it can be one.

    A light message (receiver/otlp/otlpjson_fast.py) reads like the protobuf request `from_dict` returns and maps to the
    same rows, ~50x cheaper to build; input the light path cannot decode exactly goes through `from_dict` (which
    also raises the same errors).
    """
    from receiver.otlp.otlpjson_fast import Fallback, decode_request

    key = _top_key(data)
    try:
        return _SIGNALS[key], decode_request(data, key)
    except (Fallback, RecursionError):
        return _SIGNALS[key], parse(data, _TOP_KEYS[key])


def parse(data: dict, message_type: type[_M]) -> _M:
    """Parse OTLP/JSON into `message_type` (the OTLP/HTTP path tells the type; `{}` is an empty request).

    Raises:
        OtlpJsonError: not an object, an id that is not hex, or a field of the wrong type.
    """
    if not isinstance(data, dict):
        raise OtlpJsonError("an OTLP/JSON request must be a JSON object")
    _walk_ids(data, _hex_to_b64)
    message = message_type()
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error) as exc:
        raise OtlpJsonError(str(exc)) from exc
    return message


def read_file(path: str | Path) -> Iterator[tuple[int, SignalRequest]]:
    """Yield (line number, request) for every line of a file-exporter file.

    Raises:
        OtlpJsonError: naming the file and line of the first bad line (nothing is skipped silently).
    """
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield lineno, from_dict(json.loads(line))
            except (json.JSONDecodeError, OtlpJsonError) as exc:
                raise OtlpJsonError(f"{path}:{lineno}: {exc}") from exc


def read_file_light(path: str | Path) -> Iterator[tuple[int, Signal, SignalRequest | LightMessage]]:
    """Like `read_file`, yielding (line number, signal, request) with light requests (see `from_dict_light`).

    Same lines, same errors as `read_file`; the requests map (receiver/rows/mapper.py) to the same rows, ~10x faster.
    """
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield lineno, *from_dict_light(json.loads(line))
            except (json.JSONDecodeError, OtlpJsonError) as exc:
                raise OtlpJsonError(f"{path}:{lineno}: {exc}") from exc
