"""Receive: the OTLP/HTTP server (POST /v1/logs, /v1/traces, /v1/metrics; protobuf or JSON; gzip; 64 MiB).

uvicorn (h11) serves HTTP/1.1 with keep-alive, TLS and bounded request reading; this module is a plain ASGI app,
so no web framework sits between the socket and the OTLP rules (opentelemetry-proto docs/specification.md,
"OTLP/HTTP"): the body is read with a limit, decompressed with a limit, decoded, and handed to the same
`ExportHandler` as gRPC; errors.py turns the outcome into the status code and a `google.rpc.Status` body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent import futures

import uvicorn
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from receiver.metrics import Metrics
from receiver.otlp import otlpjson
from receiver.otlp.auth import BearerAuth, failure_message
from receiver.otlp.errors import (
    COUNTED_REFUSALS,
    BadEncodingError,
    Outcome,
    TooLargeError,
    http_status,
    outcome_of,
    refusal,
    refusal_http_status,
    status_proto,
)
from receiver.otlp.handler import ExportHandler, build_response
from receiver.otlp.inflate import inflate_limited, trim_heap_soon
from receiver.otlp.signals import SIGNALS, SignalSpec
from receiver.otlp.tls import ServerTls
from receiver.ratelog import warn_limited

__all__ = ["OtlpHttpServer", "gunzip_limited"]

logger = logging.getLogger(__name__)

PATHS = {"/v1/logs": SIGNALS["logs"], "/v1/traces": SIGNALS["traces"], "/v1/metrics": SIGNALS["metrics"]}
PROTOBUF, JSON = "application/x-protobuf", "application/json"
MAX_IN_FLIGHT = 32  # requests being read or handled at once; beyond it: 503 + Retry-After (bounds memory)
READ_TIMEOUT_S = 30.0  # a body that has not fully arrived by then gets 408 (a slow client cannot hold a slot)


class _Refusal(Exception):
    """An HTTP-level answer decided before the export handler runs, by reason (errors.REFUSALS holds its status)."""

    def __init__(
        self,
        reason: str,
        message: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        retry_after_s: int | None = None,
    ):
        super().__init__(message)
        self.reason, self.headers = reason, headers
        self.status, self.outcome = refusal_http_status(reason), refusal(reason, message, retry_after_s)
        self.counted = reason in COUNTED_REFUSALS


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body (members may be concatenated), refusing to produce more than `limit` bytes.

    Raises:
        _Refusal: 413 past the limit, 400 for a body that is not gzip or is truncated.
    """
    try:
        return inflate_limited(data, limit)
    except TooLargeError as exc:
        raise _Refusal("too_large", str(exc)) from None
    except BadEncodingError as exc:
        raise _Refusal("bad_encoding", str(exc)) from None


def _too_large(limit: int, where: str) -> _Refusal:
    where = f" {where}" if where else ""
    message = f"request body is larger than {limit // (1024 * 1024)} MiB{where} (OTAD_MAX_RECV_MIB)"
    return _Refusal("too_large", message)


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


class _App:
    """The ASGI application: routing, limits, auth, decoding; the export itself runs in a worker thread."""

    def __init__(
        self,
        export: ExportHandler,
        metrics: Metrics,
        *,
        limit: int,
        retry_after_s: int,
        auth: BearerAuth | None,
        workers: int,
    ):
        self.export, self.metrics, self.limit, self.retry_after_s, self.auth = (
            export,
            metrics,
            limit,
            retry_after_s,
            auth,
        )
        self.pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otad-http")
        self.in_flight = 0
        self.max_in_flight = MAX_IN_FLIGHT
        self.read_timeout_s = READ_TIMEOUT_S
        self.api: Callable[..., Awaitable[None]] | None = None  # otad's API as JSON, set by the Service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if self.api is not None and scope["path"].startswith("/v1/otad/"):  # otad's API: receiver/api/
            return await self.api(self, scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        as_json = _media_type(headers.get("content-type", "")) == JSON
        spec = PATHS.get(scope["path"])
        signal = spec.name if spec else "unknown"
        self.in_flight += 1
        try:
            try:
                body = await asyncio.wait_for(
                    self._read_checked(scope, headers, spec, receive), self.read_timeout_s
                )
            except TimeoutError:
                raise _Refusal(
                    "read_timeout", f"request body not received within {self.read_timeout_s:g} s"
                ) from None
            gzipped = headers.get("content-encoding", "").strip().lower() == "gzip"
            loop = asyncio.get_running_loop()  # inflating and decoding 64 MiB must not stall the event loop
            assert spec is not None  # _read_checked refuses an unknown path
            status, payload, extra = await loop.run_in_executor(
                self.pool, self._handle, spec, body, gzipped, as_json
            )
        except _Refusal as refused:  # refused before the export handler, which counts everything it answers
            self.metrics.requests.labels(signal, "http", refused.outcome.label).inc()
            if refused.counted:
                self.metrics.transport_refusals.labels(signal, "http", refused.reason).inc()
            if refused.reason == "too_large":
                trim_heap_soon()  # up to the limit was read or inflated, then freed
            if refused.reason not in (
                "unauthenticated",
                "overloaded",
            ):  # counted and logged where they are decided
                warn_limited(
                    logger,
                    f"http:{refused.reason}",
                    "OTLP/HTTP %s %s refused with %d: %s",
                    scope["method"],
                    scope["path"][:100],
                    refused.status,
                    refused.outcome.message,
                )
            status, payload, extra = refused.status, _error_body(refused.outcome, as_json), refused.headers
        except Exception as exc:  # a bug: answer 500 like gRPC's INTERNAL, never a traceback
            logger.exception("OTLP/HTTP %s %s failed", scope["method"], scope["path"][:100])
            outcome = outcome_of(exc)
            self.metrics.requests.labels(signal, "http", outcome.label).inc()
            status, payload, extra = http_status(outcome), _error_body(outcome, as_json), ()
        finally:
            self.in_flight -= 1
        await _respond(send, status, payload, as_json, extra)

    async def _read_checked(self, scope, headers: dict[str, str], spec: SignalSpec | None, receive) -> bytes:
        """Everything refused before the export handler: path, method, auth, overload, type, encoding, size."""
        if spec is None:
            raise _Refusal(
                "unknown_path",
                f"unknown path {scope['path'][:100]!r}; OTLP/HTTP paths are /v1/logs, /v1/traces, /v1/metrics",
            )
        if scope["method"] != "POST":
            raise _Refusal(
                "method_not_allowed",
                f"method {scope['method']} not allowed; use POST",
                ((b"allow", b"POST"),),
            )
        if self.auth is not None:
            reason = self.auth.check(headers.get("authorization"))
            if reason is not None:
                self.metrics.auth_failures.labels("http", reason).inc()
                raise _Refusal(
                    "unauthenticated", failure_message(reason), ((b"www-authenticate", b"Bearer"),)
                )
        if self.in_flight > self.max_in_flight:
            self.metrics.refused.labels(spec.name, "too_many_requests", "http").inc()
            raise self._overloaded(f"otad has {self.max_in_flight} OTLP/HTTP requests in flight; retry later")
        media = _media_type(headers.get("content-type", ""))
        if media not in (PROTOBUF, JSON):
            raise _Refusal(
                "unsupported_media_type", f"unsupported content type {media[:60]!r}; use {PROTOBUF} or {JSON}"
            )
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", ""):
            raise _Refusal(
                "unsupported_encoding", f"unsupported content encoding {encoding[:30]!r}; use gzip or none"
            )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            raise _too_large(self.limit, "(Content-Length)")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refusal("client_disconnected", "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                chunks.clear()
                raise _too_large(self.limit, "")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    def _overloaded(self, message: str) -> _Refusal:
        return _Refusal(
            "overloaded",
            message,
            ((b"retry-after", str(self.retry_after_s).encode()),),
            retry_after_s=self.retry_after_s,
        )

    def _handle(
        self, spec: SignalSpec, body: bytes, gzipped: bool, as_json: bool
    ) -> tuple[int, bytes, tuple]:
        """Inflate, decode, export, encode the answer (in a worker thread): (status, body, extra headers)."""
        if gzipped:
            body = gunzip_limited(body, self.limit)
        try:
            request = _decode(spec, body, as_json)
        except ValueError as exc:
            raise _Refusal("undecodable", f"cannot decode the {spec.name} request: {exc}") from None
        outcome = self.export.export(spec, request, "http")
        if outcome.ok:
            return 200, _encode(build_response(spec, outcome), as_json), ()
        extra = ((b"retry-after", str(outcome.retry_after_s).encode()),) if outcome.retry_after_s else ()
        return http_status(outcome), _error_body(outcome, as_json), extra


def _decode(spec: SignalSpec, body: bytes, as_json: bool) -> Message:
    if not as_json:
        try:
            return spec.request_type.FromString(body)
        except DecodeError as exc:
            raise ValueError(f"not a protobuf {spec.request_type.__name__} ({exc})") from None
    try:
        data = json.loads(body) if body.strip() else {}
        return otlpjson.parse(data, spec.request_type)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _encode(message: Message, as_json: bool) -> bytes:
    if as_json:
        return json.dumps(otlpjson.to_dict(message), separators=(",", ":")).encode()
    return message.SerializeToString()


def _error_body(outcome: Outcome, as_json: bool) -> bytes:
    status = status_proto(outcome)
    if as_json:
        return json.dumps(json_format.MessageToDict(status), separators=(",", ":")).encode()
    return status.SerializeToString()


async def _respond(
    send, status: int, payload: bytes, as_json: bool, extra: tuple[tuple[bytes, bytes], ...]
) -> None:
    headers = [
        (b"content-type", (JSON if as_json else PROTOBUF).encode()),
        (b"content-length", str(len(payload)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class OtlpHttpServer:
    """uvicorn on `endpoint` in a thread of its own (port 0 picks a free port; see `.port`)."""

    def __init__(
        self,
        endpoint: str,
        export: ExportHandler,
        metrics: Metrics,
        *,
        max_recv_mib: int = 64,
        retry_after_s: int = 5,
        tls: ServerTls | None = None,
        auth: BearerAuth | None = None,
        workers: int = 4,
        keep_alive_s: int = 30,
    ):
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
            self._sock = socket.socket(family, kind, proto)
            if int(port):
                # A fixed port is taken again at once after a restart (its old connections in TIME_WAIT). Not for
                # port 0: with SO_REUSEADDR the kernel may pick the local port of an outgoing connection, and
                # listen() then fails with "address in use".
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)
            # Listen now, as uvicorn will: a port that cannot listen fails here, naming the setting.
            self._sock.listen(2048)
        except OSError as exc:
            raise OSError(
                f"cannot listen on {endpoint} (OTAD_HTTP_ENDPOINT): {exc.strerror or exc}"
            ) from None
        self.port = self._sock.getsockname()[1]
        self.app = _App(
            export,
            metrics,
            limit=max_recv_mib * 1024 * 1024,
            retry_after_s=retry_after_s,
            auth=auth,
            workers=workers,
        )
        config = uvicorn.Config(
            self.app,
            http="h11",
            ws="none",
            lifespan="off",
            loop="asyncio",
            interface="asgi3",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=keep_alive_s,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(tls.cert_file) if tls else None,
            ssl_keyfile=str(tls.key_file) if tls else None,
            ssl_context_factory=(lambda _config, _default: tls.ssl_context()) if tls else None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="otad-http", daemon=True
        )
        self.tls = tls is not None

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the OTLP/HTTP server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self, grace_s: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(grace_s + 1)
        self.app.pool.shutdown(wait=False, cancel_futures=True)
        self._sock.close()
