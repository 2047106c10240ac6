"""Emit stage: anomaly events (receiver/events.py) pushed over OTLP/gRPC to the user's Collector or backend.

The export follows the OTLP client rules
(opentelemetry-proto docs/specification.md, "Failures" and "Partial Success"; the Collector's
exporter/otlpexporter/otlp.go `shouldRetry`): retryable codes only, jittered exponential backoff under
one deadline per batch, honour `google.rpc.RetryInfo`, and never retry a partial success.
Events that cannot be exported are not lost: the caller has already stored every anomaly.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub

from receiver.events import AnomalyEvent, _clip, build_request
from receiver.ratelog import warn_limited

logger = logging.getLogger(__name__)

# OTLP/gRPC retryable codes; RESOURCE_EXHAUSTED only when the server sent RetryInfo.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_BACKOFF_INITIAL_S, _BACKOFF_MAX_S, _JITTER = 0.5, 5.0, 0.2
_LOG_REPEAT_S = 60.0  # identical warning lines are logged at most once per this interval


# ---------------------------------------------------------------- the export


def retry_delay(error: grpc.RpcError) -> float | None:
    """The server's `google.rpc.RetryInfo` delay in seconds, from `grpc-status-details-bin`; None if absent."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    key: str
    value: bytes  # grpc-stubs give a _Metadatum class; at runtime each is a (key, value) namedtuple
    for key, value in trailing or ():  # type: ignore[misc]
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            # types-protobuf: Message.DESCRIPTOR may be the upb Descriptor, which Any.Is does not accept (it does)
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):  # type: ignore[arg-type]
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return max(0.0, info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


class AnomalyEmitter:
    """Pushes anomaly events to an OTLP/gRPC logs endpoint from a background thread.

    `emit` never blocks on the network: events wait in a bounded buffer (oldest dropped when full) and a
    worker sends them in batches. Every outcome is counted in `stats` and reported to `on_result(outcome, n)`
    with outcome one of sent / failed / dropped / partial. With `endpoint=None` nothing is exported and
    events are only counted as `stored_only` (the caller stores every anomaly anyway).
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
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if batch_size < 1 or max_buffer < batch_size:
            raise ValueError(f"need 1 <= batch_size ({batch_size}) <= max_buffer ({max_buffer})")
        self.endpoint, self.version, self.insecure = endpoint, version, insecure
        self._credentials = (
            credentials  # TLS with these (e.g. a private CA) when not insecure; None: system CAs
        )
        self.timeout_s, self.max_buffer, self.batch_size = timeout_s, max_buffer, batch_size
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._on_result = on_result
        self._buffer: deque[AnomalyEvent] = deque()
        self._cond = threading.Condition()
        self._inflight = 0
        self._stop = threading.Event()
        self._closed = False
        self._shutdown_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._channel: grpc.Channel | None = None
        self._stub: LogsServiceStub | None = None
        self._call: grpc.Future | None = None
        self._stats = dict.fromkeys(
            ("sent", "failed", "dropped", "partial_rejected", "retries", "stored_only"), 0
        )
        self._stats_lock = threading.Lock()

    @property
    def stats(self) -> dict:
        """A snapshot of the counters: sent, failed, dropped, partial_rejected, retries, stored_only."""
        with self._stats_lock:
            return dict(self._stats)

    def start(self) -> None:
        """Open the channel and start the worker thread (no-op without an endpoint, or when started)."""
        if self.endpoint is None or self._thread is not None or self._closed:
            return
        # Reconnect at the pace of our own backoff rather than gRPC's default (up to 120 s).
        options = [("grpc.initial_reconnect_backoff_ms", 500), ("grpc.max_reconnect_backoff_ms", 5000)]
        if self.insecure:
            self._channel = grpc.insecure_channel(self.endpoint, options=options)
        else:
            credentials = self._credentials or grpc.ssl_channel_credentials()
            self._channel = grpc.secure_channel(self.endpoint, credentials, options=options)
        self._stub = LogsServiceStub(self._channel)
        self._thread = threading.Thread(target=self._run, name="otad-emitter", daemon=True)
        self._thread.start()
        logger.info(
            "anomaly events export to %s (insecure=%s, timeout %.1fs)",
            self.endpoint,
            self.insecure,
            self.timeout_s,
        )

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
            call = self._call
            if self._thread.is_alive() and call is not None:  # a call still in flight past our deadline
                call.cancel()
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
        if self._channel is not None:
            self._channel.close()

    # -- worker

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._stop.is_set():
                    self._cond.wait()
                if not self._buffer or time.monotonic() >= self._shutdown_deadline:
                    return
                batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
                self._inflight = len(batch)
            try:
                self._export(batch)
            except Exception:  # a bug must not kill the worker; the events are stored anyway
                logger.exception("anomaly export failed unexpectedly; %d events remain stored", len(batch))
                self._result("failed", len(batch))
            finally:
                with self._cond:
                    self._inflight = 0
                    self._cond.notify_all()

    def _export(self, batch: list[AnomalyEvent]) -> None:
        request = build_request(batch, self.version)
        deadline = min(time.monotonic() + self.timeout_s, self._shutdown_deadline)
        attempt = 0
        while True:
            error = self._attempt(request, batch, deadline)
            if error is None:
                return
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.CANCELLED
            delay = retry_delay(error)
            retryable = code in RETRYABLE_CODES or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None
            )
            if delay is None:
                backoff = min(_BACKOFF_INITIAL_S * 2**attempt, _BACKOFF_MAX_S)
                delay = backoff * random.uniform(1 - _JITTER, 1 + _JITTER)
            if not retryable or self._stop.is_set() or time.monotonic() + delay >= deadline:
                return self._give_up(
                    batch, code, error, "not retryable" if not retryable else "deadline reached"
                )
            self._count("retries", 1)
            if self._stop.wait(delay):
                return self._give_up(batch, code, error, "shutting down")
            attempt += 1

    def _attempt(self, request: ExportLogsServiceRequest, batch: list[AnomalyEvent], deadline: float):
        """One Export call; returns None when handled (sent, partly sent), else the RpcError."""
        timeout = max(0.001, deadline - time.monotonic())
        assert self._stub is not None  # start() sets it before it starts the worker thread
        with self._cond:
            if self._stop.is_set() and self._shutdown_deadline <= time.monotonic():
                return _Cancelled()
            self._call = self._stub.Export.future(
                request, timeout=timeout, metadata=self._metadata, compression=grpc.Compression.Gzip
            )
        try:
            response = self._call.result()
        except grpc.RpcError as error:
            return error
        except grpc.FutureCancelledError:
            return _Cancelled()
        finally:
            self._call = None
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

    def _give_up(
        self, batch: list[AnomalyEvent], code: grpc.StatusCode, error: grpc.RpcError, why: str
    ) -> None:
        self._result("failed", len(batch))
        details = error.details() if hasattr(error, "details") else ""
        self._warn_limited(
            f"fail:{code.name}:{why}",
            "could not export %d anomaly events to %s: %s (%s: %s); they remain stored and queryable",
            len(batch),
            self.endpoint,
            code.name,
            why,
            _clip(details or "", 200),
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


class _Cancelled(grpc.RpcError):
    """The call was cancelled by `shutdown`."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "cancelled by shutdown"
