"""Receive: the OTLP/gRPC server (Logs, Trace, Metrics Export), gzip, 64 MiB limit, grpc.health.v1."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from receiver.errors import Outcome, to_status
from receiver.export import SIGNALS, ExportHandler, SignalSpec, build_response
from receiver.grpc_options import GrpcServerOptions
from receiver.metrics import Metrics
from receiver.pipeline import Pipeline
from receiver.rows import RowMapper

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    "opentelemetry.proto.collector.logs.v1.LogsService",
    "opentelemetry.proto.collector.trace.v1.TraceService",
    "opentelemetry.proto.collector.metrics.v1.MetricsService",
)


class _Servicer:
    """One Export handler per signal, reading the same: decode, hand to the shared ExportHandler, answer.

    The request arrives as bytes (no generated deserializer) so that an undecodable request gets
    INVALID_ARGUMENT, as the OTLP spec asks, rather than grpcio's INTERNAL "Exception deserializing request!".
    """

    def __init__(self, spec: SignalSpec, export: ExportHandler):
        self.spec, self.export = spec, export

    def Export(self, data: bytes, context: grpc.ServicerContext):  # noqa: N802 (the OTLP method name)
        try:
            request = self.spec.request_type.FromString(data)
        except DecodeError as exc:
            self.export.metrics.requests.labels(self.spec.name, "grpc", "invalid_argument").inc()
            context.abort_with_status(to_status(Outcome(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"cannot decode the {self.spec.name} request: not a protobuf {self.spec.request_type.__name__} ({exc})")))
        outcome = self.export.export(self.spec, request, "grpc")
        if not outcome.ok:
            context.abort_with_status(to_status(outcome))
        return build_response(self.spec, outcome)

    def handler(self, service_name: str) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self.Export, request_deserializer=None,
                                                     response_serializer=lambda m: m.SerializeToString())
        return grpc.method_handlers_generic_handler(service_name, {"Export": method})


class OtlpGrpcServer:
    """A grpc.server on `endpoint` (port 0 picks a free port; see `.port`)."""

    def __init__(self, endpoint: str, pipeline: Pipeline, metrics: Metrics, *, max_recv_mib: int = 64,
                 retry_after_s: int = 5, workers: int = 8, options: GrpcServerOptions | None = None,
                 export: ExportHandler | None = None):
        options = options or GrpcServerOptions()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otad-grpc"),
            options=options.channel_args(max_recv_mib),
            interceptors=options.interceptors,
            # No maximum_concurrent_rpcs: past it grpcio answers a bare RESOURCE_EXHAUSTED, which OTLP clients
            # drop. A queued unary RPC holds no more than its HTTP/2 flow-control window until a worker reads it;
            # overload is answered by the ingest queue (UNAVAILABLE + RetryInfo). tests/conformance pins this.
        )
        export = export or ExportHandler(pipeline, RowMapper(), metrics, retry_after_s)
        for service_name, signal in zip(SERVICE_NAMES, ("logs", "traces", "metrics"), strict=True):
            self.server.add_generic_rpc_handlers((_Servicer(SIGNALS[signal], export).handler(service_name),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if options.credentials is None:
            self.port = self.server.add_insecure_port(endpoint)
        else:
            self.port = self.server.add_secure_port(endpoint, options.credentials)
        if not self.port:
            raise OSError(f"cannot listen on {endpoint} (OTAD_GRPC_ENDPOINT): address in use or not local")

    def start(self) -> None:
        self.server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait(grace_s + 1)
