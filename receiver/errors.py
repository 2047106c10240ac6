"""The one place where outcomes become gRPC statuses (OTLP spec: UNAVAILABLE + RetryInfo for overload,
INVALID_ARGUMENT for unusable requests, RESOURCE_EXHAUSTED only for oversized ones)."""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class OtadError(Exception):
    """Base of otad's errors."""


class InvalidInputError(OtadError):
    """The request can never be processed (never retried)."""


class UnavailableError(OtadError):
    """Temporarily unable to accept data; the client retries after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def to_status(exc: Exception) -> grpc.Status:
    """Map an error to the status the client must see."""
    if isinstance(exc, UnavailableError):
        info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=exc.retry_after_s))
        detail = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc))
        detail.details.add().Pack(info)
        return rpc_status.to_status(detail)
    if isinstance(exc, InvalidInputError):
        return rpc_status.to_status(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc)))
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error: {type(exc).__name__}"))
