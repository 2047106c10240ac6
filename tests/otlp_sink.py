"""A real OTLP/gRPC server for tests: stores what it receives and fails or partially rejects on cue.

Usage::

    sink = OtlpSink()
    port = sink.start()                      # localhost:<free port>, gzip accepted
    sink.fail_next(2, grpc.StatusCode.UNAVAILABLE, retry_delay_s=0.5)
    ...                                      # point an exporter at sink.endpoint
    assert sink.wait_for(lambda: len(sink.log_records()) == 3, timeout=5)
    sink.stop()

Logs, traces and metrics share one script: `fail_next` / `partial_next` apply to the next Export calls of
any signal, in order. Every call (failed or not) is recorded in `calls`.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

__all__ = ["Call", "OtlpSink"]


@dataclass(frozen=True, slots=True)
class Call:
    """One Export call as the sink saw it."""

    signal: str  # logs | traces | metrics
    at: float  # time.monotonic() on arrival
    code: grpc.StatusCode  # what the sink answered
    metadata: tuple[tuple[str, str | bytes], ...]  # the client's invocation metadata (headers)
    peer: str = ""  # the client's address ("ipv4:127.0.0.1:51234"): a new port is a new connection


@dataclass(frozen=True, slots=True)
class _Action:
    code: grpc.StatusCode | None = None  # None: accept, possibly with a partial success
    retry_delay_s: float | None = None
    rejected: int = 0
    message: str = ""


_PARTIAL = {
    "logs": (
        logs_service_pb2.ExportLogsServiceResponse,
        logs_service_pb2.ExportLogsPartialSuccess,
        "rejected_log_records",
    ),
    "traces": (
        trace_service_pb2.ExportTraceServiceResponse,
        trace_service_pb2.ExportTracePartialSuccess,
        "rejected_spans",
    ),
    "metrics": (
        metrics_service_pb2.ExportMetricsServiceResponse,
        metrics_service_pb2.ExportMetricsPartialSuccess,
        "rejected_data_points",
    ),
}


class OtlpSink:
    """LogsService, TraceService and MetricsService on one grpc.server, storing requests in memory."""

    def __init__(self, host: str = "localhost") -> None:
        self.host = host
        self.port = 0
        self._lock = threading.Condition()
        self._script: deque[_Action] = deque()
        self._server: grpc.Server | None = None
        self.requests: dict[str, list] = {"logs": [], "traces": [], "metrics": []}
        self.calls: list[Call] = []

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, port: int = 0) -> int:
        """Serve on `host:port` (0 = a free port) and return the port."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), server)
        self.port = server.add_insecure_port(f"{self.host}:{port}")
        if not self.port:
            raise RuntimeError(f"OtlpSink could not bind {self.host}:{port}")
        server.start()
        self._server = server
        return self.port

    def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> OtlpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the script

    def fail_next(
        self, n: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, retry_delay_s: float | None = None
    ) -> None:
        """Abort the next `n` Export calls with `code`, with a RetryInfo detail when `retry_delay_s` is set."""
        with self._lock:
            self._script.extend(_Action(code=code, retry_delay_s=retry_delay_s) for _ in range(n))

    def partial_next(self, rejected: int, message: str) -> None:
        """Accept the next Export call but answer with `partial_success` (rejected count + message)."""
        with self._lock:
            self._script.append(_Action(rejected=rejected, message=message))

    # -- what was received

    def log_records(self) -> list[tuple]:
        """Every received log record as (Resource, InstrumentationScope, LogRecord), in arrival order."""
        with self._lock:
            requests = list(self.requests["logs"])
        return [
            (rl.resource, sl.scope, rec)
            for req in requests
            for rl in req.resource_logs
            for sl in rl.scope_logs
            for rec in sl.log_records
        ]

    def spans(self) -> list[tuple]:
        """Every received span as (Resource, InstrumentationScope, Span)."""
        with self._lock:
            requests = list(self.requests["traces"])
        return [
            (rs.resource, ss.scope, span)
            for req in requests
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def metrics(self) -> list[tuple]:
        """Every received metric as (Resource, InstrumentationScope, Metric)."""
        with self._lock:
            requests = list(self.requests["metrics"])
        return [
            (rm.resource, sm.scope, metric)
            for req in requests
            for rm in req.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]

    def calls_for(self, signal: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.signal == signal]

    def wait_for(self, predicate: Callable[..., bool], timeout: float = 5.0) -> bool:
        """Wait until `predicate()` (or `predicate(sink)`) is true; False after `timeout` seconds."""
        takes_sink = bool(inspect.signature(predicate).parameters)
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self) if takes_sink else predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._lock:
                self._lock.wait(min(remaining, 0.05))

    # -- the servicers' shared body

    def _handle(self, signal: str, request, context: grpc.ServicerContext):
        response_cls, partial_cls, field = _PARTIAL[signal]
        metadata = tuple((m.key, m.value) for m in context.invocation_metadata())
        with self._lock:
            action = self._script.popleft() if self._script else _Action()
            code = action.code or grpc.StatusCode.OK
            self.calls.append(Call(signal, time.monotonic(), code, metadata, context.peer()))
            if action.code is None:
                self.requests[signal].append(request)
            self._lock.notify_all()
        if action.code is not None:
            _abort(context, action)
        if action.rejected or action.message:
            partial = partial_cls(error_message=action.message, **{field: action.rejected})
            return response_cls(partial_success=partial)
        return response_cls()


def _abort(context: grpc.ServicerContext, action: _Action) -> None:
    message = f"otlp sink: scripted {action.code.name}"
    if action.retry_delay_s is None:
        context.abort(action.code, message)
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(action.retry_delay_s * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=action.code.value[0], message=message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, sink: OtlpSink) -> None:
        self._sink = sink

    def Export(self, request, context):  # noqa: N802 (generated name)
        return self._sink._handle("logs", request, context)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: OtlpSink) -> None:
        self._sink = sink

    def Export(self, request, context):  # noqa: N802
        return self._sink._handle("traces", request, context)


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink: OtlpSink) -> None:
        self._sink = sink

    def Export(self, request, context):  # noqa: N802
        return self._sink._handle("metrics", request, context)
