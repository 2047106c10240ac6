"""Receive: register the OTLP Export handlers with a deserializer that does not fail the call.

gRPC-Python answers INTERNAL ("Exception deserializing request!") when the request bytes do not parse; the
OTLP spec wants INVALID_ARGUMENT for a request that can never be processed (not retried). So the handler
receives an `Undecodable` marker instead, and `_Export.handle` turns it into INVALID_ARGUMENT.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError


class Undecodable:
    """Stands in for a request whose bytes are not a valid protobuf message of the expected type."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def lenient(cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError as exc:  # includes invalid UTF-8 in string fields and nesting past upb's limit
            return Undecodable(f"cannot decode the request as {cls.DESCRIPTOR.name} ({len(data)} bytes): {exc}")
    return parse


def add_export_servicer(server: grpc.Server, service_name: str, servicer, request_cls, response_cls) -> None:
    """Register `servicer.Export` as `<service_name>/Export` with the lenient deserializer."""
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.Export, request_deserializer=lenient(request_cls),
        response_serializer=response_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, {"Export": handler}),))
