"""Fuzz the real OTLP/gRPC server (real Service, Milvus Lite, spool on): hostile requests and raw bytes get a
correct status within the deadline, and accepted + rejected + ignored == items sent, always."""

from __future__ import annotations

import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc

from receiver.service import Service
from receiver.settings import Settings
from tests.fuzz.strategies import count_items, deep_value, logs_requests, metrics_requests, traces_requests

pytestmark = pytest.mark.integration
SCALE = float(os.environ.get("OTAD_FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=int(25 * SCALE),
    deadline=10_000,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
FIELD = {"logs": "rejected_log_records", "traces": "rejected_spans", "metrics": "rejected_data_points"}
METHOD = {
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    svc = Service(
        Settings(
            data_dir=data,
            grpc_endpoint="localhost:0",
            http_endpoint="localhost:0",
            metrics_endpoint="localhost:0",
            bootstrap_rows=10_000_000,
            batch_wait_ms=5,
        )
    )
    svc.start()
    channel = grpc.insecure_channel(
        f"localhost:{svc.grpc_port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    svc.fuzz_channel = channel
    svc.fuzz_reconnects = 0
    yield svc
    print(f"\ngRPC fuzz: {svc.fuzz_reconnects} reconnects after a refused stream")
    svc.fuzz_channel.close()
    svc.stop(5)


def counted(svc, signal: str) -> dict[str, float]:
    """The service's own counters for one signal (summed over reasons)."""
    unit = {"logs": "log_records", "traces": "spans", "metrics": "metric_points"}[signal]
    out = {"accepted": 0.0, "rejected": 0.0, "ignored": 0.0}
    for family in svc.metrics.registry.collect():
        key = {
            f"otad_receiver_accepted_{unit}": "accepted",
            f"otad_receiver_rejected_{unit}": "rejected",
            "otad_ignored_items": "ignored",
        }.get(family.name)
        if key:
            out[key] += sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels.get("signal", signal) == signal
            )
    return out


def _with_reconnect(svc, call):
    """Run `call`; on a transport-level refusal, reconnect once and retry, as an OTLP client does.

    In runs of several hundred hostile requests on one connection, grpc-core has been seen to refuse every
    new stream on that connection (RST_STREAM REFUSED_STREAM -> UNAVAILABLE, retryable) while a new
    connection works; see docs/reliability.md (open items). Nothing is counted for a refused call.
    """
    try:
        return call()
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.UNAVAILABLE or "Stream removed" not in (err.details() or ""):
            raise
        svc.fuzz_channel.close()
        svc.fuzz_channel = grpc.insecure_channel(
            f"localhost:{svc.grpc_port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
        svc.fuzz_reconnects += 1
        return call()


def send(svc, signal: str, request):
    def stub():
        return {
            "logs": logs_grpc.LogsServiceStub,
            "traces": trace_grpc.TraceServiceStub,
            "metrics": metrics_grpc.MetricsServiceStub,
        }[signal](svc.fuzz_channel)

    before = counted(svc, signal)
    total = count_items(signal, request)
    try:
        response = _with_reconnect(
            svc, lambda: stub().Export(request, timeout=10, compression=grpc.Compression.Gzip)
        )
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        response, code = None, err.code()
        details = err.details()
    after = counted(svc, signal)
    delta = {k: after[k] - before[k] for k in after}
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, details)
    if code == grpc.StatusCode.OK:
        rejected = getattr(response.partial_success, FIELD[signal])
        assert delta["accepted"] + delta["rejected"] + delta["ignored"] == total, (delta, total)
        assert rejected == delta["rejected"]
        if rejected:
            assert f"{rejected}/{total}" in response.partial_success.error_message
            assert "(first at resource " in response.partial_success.error_message
    elif "cannot decode" in details:  # the request could not even be parsed (e.g. nesting past upb's limit)
        assert delta == {"accepted": 0, "rejected": 0, "ignored": 0}
    else:  # every item rejected: nothing was accepted, everything is accounted for
        assert (
            delta["accepted"] == 0 and delta["rejected"] + delta["ignored"] == total and delta["rejected"] > 0
        )
        assert "(first at resource " in details
    return code


@FUZZ
@given(logs_requests())
def test_logs_over_grpc(service, request):
    send(service, "logs", request)


@FUZZ
@given(traces_requests())
def test_traces_over_grpc(service, request):
    send(service, "traces", request)


@FUZZ
@given(metrics_requests())
def test_metrics_over_grpc(service, request):
    send(service, "metrics", request)


@settings(
    max_examples=int(60 * SCALE), deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=2048), st.sampled_from(["logs", "traces", "metrics"]))
def test_raw_bytes_get_ok_or_invalid_argument_never_internal(service, data, signal):
    def call():
        return service.fuzz_channel.unary_unary(
            METHOD[signal], request_serializer=None, response_deserializer=None
        )(data, timeout=10)

    try:
        _with_reconnect(service, call)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())


def test_invalid_utf8_in_a_string_field_is_invalid_argument(service):
    request = logs_pb.ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add(
        time_unix_nano=1
    ).body.string_value = "MARKER"
    data = request.SerializeToString().replace(b"MARKER", b"\xff\xfe\xfd\xc3\x28\x80")
    call = service.fuzz_channel.unary_unary(
        METHOD["logs"], request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as err:
        call(data, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot decode" in err.value.details()
    # ... while the same bytes in a bytes-typed AnyValue are fine
    request.resource_logs[0].scope_logs[0].log_records[0].body.bytes_value = b"\xff\xfe\xfd\xc3\x28\x80"
    assert (
        not logs_grpc.LogsServiceStub(service.fuzz_channel)
        .Export(request, timeout=10)
        .HasField("partial_success")
    )


@pytest.mark.parametrize("depth", [20, 120, 1000])
def test_deeply_nested_body_gets_a_status_not_a_crash(service, depth):
    request = logs_pb.ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=1)
    record.body.CopyFrom(deep_value(min(depth, 20)))
    data = request.SerializeToString()
    if depth > 20:  # past upb's parse limit: build the bytes by hand (an array holding an array ...)
        inner = b"\x0a\x04leaf"  # AnyValue{string_value: "leaf"}
        for _ in range(depth):
            array = b"\x0a" + _varint(len(inner)) + inner  # ArrayValue{values: [inner]}
            inner = b"\x2a" + _varint(len(array)) + array  # AnyValue{array_value: array}
        record.body.Clear()
        body_field = b"\x2a" + _varint(len(inner)) + inner  # LogRecord.body (field 5)
        data = _wrap(record.SerializeToString() + body_field)
    call = service.fuzz_channel.unary_unary(
        METHOD["logs"], request_serializer=None, response_deserializer=None
    )
    try:
        call(data, timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()
    assert code == (grpc.StatusCode.OK if depth <= 20 else grpc.StatusCode.INVALID_ARGUMENT)
    assert service.pipeline.status()["ready"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _wrap(log_record: bytes) -> bytes:
    """ExportLogsServiceRequest{resource_logs: [{scope_logs: [{log_records: [log_record]}]}]}."""
    scope_logs = b"\x12" + _varint(len(log_record)) + log_record
    resource_logs = b"\x12" + _varint(len(scope_logs)) + scope_logs
    return b"\x0a" + _varint(len(resource_logs)) + resource_logs
