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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from opentelemetry.exporter.otlp.proto.common._internal._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.trace import ReadableSpan

from receiver.otlp.otlpjson import to_json_line
from sim.telemetry import Label, _Telemetry, metrics_data
from sim.workload import Workload
from sim.world import KINDS, SEC

__all__ = ["SimulateConfig", "Summary", "add_arguments", "run", "simulate"]

logger = logging.getLogger(__name__)

SLICE_NS = 10 * SEC  # metrics interval and export batch
DEFAULT_START = "2026-11-02T00:00:00Z"
LABEL_HEADER = ("uid", "signal", "kind", "time_unix_nano", "service")
_CHUNK = 2000  # spans or log records per gRPC export


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
