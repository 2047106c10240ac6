"""Replay OTLP/JSON lines to an OTLP/gRPC endpoint in order, one Export per line, as a polite exporter.

- UNAVAILABLE (otad: queue full, or not ready) is retried after the RetryInfo delay the answer carries (1 s when
  it carries none); DEADLINE_EXCEEDED is retried too (row ids are content based: a resend is an upsert).
- Other errors are not retried: the line's records count as lost and the first messages are kept.
- Pacing: no new line while the service reports more than QUEUE_SOFT_CAP rows waiting, and once the bootstrap
  rows are sent, none until the cold-start model scores. A Collector at real speed sends only a minute or two
  of data while the first model trains; replaying hours of data during that minute would put all of it in the
  backlog instead of through the online path the benchmark wants to measure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from benchmarks.detection_lib.datasets import count_records
from receiver.otlp.otlpjson import from_dict

QUEUE_SOFT_CAP = 50_000
TRAINING_TIMEOUT_S = 1800.0
MAX_RETRIES = 200
_REJECTED = {"logs": "rejected_log_records", "traces": "rejected_spans", "metrics": "rejected_data_points"}


def retry_delay(err: grpc.RpcError) -> float | None:
    """The RetryInfo delay of an error answer, in seconds, if it carries one."""
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class Replayer:
    def __init__(self, port: int, status: Callable[[], dict[str, Any]], log: Callable[[str], None]) -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.stubs = {
            "logs": logs_service_pb2_grpc.LogsServiceStub(self.channel),
            "traces": trace_service_pb2_grpc.TraceServiceStub(self.channel),
            "metrics": metrics_service_pb2_grpc.MetricsServiceStub(self.channel),
        }
        self.status, self.log = status, log
        self._status: dict[str, Any] = {}
        self._status_at = 0.0
        self.stats: dict[str, Any] = {
            "lines": 0,
            "records_sent": 0,
            "unavailable_answers": 0,
            "retry_wait_seconds": 0.0,
            "deadline_retries": 0,
            "partial_rejected": 0,
            "lost_records": 0,
            "errors": [],
            "queue_pauses_seconds": 0.0,
        }

    def _fresh_status(self, max_age_s: float = 0.5) -> dict[str, Any]:
        if time.monotonic() - self._status_at > max_age_s:
            self._status, self._status_at = self.status(), time.monotonic()
        return self._status

    def _send(self, signal: str, request: Any, n: int) -> None:
        for _ in range(MAX_RETRIES):
            try:
                resp = self.stubs[signal].Export(request, timeout=30)
                self.stats["partial_rejected"] += getattr(resp.partial_success, _REJECTED[signal], 0)
                return
            except grpc.RpcError as err:
                code = err.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.UNAVAILABLE:
                    delay = retry_delay(err) or 1.0
                    self.stats["unavailable_answers"] += 1
                    self.stats["retry_wait_seconds"] += delay
                    time.sleep(delay)
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self.stats["deadline_retries"] += 1
                    continue
                self._lost(n, f"{code.name}: {err.details()}")  # type: ignore[attr-defined]
                return
        self._lost(n, f"gave up after {MAX_RETRIES} attempts")

    def _lost(self, n: int, message: str) -> None:
        self.stats["lost_records"] += n
        if len(self.stats["errors"]) < 5:
            self.stats["errors"].append(message)

    def _pace(self) -> None:
        t0 = time.monotonic()
        while self._fresh_status().get("queued_rows", 0) > QUEUE_SOFT_CAP:
            time.sleep(0.5)
        self.stats["queue_pauses_seconds"] += time.monotonic() - t0

    def _wait_scoring(self, started: float) -> None:
        deadline = time.monotonic() + TRAINING_TIMEOUT_S
        while time.monotonic() < deadline:
            st = self._fresh_status(0.0)
            if st.get("state") == "scoring":
                self.stats["seconds_to_scoring"] = round(time.monotonic() - started, 1)
                self.log(
                    f"  cold-start model {st.get('model_version')} scoring after "
                    f"{self.stats['seconds_to_scoring']}s of replay"
                )
                return
            if st.get("train_error"):
                self.stats["train_error"] = st["train_error"]
                return
            time.sleep(1.0)
        self.stats["training_timeout"] = True

    def run(self, path: Path, bootstrap_rows: int) -> dict[str, Any]:
        started = time.monotonic()
        waited_for_model = False
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                data = json.loads(line)
                n = count_records(data)
                if not waited_for_model and self.stats["records_sent"] >= bootstrap_rows:
                    self._wait_scoring(started)
                    waited_for_model = True
                self._pace()
                request = from_dict(data)
                signal = (
                    "logs" if "resourceLogs" in data else "traces" if "resourceSpans" in data else "metrics"
                )
                self._send(signal, request, n)
                self.stats["lines"] += 1
                self.stats["records_sent"] += n
        if not waited_for_model:
            self._wait_scoring(started)
        self.channel.close()
        self.stats["seconds"] = round(time.monotonic() - started, 1)
        self.stats["retry_wait_seconds"] = round(self.stats["retry_wait_seconds"], 1)
        self.stats["queue_pauses_seconds"] = round(self.stats["queue_pauses_seconds"], 1)
        return self.stats
