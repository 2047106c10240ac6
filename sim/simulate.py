"""`otad simulate`: a labelled multi-service workload, exported through the OTel Python SDK.

The shop (`sim.workload`) yields plain records per simulated 10 s slice; this module replays them
through real SDK TracerProviders/LoggerProviders (one per service, seeded ids, explicit timestamps), builds
MetricsData, and hands each slice to the sinks: OTLP/gRPC exporters (`--target`) and/or a Collector
file-exporter file (`--output-dir`). Labels go to a CSV side file only, never into the telemetry.
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from opentelemetry import trace
from opentelemetry._logs import Logger, LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common._internal._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
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
from receiver.otlp.otlpjson import to_json_line
from sim.flows import DURATION_BOUNDS
from sim.workload import Workload
from sim.world import KINDS, SEC, SERVICES, LogRec, PointRec, SpanRec

__all__ = ["SimulateConfig", "Summary", "add_arguments", "run", "simulate"]

logger = logging.getLogger(__name__)

SLICE_NS = 10 * SEC  # metrics interval and export batch
DEFAULT_START = "2026-11-02T00:00:00Z"
LABEL_HEADER = ("uid", "signal", "kind", "time_unix_nano", "service")
_SPAN_KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}
_SEVERITY_TEXT = {9: "INFO", 13: "WARN", 17: "ERROR", 21: "FATAL"}
_SDK_VERSION = "1.45.2"
_CHUNK = 2000  # spans or log records per gRPC export
Label = tuple[str, str, str, int, str]  # a labels CSV row: LABEL_HEADER


@dataclass(frozen=True, slots=True)
class SimulateConfig:
    duration_s: float = 3600.0
    rate: float = 20.0  # requests per simulated second at the daily mean
    seed: int = 1
    start_ns: int = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp()) * SEC
    anomaly_rate: float = 0.04  # fraction of simulated time inside anomaly episodes
    kinds: tuple[str, ...] = KINDS
    speedup: float = 60.0  # simulated seconds per wall second; 0 = as fast as possible


@dataclass(slots=True)
class Summary:
    records: Counter = field(default_factory=Counter)  # per signal
    labelled: Counter = field(default_factory=Counter)  # per kind
    episodes: int = 0
    failed_exports: int = 0

    @property
    def total(self) -> int:
        return sum(self.records.values())


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


class Sink(Protocol):
    """Where each slice's telemetry goes."""

    def write(
        self, spans: Sequence[ReadableSpan], logs: Sequence[ReadableLogRecord], metrics: MetricsData | None
    ) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """Collector file-exporter format: one OTLP/JSON Export*ServiceRequest per line, all signals in one file."""

    def __init__(self, path: Path) -> None:
        self._handle = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 (closed in close())

    def write(
        self, spans: Sequence[ReadableSpan], logs: Sequence[ReadableLogRecord], metrics: MetricsData | None
    ) -> None:
        if spans:
            self._handle.write(to_json_line(encode_spans(spans)) + "\n")
        if logs:
            self._handle.write(to_json_line(encode_logs(logs)) + "\n")
        if metrics is not None and metrics.resource_metrics:
            self._handle.write(to_json_line(encode_metrics(metrics)) + "\n")

    def close(self) -> None:
        self._handle.close()


class GrpcSink:
    """The SDK's OTLP/gRPC exporters, as an instrumented service would use them."""

    def __init__(self, target: str) -> None:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        self.target = target
        self._exporters = (
            OTLPSpanExporter(endpoint=target, insecure=True),
            OTLPLogExporter(endpoint=target, insecure=True),
            OTLPMetricExporter(endpoint=target, insecure=True),
        )
        self.failed = 0

    def write(
        self, spans: Sequence[ReadableSpan], logs: Sequence[ReadableLogRecord], metrics: MetricsData | None
    ) -> None:
        span_exporter, log_exporter, metric_exporter = self._exporters
        # Chunks keep each request well under a Collector's default 4 MiB receive limit.
        for i in range(0, len(spans), _CHUNK):
            self._check("traces", span_exporter.export(spans[i : i + _CHUNK]))
        for i in range(0, len(logs), _CHUNK):
            self._check("logs", log_exporter.export(logs[i : i + _CHUNK]))
        if metrics is not None and metrics.resource_metrics:
            self._check("metrics", metric_exporter.export(metrics))

    def _check(self, name: str, result: object) -> None:
        if getattr(result, "name", "") != "SUCCESS":
            self.failed += 1
            logger.warning("simulate: exporting %s to %s failed (%s)", name, self.target, result)

    def close(self) -> None:
        for exporter in self._exporters:
            exporter.shutdown()


def simulate(config: SimulateConfig, sinks: Sequence[Sink], labels_path: Path | None) -> Summary:
    """Runs the workload through the sinks; writes the labels CSV. Same config ⇒ identical output."""
    workload = Workload(
        random.Random(f"otad-simulate:{config.seed}:workload"),
        config.start_ns,
        config.duration_s,
        config.rate,
        config.anomaly_rate,
        config.kinds,
    )
    telemetry = _Telemetry(random.Random(f"otad-simulate:{config.seed}:ids"))
    summary = Summary(episodes=len(workload.episodes))
    labels: list[Label] = []
    end_ns = config.start_ns + int(config.duration_s * SEC)
    n_slices = max(1, -(-(end_ns - config.start_ns) // SLICE_NS))
    wall0, next_report = time.monotonic(), 0.1
    try:
        for index in range(n_slices):
            t0 = config.start_ns + index * SLICE_NS
            t1 = min(t0 + SLICE_NS, end_ns)
            roots, loose_logs, points = workload.step(t0, t1)
            for root in roots:
                telemetry.span_tree(root, labels)
            for log in loose_logs:
                telemetry.log(log, labels)
            spans, logs = telemetry.drain()
            metrics = metrics_data(points, telemetry, labels)
            for sink in sinks:
                sink.write(spans, logs, metrics)
            summary.records.update({"traces": len(spans), "logs": len(logs), "metrics": len(points)})
            if config.speedup > 0:
                time.sleep(max(0.0, wall0 + (t1 - config.start_ns) / SEC / config.speedup - time.monotonic()))
            if (index + 1) / n_slices >= next_report:
                next_report += 0.1
                started = sum(1 for ep in workload.episodes if ep.start_ns < t1)
                logger.info(
                    "simulate: %3.0f%% (%d/%d simulated s): %d records sent, %d/%d anomaly episodes "
                    "injected, %d anomalous records",
                    100 * (index + 1) / n_slices,
                    (t1 - config.start_ns) // SEC,
                    config.duration_s,
                    summary.total,
                    started,
                    summary.episodes,
                    len(labels),
                )
    finally:
        for sink in sinks:
            sink.close()
        telemetry.shutdown()
    summary.labelled.update(kind for _, _, kind, _, _ in labels)
    summary.failed_exports = sum(getattr(sink, "failed", 0) for sink in sinks)
    if labels_path is not None:
        _write_labels(labels_path, labels)
    return summary


def _write_labels(path: Path, labels: list[Label]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABEL_HEADER)
        rows = sorted(labels, key=lambda row: (row[3], row[1], row[0]))  # time, signal, uid
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------------------ CLI
def _start(value: str) -> int:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--start {value!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000) * 1000


def _kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `otad simulate` flags."""
    parser.add_argument(
        "--target", metavar="HOST:PORT", help="send over OTLP/gRPC (insecure) to this endpoint"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write DIR/otlp.jsonl (Collector file-exporter format) and DIR/labels.csv",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="labels CSV (default labels.csv, or DIR/labels.csv with --output-dir)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="simulated seconds of traffic (default 3600)",
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="requests per simulated second at the daily mean"
    )
    parser.add_argument(
        "--speedup",
        type=float,
        default=60.0,
        help="simulated seconds per wall second when sending to --target (default 60)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed; same seed and flags, same output")
    parser.add_argument(
        "--start",
        type=_start,
        default=_start(DEFAULT_START),
        metavar="ISO8601",
        help=f"simulated start time (default {DEFAULT_START})",
    )
    parser.add_argument(
        "--anomaly-rate",
        type=float,
        default=0.04,
        help="fraction of simulated time inside anomaly episodes (default 0.04)",
    )
    parser.add_argument(
        "--kinds",
        type=_kinds,
        default=KINDS,
        metavar="KIND,…",
        help="anomaly kinds to inject (default all: " + ", ".join(KINDS) + ")",
    )


def run(args: argparse.Namespace) -> int:
    """Runs `otad simulate`; returns the exit code."""
    if not args.target and not args.output_dir:
        logger.error("simulate: give --target HOST:PORT to send, --output-dir DIR to write files, or both")
        return 2
    if args.duration <= 0 or args.rate <= 0 or not 0 <= args.anomaly_rate < 0.5 or args.speedup < 0:
        logger.error(
            "simulate: --duration and --rate must be > 0, --anomaly-rate in [0, 0.5), --speedup >= 0"
        )
        return 2
    config = SimulateConfig(
        duration_s=args.duration,
        rate=args.rate,
        seed=args.seed,
        start_ns=args.start,
        anomaly_rate=args.anomaly_rate,
        kinds=args.kinds,
        speedup=args.speedup if args.target else 0.0,
    )
    sinks: list[Sink] = []
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        sinks.append(FileSink(args.output_dir / "otlp.jsonl"))
    if args.target:
        sinks.append(GrpcSink(args.target))
    labels = args.labels or (args.output_dir / "labels.csv" if args.output_dir else Path("labels.csv"))
    started = time.monotonic()
    summary = simulate(config, sinks, labels)
    took = time.monotonic() - started
    logger.info(
        "simulate: %d records (%s) in %.1f s (%.0f records/s), %d episodes, %d anomalous records (%.2f%%) -> labels %s",
        summary.total,
        dict(summary.records),
        took,
        summary.total / max(took, 1e-9),
        summary.episodes,
        sum(summary.labelled.values()),
        100 * sum(summary.labelled.values()) / max(summary.total, 1),
        labels,
    )
    if summary.failed_exports:
        logger.error("simulate: %d exports to %s failed", summary.failed_exports, args.target)
        return 1
    return 0
