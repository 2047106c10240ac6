"""Emit stage: anomaly events (receiver/events.py) pushed over OTLP (gRPC or HTTP/protobuf) to the user's Collector.

The export follows the OTLP client rules
(opentelemetry-proto docs/specification.md, "Failures" and "Partial Success"; the Collector's
exporter/otlpexporter/otlp.go `shouldRetry`): retryable codes only, jittered exponential backoff under
one deadline per batch, honour the server's delay (`google.rpc.RetryInfo`, `Retry-After`), and never retry a
partial success. One attempt on the wire is `receiver/emit_transport.py`'s; where and how (OTEL_EXPORTER_OTLP_*,
OTAD_EXPORT_*) is `receiver/export_config.py`'s. Events that cannot be exported are not lost: the caller has
already stored every anomaly.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from receiver.aggregate import EventLimits, FindingAggregator
from receiver.emit_transport import (
    RETRYABLE_CODES,
    Failure,
    GrpcLogsTransport,
    HttpLogsTransport,
    Transport,
    retry_delay,
)
from receiver.events import AnomalyEvent, _clip, build_request
from receiver.export_config import resolve_export
from receiver.otlp.tls import emitter_credentials, emitter_ssl_context
from receiver.ratelog import warn_limited

if TYPE_CHECKING:
    from receiver.metrics import Metrics
    from receiver.settings import Settings

__all__ = ["RETRYABLE_CODES", "AnomalyEmitter", "emitter_from_settings", "retry_delay"]

logger = logging.getLogger(__name__)

_BACKOFF_INITIAL_S, _BACKOFF_MAX_S, _JITTER = 0.5, 5.0, 0.2
_LOG_REPEAT_S = 60.0  # identical warning lines are logged at most once per this interval
_TICK_S = 1.0  # an idle worker asks the aggregator for events due by the wall clock this often


class AnomalyEmitter:
    """Pushes anomaly events to an OTLP logs endpoint (gRPC or HTTP/protobuf) from a background thread.

    `emit` never blocks on the network: events wait in a bounded buffer (oldest dropped when full) and a
    worker sends them in batches. Every outcome is counted in `stats` and reported to `on_result(outcome, n)`
    with outcome one of sent / failed / dropped / partial. With `endpoint=None` nothing is exported and
    events are only counted as `stored_only` (the caller stores every anomaly anyway). `endpoint` is a
    HOST:PORT target for `protocol="grpc"`, the logs URL for `"http/protobuf"`. An `aggregator`
    (receiver/aggregate.py) is what the writer asks which events to send; the emitter only carries it.
    """

    def __init__(
        self,
        endpoint: str | None,
        *,
        version: str,
        insecure: bool = True,
        credentials: grpc.ChannelCredentials | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        max_buffer: int = 10_000,
        batch_size: int = 512,
        on_result: Callable[[str, int], None] | None = None,
        protocol: str = "grpc",
        ssl_context: ssl.SSLContext | None = None,
        resource: Mapping[str, str] | None = None,
        name_attribute: bool = False,
        aggregator: FindingAggregator | None = None,
        compression: str = "gzip",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if batch_size < 1 or max_buffer < batch_size:
            raise ValueError(f"need 1 <= batch_size ({batch_size}) <= max_buffer ({max_buffer})")
        if protocol not in ("grpc", "http/protobuf"):
            raise ValueError(f"protocol must be grpc or http/protobuf, got {protocol!r}")
        self.endpoint, self.version, self.insecure, self.protocol = endpoint, version, insecure, protocol
        self._credentials = credentials  # gRPC TLS with these (e.g. a private CA); None: system CAs
        self._ssl_context = ssl_context  # the same for OTLP/HTTP
        self.timeout_s, self.max_buffer, self.batch_size = timeout_s, max_buffer, batch_size
        self._headers = dict(headers or {})
        self._compress = compression == "gzip"  # gzip | none, on both transports
        self._resource = dict(resource or {})
        self._name_attribute = name_attribute
        self.aggregator = aggregator
        self._on_result = on_result
        self._buffer: deque[AnomalyEvent] = deque()
        self._cond = threading.Condition()
        self._inflight = 0
        self._stop = threading.Event()
        self._closed = False
        self._shutdown_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._transport: Transport | None = None
        self._stats = dict.fromkeys(
            ("sent", "failed", "dropped", "partial_rejected", "retries", "stored_only"), 0
        )
        self._stats_lock = threading.Lock()

    @property
    def stats(self) -> dict:
        """A snapshot of the counters: sent, failed, dropped, partial_rejected, retries, stored_only."""
        with self._stats_lock:
            return dict(self._stats)

    @property
    def alive(self) -> bool:
        """False when the worker thread died while it should be running (a bug: /healthz says so)."""
        return self._thread is None or self._closed or self._thread.is_alive()

    @property
    def buffered(self) -> int:
        """Events waiting to be sent (the export queue's size; its capacity is `max_buffer`)."""
        return len(self._buffer) + self._inflight

    def start(self) -> None:
        """Open the connection and start the worker thread (no-op without an endpoint, or when started)."""
        if self.endpoint is None or self._thread is not None or self._closed:
            return
        if self.protocol == "grpc":
            self._transport = GrpcLogsTransport(
                self.endpoint,
                insecure=self.insecure,
                credentials=self._credentials,
                headers=self._headers,
                compress=self._compress,
            )
        else:
            context = None if self.endpoint.startswith("http://") else self._ssl_context
            self._transport = HttpLogsTransport(
                self.endpoint, headers=self._headers, ssl_context=context, compress=self._compress
            )
        self._thread = threading.Thread(target=self._run, name="otad-emitter", daemon=True)
        self._thread.start()
        logger.info(
            "anomaly events export to %s (%s, insecure=%s, timeout %.1fs)",
            self.endpoint,
            self.protocol,
            self.insecure,
            self.timeout_s,
        )

    def close_findings(self) -> None:
        """At shutdown, before `flush`: the last Update of every finding with anomalies not yet reported."""
        if self.aggregator is not None:
            self.emit(self.aggregator.flush())

    def emit(self, anomalies: Sequence[AnomalyEvent]) -> None:
        """Queue events for export without blocking; when the buffer is full the oldest are dropped."""
        if not anomalies:
            return
        if self.endpoint is None:
            self._count("stored_only", len(anomalies))
            return
        with self._cond:
            if self._closed:
                dropped = len(anomalies)
            else:
                self._buffer.extend(anomalies)
                dropped = max(0, len(self._buffer) - self.max_buffer)
                for _ in range(dropped):
                    self._buffer.popleft()
                self._cond.notify_all()
        if dropped:
            self._result("dropped", dropped)
            self._warn_limited(
                "drop",
                "dropped %d anomaly events (export buffer full at %d or emitter shut down; endpoint %s); "
                "they remain stored and queryable",
                dropped,
                self.max_buffer,
                self.endpoint,
            )

    def flush(self, timeout_s: float) -> bool:
        """Wait until every buffered event has been handled (sent or given up); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._buffer or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:  # not started: nothing drains the buffer
                    return False
                self._cond.wait(remaining)
        return True

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop: cut any backoff short, give buffered events one last attempt within `timeout_s`, close.

        Safe before `start` and when called twice. Events not exported are counted as dropped (still stored).
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._shutdown_deadline = time.monotonic() + timeout_s
            self._stop.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive() and self._transport is not None:  # a call in flight past our deadline
                self._transport.cancel()
                self._thread.join(0.5)
        with self._cond:
            left = len(self._buffer)
            self._buffer.clear()
        if left:
            self._result("dropped", left)
            logger.warning(
                "%d anomaly events not exported at shutdown (endpoint %s); they remain stored",
                left,
                self.endpoint,
            )
        if self._transport is not None:
            self._transport.close()

    # -- worker

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._buffer and not self._stop.is_set():
                    self._cond.wait(_TICK_S)
                if self._stop.is_set() and (not self._buffer or time.monotonic() >= self._shutdown_deadline):
                    return
                batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
                self._inflight = len(batch)
            if not batch:  # idle: findings whose wait or quiet window ended by the wall clock
                self._tick()
                continue
            try:
                self._export(batch)
            except Exception:  # a bug must not kill the worker; the events are stored anyway
                logger.exception("anomaly export failed unexpectedly; %d events remain stored", len(batch))
                self._result("failed", len(batch))
            finally:
                with self._cond:
                    self._inflight = 0
                    self._cond.notify_all()

    def _tick(self) -> None:
        if self.aggregator is not None:
            try:
                self.emit(self.aggregator.tick())
            except Exception:  # a bug must not kill the worker
                logger.exception("anomaly finding aggregation failed")

    def _export(self, batch: list[AnomalyEvent]) -> None:
        request = build_request(batch, self.version, self._resource, name_attribute=self._name_attribute)
        deadline = min(time.monotonic() + self.timeout_s, self._shutdown_deadline)
        attempt = 0
        while True:
            failure = self._attempt(request, batch, deadline)
            if failure is None:
                return
            delay = failure.delay
            if delay is None:
                backoff = min(_BACKOFF_INITIAL_S * 2**attempt, _BACKOFF_MAX_S)
                delay = backoff * random.uniform(1 - _JITTER, 1 + _JITTER)
            if not failure.retryable or self._stop.is_set() or time.monotonic() + delay >= deadline:
                return self._give_up(
                    batch, failure, "not retryable" if not failure.retryable else "deadline reached"
                )
            self._count("retries", 1)
            if self._stop.wait(delay):
                return self._give_up(batch, failure, "shutting down")
            attempt += 1

    def _attempt(
        self, request: ExportLogsServiceRequest, batch: list[AnomalyEvent], deadline: float
    ) -> Failure | None:
        """One Export call; returns None when handled (sent, partly sent), else the failure."""
        timeout = max(0.001, deadline - time.monotonic())
        assert self._transport is not None  # start() sets it before it starts the worker thread
        with self._cond:
            if self._stop.is_set() and self._shutdown_deadline <= time.monotonic():
                return Failure("CANCELLED", False, None, "cancelled by shutdown")
        response = self._transport.send(request, timeout)
        if isinstance(response, Failure):
            return response
        rejected = response.partial_success.rejected_log_records
        message = response.partial_success.error_message
        if rejected or message:  # the spec: a client MUST NOT retry a partial success
            self._result("partial", rejected)
            self._warn_limited(
                "partial",
                "partial success from %s: rejected_log_records=%d of %d, message: %s",
                self.endpoint,
                rejected,
                len(batch),
                _clip(message, 500),
            )
        self._result("sent", len(batch) - min(rejected, len(batch)))
        return None

    def _give_up(self, batch: list[AnomalyEvent], failure: Failure, why: str) -> None:
        self._result("failed", len(batch))
        self._warn_limited(
            f"fail:{failure.code}:{why}",
            "could not export %d anomaly events to %s: %s (%s: %s); they remain stored and queryable",
            len(batch),
            self.endpoint,
            failure.code,
            why,
            _clip(failure.details or "", 200),
        )

    # -- counters and logs

    def _count(self, key: str, n: int) -> None:
        with self._stats_lock:
            self._stats[key] += n

    def _result(self, outcome: str, n: int) -> None:
        """Count an outcome (sent / failed / dropped / partial) and tell `on_result`."""
        self._count("partial_rejected" if outcome == "partial" else outcome, n)
        if self._on_result is not None and n:
            try:
                self._on_result(outcome, n)
            except Exception:
                logger.exception("on_result callback failed for %s", outcome)

    def _warn_limited(self, key: str, msg: str, *args: object) -> None:
        warn_limited(logger, f"emit:{id(self)}:{key}", msg, *args, interval_s=_LOG_REPEAT_S)


def emitter_from_settings(
    settings: Settings, version: str, metrics: Metrics | None = None, environ: Mapping[str, str] | None = None
) -> AnomalyEmitter:
    """The service's emitter: the export resolved by the OTel SDK conventions (receiver/export_config.py), its
    TLS material read, the finding aggregation by OTAD_EVENT_*, outcomes counted in `metrics`.

    Raises:
        ConfigError: an export setting or file is unusable; the sentence names the variable.
    """
    config = resolve_export(settings, environ)
    grpc_tls = config.protocol == "grpc"
    counters = _exporter_counters(metrics)
    aggregator = FindingAggregator(
        EventLimits(
            settings.event_window_s,
            settings.event_max_per_window,
            settings.event_max_per_minute,
            settings.event_wait_s,
        ),
        version,
        on_outcome=(lambda outcome, n: metrics.events.labels(outcome).inc(n)) if metrics else None,
    )
    emitter = AnomalyEmitter(
        config.endpoint,
        version=version,
        insecure=config.insecure,
        credentials=emitter_credentials(config) if grpc_tls else None,
        ssl_context=None if grpc_tls else emitter_ssl_context(config),
        headers=config.headers,
        timeout_s=config.timeout_s,
        protocol=config.protocol,
        resource=config.resource,
        name_attribute=settings.event_name_attribute,
        aggregator=aggregator,
        on_result=counters,
        compression=config.compression,
    )
    if metrics is not None:
        metrics.exporter_queue_size.set_function(lambda: emitter.buffered)
        metrics.exporter_queue_capacity.set(emitter.max_buffer)
    if config.endpoint is not None:
        logger.info("anomaly events: %s", config.describe())
    return emitter


def _exporter_counters(metrics: Metrics | None) -> Callable[[str, int], None] | None:
    """`on_result` counting into otad_exporter_sent / send_failed / enqueue_failed _log_records."""
    if metrics is None:
        return None
    by_outcome = {
        "sent": metrics.exporter_sent,
        "failed": metrics.exporter_send_failed,
        "partial": metrics.exporter_send_failed,  # rejected in a partial success: not retried, so failed
        "dropped": metrics.exporter_enqueue_failed,
    }

    def count(outcome: str, n: int) -> None:
        counter = by_outcome.get(outcome)
        if counter is not None:
            counter.inc(n)

    return count
