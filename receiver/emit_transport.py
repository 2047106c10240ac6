"""Emit stage, the wire: one OTLP logs Export over gRPC or OTLP/HTTP (protobuf), its outcome sorted for retry.

`receiver/emit.py` owns the buffer, the worker and the retry loop; a transport makes one attempt and says whether
it may be retried and after what delay the server asked for. The rules are the OTLP specification's
(opentelemetry-proto docs/specification.md, "Failures" for OTLP/gRPC and OTLP/HTTP): gRPC retries the codes in
`RETRYABLE_CODES` (RESOURCE_EXHAUSTED only with RetryInfo) and honours `google.rpc.RetryInfo`; HTTP retries 429,
502, 503 and 504 and honours `Retry-After`; anything else is not retried.
"""

from __future__ import annotations

import gzip
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import urlsplit

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub

__all__ = ["RETRYABLE_CODES", "Failure", "GrpcLogsTransport", "HttpLogsTransport", "Transport", "retry_delay"]

# OTLP/gRPC retryable codes; RESOURCE_EXHAUSTED only when the server sent RetryInfo.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt: `code` names it (a gRPC code name or `HTTP 503`), `delay` is the server's ask."""

    code: str
    retryable: bool
    delay: float | None = None
    details: str = ""


class Transport(Protocol):
    def send(
        self, request: ExportLogsServiceRequest, timeout: float
    ) -> ExportLogsServiceResponse | Failure: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


def retry_delay(error: grpc.RpcError) -> float | None:
    """The server's `google.rpc.RetryInfo` delay in seconds, from `grpc-status-details-bin`; None if absent."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    key: str
    value: bytes  # grpc-stubs give a _Metadatum class; at runtime each is a (key, value) namedtuple
    for key, value in trailing or ():  # type: ignore[misc]
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            # types-protobuf: Message.DESCRIPTOR may be the upb Descriptor, which Any.Is does not accept (it does)
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):  # type: ignore[arg-type]
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return max(0.0, info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


class GrpcLogsTransport:
    """OTLP/gRPC: one channel (gzip unless told otherwise), reconnecting at the pace of our own backoff."""

    def __init__(
        self,
        target: str,
        *,
        insecure: bool,
        credentials: grpc.ChannelCredentials | None,
        headers: dict[str, str],
        compress: bool = True,
    ) -> None:
        self._target = target
        self._credentials = None if insecure else (credentials or grpc.ssl_channel_credentials())
        self._compression = grpc.Compression.Gzip if compress else grpc.Compression.NoCompression
        self._metadata = tuple((k.lower(), v) for k, v in headers.items())
        self._lock = threading.Lock()
        self._closed = False
        self._call: grpc.Future | None = None
        self._channel, self._stub = self._open()

    def _open(self) -> tuple[grpc.Channel, LogsServiceStub]:
        # A subchannel of its own: a reopened channel must not inherit the old one's reconnect backoff.
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        if self._credentials is None:
            channel = grpc.insecure_channel(self._target, options=options)
        else:
            channel = grpc.secure_channel(self._target, self._credentials, options=options)
        return channel, LogsServiceStub(channel)

    def send(self, request: ExportLogsServiceRequest, timeout: float) -> ExportLogsServiceResponse | Failure:
        self._call = call = self._stub.Export.future(
            request, timeout=timeout, metadata=self._metadata, compression=self._compression
        )
        try:
            return call.result()
        except grpc.FutureCancelledError:
            return Failure("CANCELLED", False, None, "cancelled by shutdown")
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
            delay = retry_delay(error)
            if code == grpc.StatusCode.UNAVAILABLE and delay is None:
                # A channel that failed to connect fails its calls at once until gRPC's own reconnect timer
                # fires (seconds): the next attempt, at our backoff, gets a fresh channel that connects now. A
                # server that answered with RetryInfo is up and talking: its connection is kept.
                self._reopen()
            retryable = code in RETRYABLE_CODES or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None
            )
            details = error.details() if hasattr(error, "details") else ""
            return Failure(code.name, retryable, delay, details or "")
        finally:
            self._call = None

    def _reopen(self) -> None:
        with self._lock:
            if self._closed:  # a call that outlived shutdown must not leave a new channel open
                return
            old = self._channel
            self._channel, self._stub = self._open()
        old.close()

    def cancel(self) -> None:
        call = self._call
        if call is not None:
            call.cancel()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._channel.close()


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3); None if absent or bad."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _status_message(body: bytes, content_type: str) -> str:
    """The `google.rpc.Status` message of an OTLP/HTTP error body (protobuf), else the body's first line."""
    if "protobuf" in content_type:
        try:
            return status_pb2.Status.FromString(body).message
        except DecodeError:
            pass
    return body[:200].decode("utf-8", "replace").split("\n", 1)[0]


class HttpLogsTransport:
    """OTLP/HTTP with binary protobuf: POST to the logs URL, gzip unless told otherwise, one connection kept
    alive (stdlib only)."""

    def __init__(
        self, url: str, *, headers: dict[str, str], ssl_context: ssl.SSLContext | None, compress: bool = True
    ) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "localhost", parts.port or (443 if self._https else 80)
        self._path = parts.path or "/"
        self._context = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._headers = {**headers, "Content-Type": "application/x-protobuf", "User-Agent": "otad"}
        self._gzip = compress
        if compress:
            self._headers["Content-Encoding"] = "gzip"
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        with self._lock:
            if self._conn is None:
                if self._https:
                    self._conn = http.client.HTTPSConnection(
                        self._host, self._port, timeout=timeout, context=self._context
                    )
                else:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
            return self._conn

    def send(self, request: ExportLogsServiceRequest, timeout: float) -> ExportLogsServiceResponse | Failure:
        body = request.SerializeToString()
        if self._gzip:
            body = gzip.compress(body, compresslevel=5)
        conn = self._connection(timeout)
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            response = conn.getresponse()
            data = response.read(_MAX_ERROR_BODY if response.status != 200 else None)
        except (OSError, http.client.HTTPException) as exc:
            self.cancel()  # a fresh connection next time
            kind = "DEADLINE_EXCEEDED" if isinstance(exc, socket.timeout | TimeoutError) else "UNAVAILABLE"
            return Failure(kind, True, None, f"{type(exc).__name__}: {exc}")
        if response.will_close:
            self.cancel()
        if response.status == 200:
            try:
                return ExportLogsServiceResponse.FromString(data)
            except DecodeError:
                return ExportLogsServiceResponse()  # the data was accepted; an unreadable body is no error
        delay = _retry_after(response.getheader("Retry-After"))
        message = _status_message(data, response.getheader("Content-Type") or "")
        return Failure(f"HTTP {response.status}", response.status in RETRYABLE_HTTP, delay, message)

    def cancel(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread
                except OSError:
                    pass
            conn.close()

    def close(self) -> None:
        self.cancel()
