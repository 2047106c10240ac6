"""Emit stage: anomalies as OTLP log events (an OCSF Detection Finding in the body), pushed over OTLP/gRPC.

The event is fixed by DESIGN.md §2 "The anomaly event"; the export follows the OTLP client rules
(opentelemetry-proto docs/specification.md, "Failures" and "Partial Success"; the Collector's
exporter/otlpexporter/otlp.go `shouldRetry`): retryable codes only, jittered exponential backoff under
one deadline per batch, honour `google.rpc.RetryInfo`, and never retry a partial success.
Events that cannot be exported are not lost: the caller has already stored every anomaly.
"""

from __future__ import annotations

import json
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
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from model.schema import DETECTION_FINDING, Anomaly, Value, content_uid

logger = logging.getLogger(__name__)

OTAD_SCOPE = "otad"
EVENT_NAME = "otad.anomaly"
ERROR_SCORE = 90.0  # scores at or above this are the top band: severity ERROR, OCSF High, pattern UNSEEN
OCSF_VERSION = "1.8.0"
MAX_BODY_BYTES = 16 * 1024
_MAX_EVIDENCE = 16
_MAX_NEIGHBORS = 100
_SUMMARY_FIELDS = ("message", "api.operation", "metric.name", "name")  # first one present goes in the title
_SIGNAL_NOUN = {"logs": "log record", "traces": "span", "metrics": "metric data point"}

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


# ---------------------------------------------------------------- the event


def _clip(text: str, limit: int) -> str:
    """One line, at most `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _any_value(value: Value) -> AnyValue:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _resource(anomaly: Anomaly) -> Resource:
    attributes = dict(anomaly.row.resource)
    attributes.setdefault("service.name", anomaly.row.service)
    return Resource(attributes=[KeyValue(key=k, value=_any_value(v)) for k, v in attributes.items()])


def _id_bytes(hex_id: str, size: int) -> bytes:
    """The id as bytes, or b"" (absent) when it is empty or malformed."""
    try:
        raw = bytes.fromhex(hex_id)
    except ValueError:
        return b""
    return raw if len(raw) == size and any(raw) else b""


def _is_top_band(anomaly: Anomaly) -> bool:
    return anomaly.score >= ERROR_SCORE


def _score_int(anomaly: Anomaly) -> int:
    """The score as the integer shown to people (truncated, so 89.9 is not shown as the top band's 90)."""
    return int(max(0.0, min(100.0, anomaly.score)))


def finding_uid(anomaly: Anomaly) -> str:
    """Stable finding id: the same source record under the same model version is the same finding."""
    return content_uid(anomaly.row.uid, anomaly.model_version)


def _title(anomaly: Anomaly) -> str:
    row = anomaly.row
    noun = _SIGNAL_NOUN.get(row.signal, "record")
    head = f"Unusual {noun} from {_clip(row.service, 120)} (score {_score_int(anomaly)}/100)"
    summary = next((row.fields[k] for k in _SUMMARY_FIELDS if row.fields.get(k) not in (None, "")), None)
    return f"{head}: {_clip(summary, 80)}" if summary is not None else head


def _analysis(anomaly: Anomaly) -> dict:
    evidence = [(_clip(f, 128), _clip(o, 200), _clip(t, 200)) for f, o, t in anomaly.evidence[:_MAX_EVIDENCE]]
    pattern = "UNSEEN" if _is_top_band(anomaly) else "RARE"
    anomalies = [
        {
            "observation_parameter": "embedding k-NN distance",
            "observation_type": "Distribution Analysis",
            "observed_pattern": pattern,
            "observations": [{"value": str(anomaly.raw_score)}],
        }
    ]
    anomalies += [
        {"observation_parameter": f, "observation_type": "Distribution Analysis", "observations": [{"value": o}]}
        for f, o, _ in evidence
    ]
    baselines = [{"observation_parameter": "threshold", "observations": [{"value": str(anomaly.threshold)}]}]
    baselines += [{"observation_parameter": f, "observations": [{"value": t}]} for f, _, t in evidence]
    return {
        "analysis_targets": [{"name": _clip(anomaly.row.service, 256), "type": "service"}],
        "anomalies": anomalies,
        "baselines": baselines,
    }


def finding(anomaly: Anomaly, version: str) -> dict:
    """The OCSF Detection Finding (class 2004, activity Create) for one anomaly, as a dict."""
    row, score = anomaly.row, _score_int(anomaly)
    top = _is_top_band(anomaly)
    related: dict = {"uid": row.uid, "type_uid": row.type_uid}
    if row.trace_id:
        related["trace_uid"] = row.trace_id
    body: dict = {
        "class_uid": DETECTION_FINDING, "class_name": "Detection Finding",
        "category_uid": 2, "category_name": "Findings",
        "activity_id": 1, "activity_name": "Create", "type_uid": DETECTION_FINDING * 100 + 1,
        "severity_id": 4 if top else 3, "severity": "High" if top else "Medium",
        "time": row.time_ms, "status_id": 1, "status": "New", "is_alert": True,
        "confidence_score": score, "risk_score": score,
        "metadata": {"product": {"name": "otad", "vendor_name": "otad", "version": version}, "version": OCSF_VERSION},
        "finding_info": {
            "uid": finding_uid(anomaly),
            "title": _title(anomaly),
            "desc": _clip(anomaly.explanation, 1024),
            "analytic": {"type_id": 4, "type": "Learning (ML/DL)", "name": anomaly.detector,
                         "version": anomaly.model_version},
            "types": ["Anomaly"],
            "first_seen_time": row.time_ms,
            "last_seen_time": row.time_ms,
            "created_time": anomaly.detected_unix_nano // 1_000_000,
            "related_events": [related],
        },
        "anomaly_analyses": [_analysis(anomaly)],
        "unmapped": {"anomaly.source.signal": row.signal},
    }
    if row.trace_id:
        body["trace"] = {"uid": row.trace_id, **({"span": {"uid": row.span_id}} if row.span_id else {})}
    return body


def _body_json(anomaly: Anomaly, version: str) -> str:
    """The finding as JSON, under MAX_BODY_BYTES: trailing evidence goes first, then the description."""
    body = finding(anomaly, version)
    analysis = body["anomaly_analyses"][0]
    while True:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        if len(text.encode("utf-8")) < MAX_BODY_BYTES:
            return text
        if len(analysis["anomalies"]) > 1:
            analysis["anomalies"].pop()
            analysis["baselines"].pop()
        else:
            body["finding_info"]["desc"] = _clip(body["finding_info"]["desc"], 200)
            body["finding_info"]["title"] = _clip(body["finding_info"]["title"], 200)
            return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def build_event(anomaly: Anomaly, version: str) -> tuple[Resource, LogRecord]:
    """The anomaly event (DESIGN.md §2) and the source record's resource it belongs under."""
    row, top = anomaly.row, _is_top_band(anomaly)
    neighbors = ArrayValue(values=[AnyValue(string_value=n) for n in anomaly.neighbors[:_MAX_NEIGHBORS]])
    attributes: list[tuple[str, AnyValue]] = [
        ("event.name", AnyValue(string_value=EVENT_NAME)),
        ("anomaly.score", AnyValue(double_value=float(anomaly.score))),
        ("anomaly.raw_score", AnyValue(double_value=float(anomaly.raw_score))),
        ("anomaly.threshold", AnyValue(double_value=float(anomaly.threshold))),
        ("anomaly.detector", AnyValue(string_value=anomaly.detector)),
        ("anomaly.model.version", AnyValue(string_value=anomaly.model_version)),
        ("anomaly.source.signal", AnyValue(string_value=row.signal)),
        ("anomaly.source.uid", AnyValue(string_value=row.uid)),
        ("anomaly.source.ocsf.class_uid", AnyValue(int_value=row.class_uid)),
        ("anomaly.explanation", AnyValue(string_value=_clip(anomaly.explanation, 1024))),
        ("anomaly.neighbors", AnyValue(array_value=neighbors)),
    ]
    record = LogRecord(
        time_unix_nano=row.time_unix_nano,
        observed_time_unix_nano=anomaly.detected_unix_nano,
        severity_number=17 if top else 13,  # SEVERITY_NUMBER_ERROR / SEVERITY_NUMBER_WARN
        severity_text="ERROR" if top else "WARN",
        event_name=EVENT_NAME,
        body=AnyValue(string_value=_body_json(anomaly, version)),
        attributes=[KeyValue(key=k, value=v) for k, v in attributes],
        trace_id=_id_bytes(row.trace_id, 16),
        span_id=_id_bytes(row.span_id, 8),
    )
    return _resource(anomaly), record


def build_request(anomalies: Sequence[Anomaly], version: str) -> ExportLogsServiceRequest:
    """One request; events under an identical resource share one ResourceLogs (scope `otad`/version)."""
    groups: dict[tuple, ScopeLogs] = {}
    request = ExportLogsServiceRequest()
    for anomaly in anomalies:
        resource, record = build_event(anomaly, version)
        key = tuple(sorted((kv.key, kv.value.SerializeToString(deterministic=True)) for kv in resource.attributes))
        if key not in groups:
            scope = ScopeLogs(scope=InstrumentationScope(name=OTAD_SCOPE, version=version))
            request.resource_logs.append(ResourceLogs(resource=resource, scope_logs=[scope]))
            groups[key] = request.resource_logs[-1].scope_logs[0]
        groups[key].log_records.append(record)
    return request


# ---------------------------------------------------------------- the export


def retry_delay(error: grpc.RpcError) -> float | None:
    """The server's `google.rpc.RetryInfo` delay in seconds, from `grpc-status-details-bin`; None if absent."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
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
        self._credentials = credentials  # TLS with these (e.g. a private CA) when not insecure; None: system CAs
        self.timeout_s, self.max_buffer, self.batch_size = timeout_s, max_buffer, batch_size
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._on_result = on_result
        self._buffer: deque[Anomaly] = deque()
        self._cond = threading.Condition()
        self._inflight = 0
        self._stop = threading.Event()
        self._closed = False
        self._shutdown_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._channel: grpc.Channel | None = None
        self._stub: LogsServiceStub | None = None
        self._call: grpc.Future | None = None
        self._stats = dict.fromkeys(("sent", "failed", "dropped", "partial_rejected", "retries", "stored_only"), 0)
        self._stats_lock = threading.Lock()
        self._last_logged: dict[str, tuple[float, int]] = {}

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
        logger.info("anomaly events export to %s (insecure=%s, timeout %.1fs)", self.endpoint, self.insecure,
                    self.timeout_s)

    def emit(self, anomalies: Sequence[Anomaly]) -> None:
        """Queue anomalies for export without blocking; when the buffer is full the oldest are dropped."""
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
                "drop", "dropped %d anomaly events (export buffer full at %d or emitter shut down; endpoint %s); "
                "they remain stored and queryable", dropped, self.max_buffer, self.endpoint)

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
            logger.warning("%d anomaly events not exported at shutdown (endpoint %s); they remain stored",
                           left, self.endpoint)
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

    def _export(self, batch: list[Anomaly]) -> None:
        request = build_request(batch, self.version)
        deadline = min(time.monotonic() + self.timeout_s, self._shutdown_deadline)
        attempt = 0
        while True:
            error = self._attempt(request, batch, deadline)
            if error is None:
                return
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.CANCELLED
            delay = retry_delay(error)
            retryable = code in RETRYABLE_CODES or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None)
            if delay is None:
                backoff = min(_BACKOFF_INITIAL_S * 2**attempt, _BACKOFF_MAX_S)
                delay = backoff * random.uniform(1 - _JITTER, 1 + _JITTER)
            if not retryable or self._stop.is_set() or time.monotonic() + delay >= deadline:
                return self._give_up(batch, code, error, "not retryable" if not retryable else "deadline reached")
            self._count("retries", 1)
            if self._stop.wait(delay):
                return self._give_up(batch, code, error, "shutting down")
            attempt += 1

    def _attempt(self, request: ExportLogsServiceRequest, batch: list[Anomaly], deadline: float):
        """One Export call; returns None when handled (sent, partly sent), else the RpcError."""
        timeout = max(0.001, deadline - time.monotonic())
        with self._cond:
            if self._stop.is_set() and self._shutdown_deadline <= time.monotonic():
                return _Cancelled()
            self._call = self._stub.Export.future(
                request, timeout=timeout, metadata=self._metadata, compression=grpc.Compression.Gzip)
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
            self._warn_limited("partial", "partial success from %s: rejected_log_records=%d of %d, message: %s",
                               self.endpoint, rejected, len(batch), _clip(message, 500))
        self._result("sent", len(batch) - min(rejected, len(batch)))
        return None

    def _give_up(self, batch: list[Anomaly], code: grpc.StatusCode, error: grpc.RpcError, why: str) -> None:
        self._result("failed", len(batch))
        details = error.details() if hasattr(error, "details") else ""
        self._warn_limited(f"fail:{code.name}:{why}",
                           "could not export %d anomaly events to %s: %s (%s: %s); they remain stored and queryable",
                           len(batch), self.endpoint, code.name, why, _clip(details or "", 200))

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
        """Log a warning, but the same kind of line at most once per _LOG_REPEAT_S (with a suppressed count)."""
        now = time.monotonic()
        with self._stats_lock:
            last, suppressed = self._last_logged.get(key, (float("-inf"), 0))
            if now - last < _LOG_REPEAT_S:
                self._last_logged[key] = (last, suppressed + 1)
                return
            self._last_logged[key] = (now, 0)
        if suppressed:
            msg += f" ({suppressed} similar messages suppressed)"
        logger.warning(msg, *args)


class _Cancelled(grpc.RpcError):
    """The call was cancelled by `shutdown`."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "cancelled by shutdown"
