"""Fast OTLP/JSON decoding into light messages: plain Python objects with the protobuf read API the row mapper uses.

`otlpjson.parse` goes through protobuf's reflective `json_format.ParseDict`, which costs ~300 µs per record; this
module decodes the same dict in a few µs. For every OTLP message type (taken from the protobuf descriptors, so the
field names, types and oneofs are the generated ones) it builds a light class whose instances hold the set fields in
their `__dict__` and fall back to the class's protobuf defaults, plus `HasField` and `WhichOneof`. The row mapper
(receiver/rows*.py) reads a light message exactly as it reads the protobuf one, so one mapping serves both paths.

The light path accepts only what it can decode exactly as `otlpjson.parse` would (same values, same types: doubles
as float, 64-bit integers from numbers or decimal strings, hex ids, enums as integers or names). Anything else - a
null, a field of the wrong type, a proto (snake_case) field name, a value out of range, a non-hex id, a non-finite
number, conflicting oneof members - raises `Fallback`, and the caller re-parses the line with `otlpjson.parse`,
which then gives the canonical result or error. The light path never changes the dict it reads.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["Fallback", "LightMessage", "decode_request"]

_ID_KEYS = frozenset(
    {"traceId", "spanId", "parentSpanId"}
)  # hex in OTLP/JSON (see receiver/otlp/otlpjson.py)
# json_format rejects strings that match it (private, so not in the stubs)
_SURROGATE = json_format._UNPAIRED_SURROGATE_PATTERN  # type: ignore[attr-defined]
_MAX_DEPTH = 64  # json_format allows 100 nested messages; deeper input takes the reflective path
_CASE = "_oneof_"  # attribute prefix: the set member of a oneof (None when unset)
_SHARED_MAX = 1 << 16  # shared attribute KeyValues kept
_KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"
_ANY_VALUE = "opentelemetry.proto.common.v1.AnyValue"

F = FieldDescriptor
_INT_RANGES = {
    F.TYPE_INT64: (-(1 << 63), 1 << 63),
    F.TYPE_SFIXED64: (-(1 << 63), 1 << 63),
    F.TYPE_SINT64: (-(1 << 63), 1 << 63),
    F.TYPE_UINT64: (0, 1 << 64),
    F.TYPE_FIXED64: (0, 1 << 64),
    F.TYPE_INT32: (-(1 << 31), 1 << 31),
    F.TYPE_SFIXED32: (-(1 << 31), 1 << 31),
    F.TYPE_SINT32: (-(1 << 31), 1 << 31),
    F.TYPE_UINT32: (0, 1 << 32),
    F.TYPE_FIXED32: (0, 1 << 32),
}


class Fallback(Exception):  # noqa: N818 - a signal to take the reflective path, not an error
    """The light path cannot decode this input exactly as json_format would; parse it with `otlpjson.parse`."""


class LightMessage:
    """Base of the light classes: set fields are instance attributes, unset ones read the class's protobuf default."""

    DESCRIPTOR: Descriptor

    def HasField(self, name: str) -> bool:  # noqa: N802 - the protobuf API
        return name in self.__dict__ or getattr(self, _CASE + name, None) is not None

    def WhichOneof(self, group: str) -> str | None:  # noqa: N802 - the protobuf API
        return getattr(self, _CASE + group)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith(_CASE))
        return f"{type(self).__name__}({shown})"


Converter = Callable[[object, int], object]

if (
    TYPE_CHECKING
):  # what `_key_values` sets on the light KeyValue and AnyValue classes built from the descriptors

    class _LightAnyValue(LightMessage):
        _oneof_value: str | None

    class _LightKeyValue(LightMessage):
        key: str
        value: LightMessage


def _string(value: object, depth: int) -> str:
    if type(value) is str and (value.isascii() or not _SURROGATE.search(value)):
        return value
    raise Fallback


def _bool(value: object, depth: int) -> bool:
    if type(value) is bool:
        return value
    raise Fallback


def _double(value: object, depth: int) -> float:
    if type(value) is float:
        if value - value == 0.0:  # finite; json_format rejects bare NaN/Infinity
            return value
    elif type(value) is int:
        try:
            return float(value)
        except OverflowError:
            pass
    raise Fallback


def _integer(low: int, high: int) -> Converter:
    def convert(value: object, depth: int) -> int:
        if type(value) is str and value.isdigit() and value.isascii():
            value = int(value)
        if type(value) is int and low <= value < high:
            return value
        raise Fallback

    return convert


def _enum(field: FieldDescriptor) -> Converter:
    enum_type = field.enum_type
    assert enum_type is not None  # an enum field
    if enum_type.is_closed:
        raise TypeError(f"closed enum {field.full_name} is not supported")
    numbers = {name: v.number for name, v in enum_type.values_by_name.items()}

    def convert(value: object, depth: int) -> int:
        if type(value) is int and -(1 << 31) <= value < (1 << 31):
            return value
        if type(value) is str and value in numbers:
            return numbers[value]
        raise Fallback

    return convert


def _hex_id(value: object, depth: int) -> bytes:
    if type(value) is str:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise Fallback


def _base64(value: object, depth: int) -> bytes:
    if type(value) is str:
        try:  # exactly json_format's decoding
            encoded = value.encode("utf-8")
            return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))
        except ValueError:
            pass
    raise Fallback


def _repeated(convert: Converter) -> Converter:
    def repeated(value: object, depth: int) -> list:
        if type(value) is not list:
            raise Fallback
        return [convert(item, depth) for item in value]

    return repeated


def _ids_are_hex(node: object) -> bool:
    """Whether otlpjson's id rewriting (every traceId/spanId/parentSpanId string, at any depth) would succeed."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                try:
                    bytes.fromhex(value)
                except ValueError:
                    return False
            elif not _ids_are_hex(value):
                return False
    elif isinstance(node, list):
        return all(_ids_are_hex(item) for item in node)
    return True


class _Schema:
    """Light classes and converters for every message reachable from the three export requests."""

    def __init__(self) -> None:
        self.classes: dict[str, type[LightMessage]] = {}
        self.converters: dict[str, Converter] = {}
        self._tables: dict[str, tuple[dict, frozenset]] = {}

    def converter(self, descriptor: Descriptor) -> Converter:
        name = descriptor.full_name
        if name not in self.converters:
            cls = type(descriptor.name, (LightMessage,), {"DESCRIPTOR": descriptor})
            cls.__module__ = __name__
            self.classes[name] = cls
            table: dict[str, tuple[str, Converter, str | None]] = {}
            aliases = frozenset(f.name for f in descriptor.fields if f.name != f.json_name)
            self.converters[name] = self._message(cls, table, aliases)
            for field in descriptor.fields:  # after registering: message types may be recursive
                convert = self._field(field)
                oneof = field.containing_oneof
                table[field.json_name] = (
                    field.name,
                    convert,
                    _CASE + oneof.name if oneof is not None else None,
                )
            for field in descriptor.fields:
                setattr(cls, field.name, self._default(field))
            for oneof in descriptor.oneofs:
                setattr(cls, _CASE + oneof.name, None)
        return self.converters[name]

    def _field(self, field: FieldDescriptor) -> Converter:
        if (
            field.is_repeated
            and field.message_type is not None
            and field.message_type.full_name == _KEY_VALUE
        ):
            return self._key_values(self.converter(field.message_type))
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry or field.message_type.full_name.startswith(
                "google.protobuf."
            ):
                raise TypeError(f"{field.full_name}: maps and well-known types are not supported")
            convert = self.converter(field.message_type)
        elif field.type == F.TYPE_STRING:
            convert = _string
        elif field.type == F.TYPE_BYTES:
            convert = _hex_id if field.json_name in _ID_KEYS else _base64
        elif field.type == F.TYPE_BOOL:
            convert = _bool
        elif field.type == F.TYPE_DOUBLE:
            convert = _double
        elif field.type == F.TYPE_ENUM:
            convert = _enum(field)
        elif field.type in _INT_RANGES:
            convert = _integer(*_INT_RANGES[field.type])
        else:  # float: json_format rounds to 32 bits; not used by OTLP
            raise TypeError(f"{field.full_name}: field type {field.type} is not supported")
        return _repeated(convert) if field.is_repeated else convert

    def _default(self, field: FieldDescriptor) -> object:
        if field.is_repeated:
            return ()
        if field.message_type is not None:
            return self.classes[field.message_type.full_name]()  # shared and empty: the mapper only reads
        return field.default_value

    def _key_values(self, convert_item: Converter) -> Converter:
        """Repeated KeyValue (attributes), with the common {"key": k, "value": {"<scalar>Value": v}} shape inline.

        Attributes repeat a lot (resource attributes on every line, a few values per key), so a KeyValue whose key
        and value are strings is built once and shared (light messages are read-only).
        """
        key_value = cast("type[_LightKeyValue]", self.classes[_KEY_VALUE])
        any_value = cast("type[_LightAnyValue]", self.classes[_ANY_VALUE])
        integer = _integer(*_INT_RANGES[F.TYPE_INT64])
        scalars = {
            "stringValue": ("string_value", _string),
            "intValue": ("int_value", integer),
            "doubleValue": ("double_value", _double),
            "boolValue": ("bool_value", _bool),
        }
        shared: dict[tuple[str, str, str], LightMessage] = {}

        def build(key: str, kind: str, raw: object, depth: int) -> LightMessage | None:
            scalar = scalars.get(kind)
            if scalar is None or not key.isascii():
                return None
            name, convert_scalar = scalar
            value = any_value()
            value._oneof_value = name
            setattr(value, name, convert_scalar(raw, depth))
            kv = key_value()
            kv.key = key
            kv.value = value
            return kv

        def convert(value: object, depth: int) -> list:
            if type(value) is not list:
                raise Fallback
            items = []
            for item in value:
                kv = None
                if type(item) is dict and len(item) == 2:
                    key, inner = item.get("key"), item.get("value")
                    if type(key) is str and type(inner) is dict and len(inner) == 1:
                        ((kind, raw),) = inner.items()
                        if type(raw) is str:  # only str keys: 1 == 1.0 == True, 0.0 == -0.0
                            kv = shared.get((key, kind, raw))
                            if kv is None:
                                kv = build(key, kind, raw, depth)
                                if kv is not None:
                                    if len(shared) >= _SHARED_MAX:
                                        shared.clear()
                                    shared[key, kind, raw] = kv
                        elif raw is not None:
                            kv = build(key, kind, raw, depth)
                items.append(kv if kv is not None else convert_item(item, depth))
            return items

        return convert

    @staticmethod
    def _message(cls: type[LightMessage], table: dict, aliases: frozenset) -> Converter:
        def convert(value: object, depth: int) -> LightMessage:
            if type(value) is not dict or depth > _MAX_DEPTH:
                raise Fallback
            message = cls()
            depth += 1
            for key, item in value.items():
                spec = table.get(key)
                if (
                    spec is None
                ):  # unknown fields are ignored, as json_format(ignore_unknown_fields=True) does
                    if key in aliases or key[:1] == "[" or not _ids_are_hex({key: item}):
                        raise Fallback  # proto field names, extension syntax, ids otlpjson would reject
                    continue
                if item is None:
                    raise Fallback
                name, convert_field, case = spec
                if case is not None:
                    if getattr(message, case) is not None:
                        raise Fallback  # two members of one oneof
                    setattr(message, case, name)
                setattr(message, name, convert_field(item, depth))
            return message

        return convert


_SCHEMA = _Schema()
_REQUESTS = {
    "resourceLogs": ("logs", _SCHEMA.converter(ExportLogsServiceRequest.DESCRIPTOR)),
    "resourceSpans": ("traces", _SCHEMA.converter(ExportTraceServiceRequest.DESCRIPTOR)),
    "resourceMetrics": ("metrics", _SCHEMA.converter(ExportMetricsServiceRequest.DESCRIPTOR)),
}


def decode_request(data: dict, key: str) -> LightMessage:
    """The request under top-level `key` ("resourceLogs", ...) of an OTLP/JSON dict, as a light message.

    Raises:
        Fallback: the dict needs the reflective path (which also gives the canonical error for bad input).
    """
    request = _REQUESTS[key][1](data, 0)
    assert isinstance(request, LightMessage)  # a message converter builds one (`_Schema._message`)
    return request


def light_class(full_name: str) -> type[LightMessage]:
    """The light class of a message type, e.g. "opentelemetry.proto.trace.v1.Span" (for tests)."""
    return _SCHEMA.classes[full_name]
