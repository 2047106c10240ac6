"""A real otad with anomalies to show: the service in-process, trained on normal logs of two services, then sent
slow failures of `checkout`; its anomaly events go to an OTLP sink. For the tests that run real backends over
otad's output (chDB over the events, Prometheus over /metrics).

Record times are the last minutes before now, so "last hour" queries find the events.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc

from receiver.service import Service
from receiver.settings import Settings
from tests.otlp_requests import log_request, normal_logs, slow_failures
from tests.otlp_sink import OtlpSink

TRACE_ID = bytes(range(1, 17)).hex()  # every record of tests.otlp_requests carries this trace id
SLOW = 3  # slow failures sent after training: the anomalies every test expects


@contextmanager
def anomalous_otad(data_dir: Path, sink: OtlpSink) -> Iterator[Service]:
    """The running service, after its events for the slow failures have reached `sink` (and it is idle)."""
    settings = Settings(
        **{
            "data_dir": data_dir,
            "grpc_endpoint": "127.0.0.1:0",
            "http_endpoint": "127.0.0.1:0",
            "metrics_endpoint": "127.0.0.1:0",
            "export_endpoint": sink.endpoint,
            "event_wait_s": 0,  # each finding's first event at once, not after 60 s (receiver/aggregate.py)
            "bootstrap_rows": 300,
            "train_epochs": 2,
            "batch_wait_ms": 20,
            "milvus_lite_process": False,
        }
    )
    service = Service(settings)
    service.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}")
        logs = logs_grpc.LogsServiceStub(channel)
        t0 = time.time_ns() - 10 * 60 * 1_000_000_000
        for service_name, seed in (("checkout", 0), ("payments", 1)):
            records = normal_logs(200, t0, random.Random(seed), f"{service_name}-n", duration_attr=True)
            logs.Export(log_request(records, service=service_name), timeout=10)
        deadline = time.monotonic() + 90
        while service.pipeline.state != "scoring" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.pipeline.state == "scoring", service.pipeline.status()
        start = t0 + 210 * 20_000_000
        records = normal_logs(20, start, random.Random(9), "checkout-m", duration_attr=True)
        logs.Export(log_request(records + slow_failures(SLOW, start, duration_attr=True)), timeout=10)
        channel.close()

        def has_slow() -> bool:
            uids = {
                kv.value.string_value
                for _, _, record in sink.log_records()
                for kv in record.attributes
                if kv.key == "anomaly.source.uid"
            }
            return any(u.startswith("slow-") for u in uids)

        assert sink.wait_for(has_slow, timeout=60), "no anomaly event for the slow failures"
        assert service.pipeline.wait_idle(30)
        service.emitter.flush(10)
        yield service
    finally:
        service.stop(5)
