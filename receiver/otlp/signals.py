"""The one table of OTLP signals: request and response types, the item noun, the rejected_* field, the mapper."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from receiver.otlp.otlpjson import SignalRequest
from receiver.rows.mapper import MappedBatch, RowMapper

__all__ = ["SIGNALS", "SignalSpec"]


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """What differs between the three signals."""

    name: str  # logs | traces | metrics
    noun: str  # log records | spans | data points (used in partial_success messages)
    rejected_field: str  # rejected_log_records | rejected_spans | rejected_data_points
    request_type: type[SignalRequest]
    response_type: type
    map: Callable[[RowMapper, Any, int | None], MappedBatch]  # the RowMapper method for this request type
    service_name: str  # the gRPC service


SIGNALS: dict[str, SignalSpec] = {
    "logs": SignalSpec(
        "logs",
        "log records",
        "rejected_log_records",
        logs_pb.ExportLogsServiceRequest,
        logs_pb.ExportLogsServiceResponse,
        RowMapper.map_logs,
        "opentelemetry.proto.collector.logs.v1.LogsService",
    ),
    "traces": SignalSpec(
        "traces",
        "spans",
        "rejected_spans",
        trace_pb.ExportTraceServiceRequest,
        trace_pb.ExportTraceServiceResponse,
        RowMapper.map_traces,
        "opentelemetry.proto.collector.trace.v1.TraceService",
    ),
    "metrics": SignalSpec(
        "metrics",
        "data points",
        "rejected_data_points",
        metrics_pb.ExportMetricsServiceRequest,
        metrics_pb.ExportMetricsServiceResponse,
        RowMapper.map_metrics,
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
    ),
}
