"""Receive: the OTLP/gRPC server (Logs, Trace, Metrics Export), gzip, 64 MiB limit, grpc.health.v1."""

from __future__ import annotations

import logging
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc

from receiver.errors import InvalidInputError, UnavailableError, to_status
from receiver.grpc_decode import Undecodable, add_export_servicer
from receiver.metrics import Metrics
from receiver.pipeline import Pipeline
from receiver.rows import MappedBatch, RowMapper

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    "opentelemetry.proto.collector.logs.v1.LogsService",
    "opentelemetry.proto.collector.trace.v1.TraceService",
    "opentelemetry.proto.collector.metrics.v1.MetricsService",
)


class _Export:
    """The shared body of the three Export handlers: map, queue, answer."""

    def __init__(self, pipeline: Pipeline, mapper: RowMapper, metrics: Metrics, retry_after_s: int, ingest=None):
        self.pipeline, self.mapper, self.metrics, self.retry_after_s = pipeline, mapper, metrics, retry_after_s
        self.ingest = ingest  # receiver.ingest.SpooledIngest when the spool is on

    def handle(self, signal: str, noun: str, batch_fn, request, context: grpc.ServicerContext):
        start = time.perf_counter()
        try:
            if isinstance(request, Undecodable):
                raise InvalidInputError(request.error)
            if self.pipeline.full:  # refuse before paying for the mapping
                self.metrics.refused.labels(signal, "queue_full").inc()
                raise UnavailableError(f"otad ingest queue is full ({self.pipeline.queued} rows); retry later",
                                       self.retry_after_s)
            received = time.time_ns()
            batch: MappedBatch = batch_fn(request, received)
            self._account(signal, noun, batch)
            if batch.total and batch.rejections and not batch.rows and not batch.ignored:
                raise InvalidInputError(batch.error_message(noun))
            if self.ingest is not None:
                self.ingest.accept(signal, request, received, batch.rows)  # durable before OK
            elif not self.pipeline.offer(batch.rows):
                self.metrics.refused.labels(signal, "queue_full").inc(len(batch.rows))
                raise UnavailableError(f"otad ingest queue is full ({self.pipeline.queued} rows); retry later",
                                       self.retry_after_s)
            self.metrics.accepted.labels(signal).inc(len(batch.rows))
            return len(batch.rejections), batch.error_message(noun) if batch.rejections else ""
        except (InvalidInputError, UnavailableError) as exc:
            logger.warning("%s export refused: %s", signal, exc)
            context.abort_with_status(to_status(exc))
        except Exception as exc:
            logger.exception("%s export failed", signal)
            context.abort_with_status(to_status(exc))
        finally:
            self.metrics.export_seconds.labels(signal).observe(time.perf_counter() - start)

    def _account(self, signal: str, noun: str, batch: MappedBatch) -> None:
        if batch.ignored:
            self.metrics.ignored.labels(signal).inc(batch.ignored)
        if batch.rejections:
            reasons: dict[str, int] = {}
            for rej in batch.rejections:
                reason = rej.reason.split(":")[0][:40]
                reasons[reason] = reasons.get(reason, 0) + 1
            for reason, n in reasons.items():
                self.metrics.rejected.labels(signal, reason).inc(n)
            logger.warning("%s", batch.error_message(noun))


class LogsService(logs_grpc.LogsServiceServicer):
    def __init__(self, export: _Export):
        self.export = export

    def Export(self, request, context):  # noqa: N802 (generated gRPC API)
        rejected, message = self.export.handle("logs", "log records", self.export.mapper.map_logs, request, context)
        response = logs_pb.ExportLogsServiceResponse()
        if rejected or message:
            response.partial_success.rejected_log_records = rejected
            response.partial_success.error_message = message
        return response


class TraceService(trace_grpc.TraceServiceServicer):
    def __init__(self, export: _Export):
        self.export = export

    def Export(self, request, context):  # noqa: N802
        rejected, message = self.export.handle("traces", "spans", self.export.mapper.map_traces, request, context)
        response = trace_pb.ExportTraceServiceResponse()
        if rejected or message:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = message
        return response


class MetricsService(metrics_grpc.MetricsServiceServicer):
    def __init__(self, export: _Export):
        self.export = export

    def Export(self, request, context):  # noqa: N802
        rejected, message = self.export.handle("metrics", "data points", self.export.mapper.map_metrics, request, context)
        response = metrics_pb.ExportMetricsServiceResponse()
        if rejected or message:
            response.partial_success.rejected_data_points = rejected
            response.partial_success.error_message = message
        return response


class OtlpGrpcServer:
    """A grpc.server on `endpoint` (port 0 picks a free port; see `.port`)."""

    def __init__(self, endpoint: str, pipeline: Pipeline, metrics: Metrics, *, max_recv_mib: int = 64,
                 retry_after_s: int = 5, workers: int = 8, ingest=None):
        limit = max_recv_mib * 1024 * 1024
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otad-grpc"),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.max_concurrent_streams", 100),
            ],
            maximum_concurrent_rpcs=256,
        )
        export = _Export(pipeline, RowMapper(), metrics, retry_after_s, ingest)
        # lenient deserializers: undecodable bytes get INVALID_ARGUMENT, not gRPC's INTERNAL
        add_export_servicer(self.server, SERVICE_NAMES[0], LogsService(export), logs_pb.ExportLogsServiceRequest,
                            logs_pb.ExportLogsServiceResponse)
        add_export_servicer(self.server, SERVICE_NAMES[1], TraceService(export), trace_pb.ExportTraceServiceRequest,
                            trace_pb.ExportTraceServiceResponse)
        add_export_servicer(self.server, SERVICE_NAMES[2], MetricsService(export),
                            metrics_pb.ExportMetricsServiceRequest, metrics_pb.ExportMetricsServiceResponse)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(endpoint)
        if not self.port:
            raise OSError(f"cannot listen on {endpoint} (OTAD_GRPC_ENDPOINT): address in use or not local")

    def start(self) -> None:
        self.server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait(grace_s + 1)
