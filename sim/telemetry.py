"""The simulator's records as OpenTelemetry SDK telemetry: spans, log records and metric data of one resource per service."""

from __future__ import annotations

import random
from collections import defaultdict

from opentelemetry import trace
from opentelemetry._logs import Logger, LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from model.schema import metric_point_uid
from sim.flows import DURATION_BOUNDS
from sim.world import SERVICES, LogRec, PointRec, SpanRec

Label = tuple[str, str, str, int, str]  # a labels CSV row: uid, signal, kind, time_unix_nano, service


_SPAN_KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}


_SEVERITY_TEXT = {9: "INFO", 13: "WARN", 17: "ERROR", 21: "FATAL"}


_SDK_VERSION = "1.45.2"


class _SeededIds(IdGenerator):
    """Trace and span ids from the run's seed, so the same seed gives the same ids."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1


class _Telemetry:
    """Per-service SDK providers collecting into memory; `drain()` returns one slice's spans and logs."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._spans, self._logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
        self.resources: dict[str, Resource] = {}
        self._tracers: dict[str, trace.Tracer] = {}
        self._loggers: dict[str, Logger] = {}
        self._providers: list[TracerProvider | LoggerProvider] = []
        ids = _SeededIds(rng)
        for service, spec in SERVICES.items():
            resource = Resource(
                {
                    "service.name": service,
                    "service.namespace": "shop",
                    "service.version": spec.version,
                    "host.name": spec.host,
                    "deployment.environment.name": "production",
                    "telemetry.sdk.name": "opentelemetry",
                    "telemetry.sdk.language": "python",
                    "telemetry.sdk.version": _SDK_VERSION,
                }
            )
            tracer_provider = TracerProvider(
                sampler=ALWAYS_ON, resource=resource, shutdown_on_exit=False, id_generator=ids
            )
            tracer_provider.add_span_processor(SimpleSpanProcessor(self._spans))
            logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
            logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self._logs))
            self.resources[service] = resource
            self._tracers[service] = tracer_provider.get_tracer(f"shop.{service}", spec.version)
            self._loggers[service] = logger_provider.get_logger(f"shop.{service}", spec.version)
            self._providers += [tracer_provider, logger_provider]

    def span_tree(self, rec: SpanRec, labels: list[Label], parent: trace.SpanContext | None = None) -> None:
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else Context()
        span = self._tracers[rec.service].start_span(
            rec.name,
            context=context,
            kind=_SPAN_KINDS[rec.kind],
            attributes=rec.attributes,
            start_time=rec.start_ns,
        )
        span_context = span.get_span_context()
        for child in rec.children:
            self.span_tree(child, labels, span_context)
        for log in rec.logs:
            self.log(log, labels, span_context)
        if rec.error is not None:
            span.set_status(Status(StatusCode.ERROR, rec.error or None))
        span.end(end_time=rec.end_ns)
        if rec.label:
            labels.append(
                (trace.format_span_id(span_context.span_id), "traces", rec.label, rec.start_ns, rec.service)
            )

    def log(self, rec: LogRec, labels: list[Label], span_context: trace.SpanContext | None = None) -> None:
        uid = f"{self._rng.getrandbits(128):032x}"
        # ids and flags (sampled: ALWAYS_ON) from the span's context; without one, none (no current span here)
        context = trace.set_span_in_context(NonRecordingSpan(span_context)) if span_context else Context()
        record = LogRecord(
            timestamp=rec.time_ns,
            observed_timestamp=rec.time_ns,
            context=context,
            severity_number=SeverityNumber(rec.severity),
            severity_text=_SEVERITY_TEXT[rec.severity],
            body=rec.body,
            attributes={**rec.attributes, "log.record.uid": uid},
        )
        self._loggers[rec.service].emit(record)
        if rec.label:
            labels.append((uid, "logs", rec.label, rec.time_ns, rec.service))

    def drain(self) -> tuple[tuple[ReadableSpan, ...], tuple[ReadableLogRecord, ...]]:
        spans, logs = self._spans.get_finished_spans(), self._logs.get_finished_logs()
        self._spans.clear()
        self._logs.clear()
        return spans, logs

    def shutdown(self) -> None:
        for provider in self._providers:
            provider.shutdown()


def _histogram_point(p: PointRec) -> HistogramDataPoint:
    assert isinstance(p.value, tuple)  # a histogram's point
    count, total, bucket_counts, low, high = p.value
    return HistogramDataPoint(
        p.attributes,
        p.start_ns,
        p.time_ns,
        count,
        total,
        list(bucket_counts),
        list(DURATION_BOUNDS),
        low,
        high,
    )


def _number_point(p: PointRec) -> NumberDataPoint:
    assert not isinstance(p.value, tuple)  # a gauge's or a sum's point
    return NumberDataPoint(p.attributes, p.start_ns, p.time_ns, p.value)


def _metric(points: list[PointRec]) -> Metric:
    first = points[0]
    data: Histogram | Gauge | Sum
    if first.kind == "histogram":
        data = Histogram([_histogram_point(p) for p in points], AggregationTemporality.CUMULATIVE)
    else:
        numbers = [_number_point(p) for p in points]
        data = (
            Gauge(numbers) if first.kind == "gauge" else Sum(numbers, AggregationTemporality.CUMULATIVE, True)
        )
    return Metric(first.name, None, first.unit, data)


def metrics_data(points: list[PointRec], telemetry: _Telemetry, labels: list[Label]) -> MetricsData:
    """One MetricsData for a slice's points: a ResourceMetrics per service, a Metric per name."""
    grouped: dict[str, dict[str, list[PointRec]]] = defaultdict(lambda: defaultdict(list))
    for point in points:
        grouped[point.service][point.name].append(point)
        if point.label:
            uid = metric_point_uid(point.service, point.name, point.attributes, point.time_ns)
            labels.append((uid, "metrics", point.label, point.time_ns, point.service))
    resource_metrics = []
    for service, by_name in grouped.items():
        scope = InstrumentationScope(f"shop.{service}", SERVICES[service].version)
        metrics = [_metric(series) for series in by_name.values()]
        resource_metrics.append(
            ResourceMetrics(telemetry.resources[service], [ScopeMetrics(scope, metrics, "")], "")
        )
    return MetricsData(resource_metrics)
