"""Receive: the OTLP/gRPC server (Logs, Trace, Metrics Export), gzip and deflate, 64 MiB limit, grpc.health.v1."""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterator
from concurrent import futures
from typing import NoReturn

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from receiver.otlp.errors import BadEncodingError, Outcome, TooLargeError, outcome_of, refusal, to_status
from receiver.otlp.grpc_options import GrpcServerOptions, bind
from receiver.otlp.handler import ExportHandler, build_response
from receiver.otlp.inflate import GZIP_WBITS, inflate_limited, trim_heap_soon
from receiver.otlp.signals import SIGNALS, SignalSpec
from receiver.ratelog import warn_limited

logger = logging.getLogger(__name__)

SERVICE_NAMES = tuple(spec.service_name for spec in SIGNALS.values())
_MIB = 1024 * 1024
_END_WAIT_S = 1.0  # how long a call without a message may take to show that grpc core ended it
_GZIP_MAGIC = (
    b"\x1f\x8b"  # never the start of a protobuf: 0x1f is field 3 with wire type 7, which does not exist
)
# zlib headers (RFC 1950) of a 32 KiB window without a preset dictionary, as grpc's deflate writes them. As protobuf,
# 0x78 is field 15 as a varint; the Export*ServiceRequest messages only have field 1.
_ZLIB_HEADERS = frozenset({b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda"})


class _Servicer:
    """One Export handler per signal, reading the same: receive, inflate, decode, hand to the ExportHandler, answer.

    Export is registered as a client-streaming method (identical to unary on the wire) so that it runs even when
    grpc core ends the call before its message arrives (over the size limit, an unknown grpc-encoding, a client
    cancel); a unary handler is then never called and the refusal would go unseen. grpc core's per-message
    decompression is off (grpc_options.py): the message arrives as sent, and otad inflates it with an output cap.
    The message is decoded here (no generated deserializer) so that an undecodable request gets INVALID_ARGUMENT,
    as the OTLP spec asks, rather than grpcio's INTERNAL "Exception deserializing request!".
    """

    def __init__(self, spec: SignalSpec, export: ExportHandler, limit: int):
        self.spec, self.export, self.limit = spec, export, limit

    def Export(self, messages: Iterator[bytes], context: grpc.ServicerContext):  # noqa: N802 (the OTLP method name)
        data = self._receive(messages, context)
        try:
            data = self._inflate(data)
        except TooLargeError as exc:
            trim_heap_soon()  # the limit's worth was inflated, then freed
            self._refuse(context, "too_large", outcome_of(exc))
        except BadEncodingError as exc:
            self._refuse(context, "bad_encoding", outcome_of(exc))
        try:
            request = self.spec.request_type.FromString(data)
        except DecodeError as exc:
            self._refuse(
                context,
                "undecodable",
                refusal(
                    "undecodable",
                    f"cannot decode the {self.spec.name} request: not a protobuf {self.spec.request_type.__name__} ({exc})",
                ),
            )
        del data
        outcome = self.export.export(self.spec, request, "grpc")
        if not outcome.ok:
            context.abort_with_status(to_status(outcome))
        return build_response(self.spec, outcome)

    def _receive(self, messages: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """The call's one message, or a refusal (counted) when it never arrives."""
        try:
            return next(messages)
        except StopIteration:
            # No message and the client's side closed: either the client sent none (the call lives on until it
            # is answered) or grpc core ended the call and has yet to tell grpcio (the end comes within moments).
            ended = threading.Event()
            if context.add_callback(ended.set) and not ended.wait(_END_WAIT_S):
                self._refuse(
                    context,
                    "undecodable",
                    refusal("undecodable", "the Export call carried no request message"),
                )
        except grpc.RpcError:
            pass
        # grpc core ended the call before the message reached otad; it tells the server no reason.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self.export.metrics.requests.labels(self.spec.name, "grpc", "deadline_exceeded").inc()
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the request arrived")
        self._count("grpc_core", "cancelled")
        warn_limited(
            logger,
            "grpc:grpc_core",
            "OTLP/gRPC %s request ended by grpc core before its message reached "
            "otad: larger than %d MiB (OTAD_MAX_RECV_MIB; the client got RESOURCE_EXHAUSTED), a "
            "grpc-encoding other than gzip or deflate (INTERNAL), or cancelled by the client",
            self.spec.name,
            self.limit // _MIB,
        )
        context.abort(grpc.StatusCode.CANCELLED, "the request did not arrive")  # unseen: the call is over

    def _inflate(self, data: bytes) -> bytes:
        """A gzip or deflate message (grpc-encoding, not visible to handlers, so told by its first bytes) inflated."""
        if data[:2] == _GZIP_MAGIC:
            return inflate_limited(data, self.limit, GZIP_WBITS, "gzip")
        if data[:2] in _ZLIB_HEADERS:
            return inflate_limited(data, self.limit, zlib.MAX_WBITS, "deflate")
        return data

    def _refuse(self, context: grpc.ServicerContext, reason: str, outcome: Outcome) -> NoReturn:
        self._count(reason, outcome.label)
        warn_limited(
            logger,
            f"grpc:{reason}",
            "OTLP/gRPC %s request refused with %s: %s",
            self.spec.name,
            outcome.code.name,
            outcome.message,
        )
        context.abort_with_status(to_status(outcome))

    def _count(self, reason: str, outcome_label: str) -> None:
        metrics = self.export.metrics
        metrics.transport_refusals.labels(self.spec.name, "grpc", reason).inc()
        metrics.requests.labels(self.spec.name, "grpc", outcome_label).inc()

    def handler(self, service_name: str) -> grpc.GenericRpcHandler:
        method: grpc.RpcMethodHandler[bytes, Message] = grpc.stream_unary_rpc_method_handler(
            self.Export, request_deserializer=None, response_serializer=lambda m: m.SerializeToString()
        )
        return grpc.method_handlers_generic_handler(service_name, {"Export": method})


class OtlpGrpcServer:
    """A grpc.server on `endpoint` (port 0 picks a free port; see `.port`)."""

    def __init__(
        self,
        endpoint: str,
        export: ExportHandler,
        *,
        max_recv_mib: int = 64,
        workers: int = 8,
        options: GrpcServerOptions | None = None,
    ):
        options = options or GrpcServerOptions()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otad-grpc"),
            options=options.channel_args(max_recv_mib),
            interceptors=list(options.interceptors),
            # No maximum_concurrent_rpcs: past it grpcio answers a bare RESOURCE_EXHAUSTED, which OTLP clients
            # drop. A queued unary RPC holds no more than its HTTP/2 flow-control window until a worker reads it;
            # overload is answered by the ingest queue (UNAVAILABLE + RetryInfo). tests/conformance pins this.
        )
        for spec in SIGNALS.values():
            servicer = _Servicer(spec, export, max_recv_mib * _MIB)
            self.server.add_generic_rpc_handlers((servicer.handler(spec.service_name),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = bind(self.server, endpoint, options.credentials, "OTAD_GRPC_ENDPOINT")

    def start(self) -> None:
        self.server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait(grace_s + 1)
