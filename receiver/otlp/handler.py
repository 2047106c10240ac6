"""Receive, transport-neutral: one Export request -> map -> queue -> an `Outcome` each transport translates.

The OTLP/gRPC servicers (server.py) and the OTLP/HTTP handler (http_server.py) both call `ExportHandler.export`
and only differ in how they spell the outcome: a gRPC status or an HTTP status code (errors.py maps both).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from receiver.metrics import Metrics
from receiver.otlp.errors import InvalidInputError, Outcome, UnavailableError, outcome_of
from receiver.pipeline import Pipeline
from receiver.ratelog import warn_limited
from receiver.rows.mapper import MappedBatch, RowMapper

__all__ = ["SIGNALS", "ExportHandler", "Outcome", "SignalSpec", "build_response", "warn_limited"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class SignalSpec:
    """What differs between the three signals: message types, the item noun and the rejected_* field."""

    name: str  # logs | traces | metrics
    noun: str  # log records | spans | data points (used in partial_success messages)
    rejected_field: str  # rejected_log_records | rejected_spans | rejected_data_points
    request_type: type
    response_type: type
    map_method: str  # the RowMapper method


SIGNALS: dict[str, SignalSpec] = {
    "logs": SignalSpec("logs", "log records", "rejected_log_records", logs_pb.ExportLogsServiceRequest,
                       logs_pb.ExportLogsServiceResponse, "map_logs"),
    "traces": SignalSpec("traces", "spans", "rejected_spans", trace_pb.ExportTraceServiceRequest,
                         trace_pb.ExportTraceServiceResponse, "map_traces"),
    "metrics": SignalSpec("metrics", "data points", "rejected_data_points", metrics_pb.ExportMetricsServiceRequest,
                          metrics_pb.ExportMetricsServiceResponse, "map_metrics"),
}


def build_response(spec: SignalSpec, outcome: Outcome):
    """The Export*ServiceResponse; `partial_success` stays unset on full success (OTLP spec)."""
    response = spec.response_type()
    if outcome.rejected or outcome.message:
        setattr(response.partial_success, spec.rejected_field, outcome.rejected)
        response.partial_success.error_message = outcome.message
    return response


class ExportHandler:
    """The shared body of every Export, whatever the transport: map, queue, answer."""

    def __init__(self, pipeline: Pipeline, mapper: RowMapper, metrics: Metrics, retry_after_s: int, ingest=None):
        self.pipeline, self.mapper, self.metrics, self.retry_after_s = pipeline, mapper, metrics, retry_after_s
        self.ingest = ingest  # receiver.ingest.SpooledIngest when the spool is on: durable before OK

    def export(self, spec: SignalSpec, request, transport: str) -> Outcome:
        """Map `request` and offer its rows to the pipeline; never raises."""
        start = time.perf_counter()
        signal = spec.name
        try:
            outcome = self._export(spec, request, transport)
        except (InvalidInputError, UnavailableError) as exc:
            warn_limited(logger, f"refused:{signal}:{transport}:{type(exc).__name__}",
                         "%s export over %s refused: %s", signal, transport, exc)
            outcome = outcome_of(exc)
        except Exception as exc:
            logger.exception("%s export over %s failed", signal, transport)
            outcome = outcome_of(exc)
        finally:
            self.metrics.export_seconds.labels(signal).observe(time.perf_counter() - start)
        self.metrics.requests.labels(signal, transport, outcome.label).inc()
        return outcome

    def _export(self, spec: SignalSpec, request, transport: str) -> Outcome:
        signal, noun = spec.name, spec.noun
        if self.pipeline.full:  # refuse before paying for the mapping
            self.metrics.refused.labels(signal, "queue_full", transport).inc()
            raise self._queue_full()
        received = time.time_ns()
        batch: MappedBatch = getattr(self.mapper, spec.map_method)(request, received)
        self._account(signal, noun, batch, transport)
        if batch.total and batch.rejections and not batch.rows and not batch.ignored:
            raise InvalidInputError(batch.error_message(noun))
        if self.ingest is not None:
            self.ingest.accept(signal, request, received, batch.rows, transport)  # spooled, then queued
        elif not self.pipeline.offer(batch.rows):
            self.metrics.refused.labels(signal, "queue_full", transport).inc(len(batch.rows))
            raise self._queue_full()
        self.metrics.accepted.labels(signal, transport).inc(len(batch.rows))
        return Outcome(rejected=len(batch.rejections), message=batch.error_message(noun))

    def _queue_full(self) -> UnavailableError:
        return UnavailableError(f"otad ingest queue is full ({self.pipeline.queued} rows); retry later",
                                self.retry_after_s)

    def _account(self, signal: str, noun: str, batch: MappedBatch, transport: str) -> None:
        if batch.ignored:
            self.metrics.ignored.labels(signal).inc(batch.ignored)
        if batch.bounded:  # stored, but with a field cut to what storage holds (docs/receiver.md)
            for name, n in batch.bounded.items():
                self.metrics.bounded.labels(signal, name).inc(n)
            warn_limited(logger, f"bounded:{signal}", "%s", batch.bounded_message(noun))
        if batch.rejections:
            reasons: dict[str, int] = {}
            for rej in batch.rejections:
                reason = rej.reason.split(":")[0][:40]
                reasons[reason] = reasons.get(reason, 0) + 1
            for reason, n in reasons.items():
                self.metrics.rejected.labels(signal, reason, transport).inc(n)
            warn_limited(logger, f"rejected:{signal}", "%s", batch.error_message(noun))
