"""otad's API on the wire: a gRPC server on OTAD_QUERY_ENDPOINT and JSON under /v1/otad/ on the OTLP/HTTP server.

Both use the OTLP servers' TLS and bearer-token auth (receiver/otlp/tls.py, auth.py; the gRPC server gets the
same `GrpcServerOptions` as the OTLP one). Every RPC of proto/otad/v1 is routed to the `Api` method of the same
name in snake case (receiver/api/calls.py); over HTTP, `POST /v1/otad/<Service>/<Method>` takes the request
message as JSON (proto3 JSON mapping) and `GET` takes its scalar fields as query parameters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable
from concurrent import futures
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection

from receiver.api.calls import Api
from receiver.api.methods import METHODS, SERVICES
from receiver.feedback import Feedback
from receiver.otlp.auth import failure_message
from receiver.otlp.grpc_options import GrpcServerOptions, bind
from receiver.otlp.servers import Security, grpc_server_options
from receiver.settings import Settings
from storage import StorageError

__all__ = ["METHODS", "ApiGrpcServer", "ApiHttp", "build_api", "identity"]

logger = logging.getLogger(__name__)

HTTP_PREFIX = "/v1/otad/"
_MAX_BODY = 1 << 20
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def identity(authorization: str | None) -> str:
    """Who a call comes from, for the audit: a fingerprint of its bearer token (never the token), or ""."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return "token:" + hashlib.sha256(token.strip().encode()).hexdigest()[:12]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status an API call's failure is answered with."""
    if isinstance(exc, LookupError):
        return grpc.StatusCode.NOT_FOUND, str(exc).strip("'\"")
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, str(exc)
    if isinstance(exc, StorageError):
        return grpc.StatusCode.UNAVAILABLE, f"storage: {exc}"
    if isinstance(exc, RuntimeError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    logger.error("otad API call failed", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


def _call(api: Api, method: MethodDescriptor) -> Callable[[Message, str], Message]:
    return getattr(api, _snake(method.name))


def request_class(method: MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.input_type)


class ApiGrpcServer:
    """grpc.server on `endpoint` serving AnomalyService, FeedbackService and ModelService (port 0: a free one)."""

    def __init__(self, endpoint: str, api: Api, options: GrpcServerOptions, workers: int = 4):
        self.http: ApiHttp | None = None  # the JSON routes on the OTLP/HTTP server, stopped with this server
        args = [a for a in options.channel_args(4) if a[0] != "grpc.per_message_decompression"]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otad-api"),
            options=args,
            interceptors=list(options.interceptors),
        )
        for service in SERVICES:
            handlers = {m.name: self._handler(api, m) for m in service.methods}
            self.server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service.full_name, handlers),)
            )
        # grpcurl lists and calls the API without the .proto files (behind the same token as every call).
        reflection.enable_server_reflection(
            [s.full_name for s in SERVICES] + [reflection.SERVICE_NAME], self.server
        )
        self.port = bind(self.server, endpoint, options.credentials, "OTAD_QUERY_ENDPOINT")

    @staticmethod
    def _handler(api: Api, method: MethodDescriptor) -> grpc.RpcMethodHandler:
        call = _call(api, method)

        def handle(request: Message, context: grpc.ServicerContext) -> Message:
            headers = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            try:
                return call(request, identity(headers.get("authorization")))
            except Exception as exc:
                code, message = status_of(exc)
                context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_class(method).FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

    def start(self) -> None:
        self.server.start()
        logger.info("otad's API: gRPC on port %d, and JSON under /v1/otad/ on the OTLP/HTTP port", self.port)

    def stop(self, grace_s: float = 5.0) -> None:
        self.server.stop(grace_s).wait(grace_s + 1)
        if self.http is not None:
            self.http.pool.shutdown(wait=False, cancel_futures=True)


class ApiHttp:
    """The API as JSON on the OTLP/HTTP server: the server's ASGI app hands it every /v1/otad/ request."""

    def __init__(self, api: Api, workers: int = 2):
        self.api = api
        # Its own threads: a Promote waits for the pipeline to switch, and must not hold an OTLP/HTTP worker.
        self.pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otad-api-http")

    async def __call__(self, app: Any, scope: dict, receive: Callable, send: Callable) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status, payload, extra = 200, b"", []
        try:
            method = self._method(scope["path"])
            if app.auth is not None:
                reason = app.auth.check(headers.get("authorization"))
                if reason is not None:
                    app.metrics.auth_failures.labels("http", reason).inc()
                    extra = [(b"www-authenticate", b"Bearer")]
                    raise _HttpError(grpc.StatusCode.UNAUTHENTICATED, failure_message(reason))
            request = await self._request(method, scope, receive)
            loop = asyncio.get_running_loop()
            call = _call(self.api, method)
            who = identity(headers.get("authorization"))
            try:
                response = await loop.run_in_executor(self.pool, call, request, who)
            except Exception as exc:
                raise _HttpError(*status_of(exc)) from None
            payload = json_format.MessageToJson(
                response, preserving_proto_field_name=True, indent=None
            ).encode()
        except _HttpError as err:
            status = _HTTP_STATUS.get(err.code, 500)
            payload = json.dumps({"code": err.code.value[0], "message": err.message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    def _method(path: str) -> MethodDescriptor:
        service, _, name = path[len(HTTP_PREFIX) :].strip("/").partition("/")
        full = service if "." in service else f"otad.v1.{service}"
        method = METHODS.get(f"/{full}/{name}")
        if method is None:
            raise _HttpError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown API path {path[:100]!r}; use /v1/otad/<Service>/<Method> (docs/api.md)",
            )
        return method

    @staticmethod
    async def _request(method: MethodDescriptor, scope: dict, receive: Callable) -> Message:
        body, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _HttpError(grpc.StatusCode.INVALID_ARGUMENT, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > _MAX_BODY:
                raise _HttpError(grpc.StatusCode.INVALID_ARGUMENT, "request body over 1 MiB")
            body.append(chunk)
            if not message.get("more_body"):
                break
        request = request_class(method)()
        try:
            if scope["method"] == "GET":
                query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
                data: Any = {k: {"true": True, "false": False}.get(v, v) for k, v in query}
            elif scope["method"] == "POST":
                raw = b"".join(body).strip()
                data = json.loads(raw) if raw else {}
            else:
                raise _HttpError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"method {scope['method']}: use GET or POST"
                )
            json_format.ParseDict(data, request)
        except (json.JSONDecodeError, UnicodeDecodeError, json_format.ParseError) as exc:
            raise _HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {exc}") from None
        return request


class _HttpError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def build_api(service: Any, security: Security) -> tuple[Feedback, ApiGrpcServer]:
    """For a `receiver.service.Service` under construction: its feedback (applied in its pipeline from the next
    batch), the API's gRPC server on OTAD_QUERY_ENDPOINT (bound, not started) and the JSON routes on its
    OTLP/HTTP server. Model calls go to `service.lifecycle`.

    Raises:
        OSError: OTAD_QUERY_ENDPOINT cannot be bound.
    """
    settings: Settings = service.settings
    pipeline = service.pipeline

    def current() -> str | None:
        return pipeline.status()["model_version"]

    feedback = Feedback(service.store, service.metrics, settings.models_dir, current)
    pipeline.screen = feedback.screen
    api = Api(
        service.store, feedback, current, settings.models_dir, lambda: getattr(service, "lifecycle", None)
    )
    server = ApiGrpcServer(
        settings.query_endpoint, api, grpc_server_options(settings, security, service.metrics)
    )
    server.http = service.http.app.api = ApiHttp(api)
    return feedback, server
