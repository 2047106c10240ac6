"""The one place where outcomes become gRPC statuses and HTTP status codes (OTLP spec: UNAVAILABLE + RetryInfo
for overload, INVALID_ARGUMENT for unusable requests, RESOURCE_EXHAUSTED only for oversized ones)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
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


class BadEncodingError(InvalidInputError):
    """The request's compression is unsupported, corrupt or truncated."""


class TooLargeError(OtadError):
    """The request is over the size limit (after decompression); never retried."""


class UnauthenticatedError(OtadError):
    """Missing or wrong credentials."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one Export ended. `code` OK may carry a partial success (`rejected` and/or `message`)."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    rejected: int = 0
    retry_after_s: int | None = None  # with UNAVAILABLE: the RetryInfo delay and the HTTP Retry-After header

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK

    @property
    def label(self) -> str:
        """The metrics label: ok, partial, or the status code's name in lower case."""
        if self.ok:
            return "partial" if self.rejected or self.message else "ok"
        return self.code.name.lower()


_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (TooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
]

# OTLP/HTTP (opentelemetry-proto docs/specification.md, "OTLP/HTTP Response"; the Collector's
# receiver/otlpreceiver/internal/errors/errors.go): 400 is never retried, 429/502/503/504 are, with Retry-After.
# RESOURCE_EXHAUSTED only ever means "too large" here (overload is UNAVAILABLE), hence 413 rather than 429.
_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNIMPLEMENTED: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 408,
}


def outcome_of(exc: Exception) -> Outcome:
    """An error as an Outcome: otad's errors keep their message, anything else is INTERNAL (a bug)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return Outcome(code=code, message=str(exc), retry_after_s=getattr(exc, "retry_after_s", None))
    return Outcome(code=grpc.StatusCode.INTERNAL, message=f"internal error: {type(exc).__name__}")


def status_proto(outcome: Outcome) -> status_pb2.Status:
    """The `google.rpc.Status` of a failed outcome (gRPC trailer and OTLP/HTTP error body)."""
    status = status_pb2.Status(code=outcome.code.value[0], message=outcome.message)
    if outcome.retry_after_s is not None:
        status.details.add().Pack(
            error_details_pb2.RetryInfo(retry_delay=Duration(seconds=outcome.retry_after_s))
        )
    return status


def http_status(outcome: Outcome) -> int:
    return _HTTP.get(outcome.code, 500)


def to_status(exc_or_outcome: Exception | Outcome) -> grpc.Status:
    """The gRPC status a client must see for an error or a failed outcome."""
    outcome = exc_or_outcome if isinstance(exc_or_outcome, Outcome) else outcome_of(exc_or_outcome)
    return rpc_status.to_status(status_proto(outcome))


# Refusals made before the export handler runs, by reason: the gRPC code and the HTTP status, chosen here only.
# The reason is also the `otad_receiver_refused_requests` label for those in COUNTED_REFUSALS (auth failures and
# overload have their own counters; an unknown path or method is a client bug, counted in otad_receiver_requests).
REFUSALS: dict[str, tuple[grpc.StatusCode, int]] = {
    "undecodable": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "bad_encoding": (grpc.StatusCode.INVALID_ARGUMENT, 400),  # corrupt gzip/deflate data
    "unsupported_encoding": (
        grpc.StatusCode.INVALID_ARGUMENT,
        415,
    ),  # a Content-Encoding other than gzip/none
    "unsupported_media_type": (grpc.StatusCode.INVALID_ARGUMENT, 415),
    "too_large": (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    "read_timeout": (grpc.StatusCode.DEADLINE_EXCEEDED, 408),
    "client_disconnected": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "unknown_path": (grpc.StatusCode.NOT_FOUND, 404),
    "method_not_allowed": (grpc.StatusCode.UNIMPLEMENTED, 405),
    "unauthenticated": (grpc.StatusCode.UNAUTHENTICATED, 401),
    "overloaded": (grpc.StatusCode.UNAVAILABLE, 503),
}
COUNTED_REFUSALS = frozenset(
    {
        "undecodable",
        "bad_encoding",
        "unsupported_encoding",
        "unsupported_media_type",
        "too_large",
        "read_timeout",
    }
)


def refusal(reason: str, message: str, retry_after_s: int | None = None) -> Outcome:
    """The outcome of a refusal made before the export handler (REFUSALS)."""
    return Outcome(code=REFUSALS[reason][0], message=message, retry_after_s=retry_after_s)


def refusal_http_status(reason: str) -> int:
    return REFUSALS[reason][1]
