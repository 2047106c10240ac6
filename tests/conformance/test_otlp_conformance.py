"""OTLP conformance of otad's receivers (opentelemetry-proto docs/specification.md; shared/reference/anchors.md
§A), every rule over BOTH transports against a real Service: real gRPC and HTTP servers, Milvus Lite in a temp
dir, port 0. Clients are the OTel SDK exporters where they can express the case, raw grpc / http.client where a
rule needs a malformed or oversized request."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import ssl
import time

import grpc
import pytest
import requests
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytestmark = pytest.mark.integration

T0 = 1_762_041_600_000_000_000
MIB = 1024 * 1024
TRANSPORTS = ("grpc", "http")
SERVICE = {
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
}
REQUEST = {
    "logs": logs_pb.ExportLogsServiceRequest,
    "traces": trace_pb.ExportTraceServiceRequest,
    "metrics": metrics_pb.ExportMetricsServiceRequest,
}
RESPONSE = {
    "logs": logs_pb.ExportLogsServiceResponse,
    "traces": trace_pb.ExportTraceServiceResponse,
    "metrics": metrics_pb.ExportMetricsServiceResponse,
}


# ------------------------------------------------------------------------------------------------ requests
def logs_request(
    n: int, tag: str, body: str = "GET /cart served in 12.0 ms"
) -> logs_pb.ExportLogsServiceRequest:
    req = logs_pb.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    kv = rl.resource.attributes.add(key="service.name")
    kv.value.string_value = "checkout"
    sl = rl.scope_logs.add()
    for i in range(n):
        rec = sl.log_records.add(time_unix_nano=T0 + i * 1_000_000, severity_number=9)
        rec.body.string_value = body
        uid = rec.attributes.add(key="log.record.uid")
        uid.value.string_value = f"{tag}-{i}"
    return req


def half_bad_traces() -> trace_pb.ExportTraceServiceRequest:
    req = trace_pb.ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    spans.add(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        name="ok",
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 1000,
    )
    spans.add(trace_id=b"\x01\x02", span_id=bytes(range(1, 9)), name="bad", start_time_unix_nano=T0)
    return req


def all_bad_traces() -> trace_pb.ExportTraceServiceRequest:
    req = trace_pb.ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01", span_id=b"\x02", name="bad")
    return req


# ------------------------------------------------------------------------------------------------ raw clients
class Answer:
    """One Export answer, transport-neutral: `code` is the gRPC code (HTTP: also `http_status`, `headers`)."""

    def __init__(self, code, status=None, response=None, http_status=None, headers=None, body=b""):
        self.code, self.status, self.response = code, status, response
        self.http_status, self.headers, self.body = http_status, headers or {}, body

    def retry_delay_s(self) -> int | None:
        for detail in self.status.details if self.status else ():
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.seconds
        return None


def grpc_call(
    port: int,
    signal: str,
    payload: bytes,
    *,
    gzip_: bool = False,
    metadata=(),
    credentials=None,
    timeout: float = 20,
) -> Answer:
    target = f"localhost:{port}"
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        call = channel.unary_unary(f"/{SERVICE[signal]}/Export")
        try:
            data = call(
                payload,
                timeout=timeout,
                metadata=metadata,
                compression=grpc.Compression.Gzip if gzip_ else None,
            )
        except grpc.RpcError as err:
            status = rpc_status.from_call(err) or status_pb2.Status(
                code=err.code().value[0], message=err.details() or ""
            )
            return Answer(err.code(), status=status)
    return Answer(grpc.StatusCode.OK, response=RESPONSE[signal].FromString(data))


HTTP_CODES = {
    200: grpc.StatusCode.OK,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def http_call(
    port: int,
    path: str,
    body: bytes,
    *,
    content_type: str = "application/x-protobuf",
    method: str = "POST",
    headers: dict | None = None,
    context: ssl.SSLContext | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Answer:
    own = conn is None
    if own:
        conn = (
            http.client.HTTPSConnection("localhost", port, context=context, timeout=20)
            if context
            else http.client.HTTPConnection("localhost", port, timeout=20)
        )
    try:
        conn.request(method, path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        if own:
            conn.close()
    signal = path.rsplit("/", 1)[-1]
    as_json = resp.getheader("content-type") == "application/json"
    answer = Answer(
        HTTP_CODES.get(resp.status, grpc.StatusCode.UNKNOWN),
        http_status=resp.status,
        headers={k.lower(): v for k, v in resp.getheaders()},
        body=data,
    )
    if resp.status == 200 and signal in RESPONSE:
        answer.response = (
            json_format.Parse(data, RESPONSE[signal]()) if as_json else RESPONSE[signal].FromString(data)
        )
    elif resp.status != 200:
        answer.status = (
            json_format.Parse(data, status_pb2.Status()) if as_json else status_pb2.Status.FromString(data)
        )
    return answer


def export(transport: str, service, signal: str, request, *, gzip_: bool = False, **kw) -> Answer:
    payload = request.SerializeToString() if hasattr(request, "SerializeToString") else request
    if transport == "grpc":
        return grpc_call(service.grpc_port, signal, payload, gzip_=gzip_, **kw)
    headers = kw.pop("headers", {})
    if gzip_:
        payload, headers = gzip.compress(payload), {**headers, "Content-Encoding": "gzip"}
    return http_call(service.http_port, f"/v1/{signal}", payload, headers=headers, **kw)


def stored_uids(service) -> set[str]:
    assert service.pipeline.wait_idle(15)
    return {row["uid"] for part in service.store.iter_backlog() for row in part}


def counter(service, name: str, **labels) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------------------------------------ SDK data
def sdk_telemetry(tag: str):
    """Spans, log records and metrics made by the real OTel SDK; returns them with the uids otad must store."""
    resource = Resource({"service.name": f"svc-{tag}"})
    spans, logs, reader = InMemorySpanExporter(), InMemoryLogRecordExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    with tracer_provider.get_tracer("conformance").start_as_current_span(f"GET /{tag}") as span:
        span.set_attribute("http.request.method", "GET")
        span_id = f"{span.get_span_context().span_id:016x}"
    logger_provider.get_logger("conformance").emit(
        LogRecord(
            timestamp=time.time_ns(),
            body=f"hello {tag}",
            severity_number=SeverityNumber.INFO,
            attributes={"log.record.uid": f"log-{tag}", "tenant": "a"},
        )
    )
    meter_provider.get_meter("conformance").create_histogram(f"latency_{tag}", unit="ms").record(12.5)
    return spans.get_finished_spans(), logs.get_finished_logs(), reader.get_metrics_data(), span_id


def sdk_exporters(transport: str, port: int, *, scheme: str = "http", ca=None, client=None, headers=None):
    """(span, log, metric) exporters of the OTel SDK for one transport."""
    if transport == "grpc":
        creds = None
        if ca is not None:
            key, cert = (client[1].read_bytes(), client[0].read_bytes()) if client else (None, None)
            creds = grpc.ssl_channel_credentials(ca.read_bytes(), key, cert)
        common = {
            "endpoint": f"localhost:{port}",
            "insecure": creds is None,
            "credentials": creds,
            "headers": headers,
            "timeout": 10,
            "compression": grpc.Compression.Gzip,
        }
        return GrpcSpanExporter(**common), GrpcLogExporter(**common), GrpcMetricExporter(**common)
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's `verify` (psf/requests#3829), and
    # this machine sets them: a session that ignores the environment makes certificate_file count.
    session = requests.Session()
    session.trust_env = False
    common = {
        "certificate_file": str(ca) if ca else None,
        "headers": headers,
        "timeout": 10,
        "session": session,
        "compression": HttpCompression.Gzip,
        "client_certificate_file": str(client[0]) if client else None,
        "client_key_file": str(client[1]) if client else None,
    }
    base = f"{scheme}://localhost:{port}/v1"
    return (
        HttpSpanExporter(endpoint=f"{base}/traces", **common),
        HttpLogExporter(endpoint=f"{base}/logs", **common),
        HttpMetricExporter(endpoint=f"{base}/metrics", **common),
    )


def sdk_export(transport: str, port: int, tag: str, **kw) -> tuple[tuple, str]:
    spans, logs, metrics, span_id = sdk_telemetry(tag)
    span_exp, log_exp, metric_exp = sdk_exporters(transport, port, **kw)
    try:
        results = (span_exp.export(spans), log_exp.export(logs), metric_exp.export(metrics))
    finally:
        for exporter in (span_exp, log_exp, metric_exp):
            exporter.shutdown()
    return results, span_id


SUCCESS = (SpanExportResult.SUCCESS, LogRecordExportResult.SUCCESS, MetricExportResult.SUCCESS)


# ================================================================================================ the rules
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sdk_exporters_deliver_every_signal(plain, transport):
    results, span_id = sdk_export(
        transport, plain.grpc_port if transport == "grpc" else plain.http_port, f"sdk-{transport}"
    )
    assert results == SUCCESS
    uids = stored_uids(plain)
    assert {f"log-sdk-{transport}", span_id} <= uids
    rows = [
        r["row"]
        for part in plain.store.iter_backlog()
        for r in part
        if r["service"] == f"svc-sdk-{transport}"
    ]
    assert {r["signal"] for r in rows} == {"logs", "traces", "metrics"}
    log_row = next(r for r in rows if r["uid"] == f"log-sdk-{transport}")
    assert log_row["fields"]["message"] == f"hello sdk-{transport}"
    assert counter(plain, "otad_receiver_accepted_metric_points_total", transport=transport) >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("signal", ["logs", "traces", "metrics"])
def test_empty_request_succeeds_without_partial_success(plain, transport, signal):
    answer = export(transport, plain, signal, REQUEST[signal]())
    assert answer.code == grpc.StatusCode.OK
    assert not answer.response.HasField("partial_success")


def test_empty_json_request_succeeds(plain):
    answer = http_call(plain.http_port, "/v1/logs", b"{}", content_type="application/json")
    assert answer.http_status == 200 and answer.body == b"{}"
    assert answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_partial_success_counts_and_names_the_first_bad_item(plain, transport):
    before = counter(
        plain,
        "otad_receiver_rejected_spans_total",
        reason="invalid trace_id length 2 (want 16)",
        transport=transport,
    )
    answer = export(transport, plain, "traces", half_bad_traces())
    assert answer.code == grpc.StatusCode.OK
    partial = answer.response.partial_success
    assert partial.rejected_spans == 1
    assert partial.error_message.startswith("1/2 spans rejected") and "span 1" in partial.error_message
    rejected = sum(
        s.value
        for m in plain.metrics.registry.collect()
        if m.name == "otad_receiver_rejected_spans"
        for s in m.samples
        if s.name.endswith("_total") and s.labels["transport"] == transport
    )
    assert rejected > before


def test_partial_success_in_json(plain):
    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": "0102030405060708090a0b0c0d0e0f10",
                                    "spanId": "0102030405060708",
                                    "name": "ok",
                                    "startTimeUnixNano": str(T0),
                                    "endTimeUnixNano": str(T0 + 1000),
                                    "kind": 2,
                                },
                                {
                                    "traceId": "0102",
                                    "spanId": "0102030405060708",
                                    "name": "bad",
                                    "startTimeUnixNano": str(T0),
                                },
                            ]
                        }
                    ]
                }
            ]
        }
    )
    answer = http_call(plain.http_port, "/v1/traces", body.encode(), content_type="application/json")
    assert answer.http_status == 200
    data = json.loads(answer.body)
    assert int(data["partialSuccess"]["rejectedSpans"]) == 1
    assert data["partialSuccess"]["errorMessage"].startswith("1/2 spans rejected")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_undecodable_request_is_invalid_argument_and_never_retried(plain, transport):
    answer = export(transport, plain, "logs", b"\xff\xff\xff\xff not protobuf")
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot decode the logs request" in answer.status.message
    if transport == "http":
        assert answer.http_status == 400 and "retry-after" not in answer.headers
        assert answer.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_request_with_only_bad_items_is_invalid_argument(plain, transport):
    answer = export(transport, plain, "traces", all_bad_traces())
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "1/1 spans rejected" in answer.status.message


def test_deeply_nested_json_is_a_400_not_a_crash(plain):
    value = '{"kvlistValue":{"values":[{"key":"k","value":' * 5000 + "{}" + "}]}}" * 5000
    body = ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + value + "}]}]}]}").encode()
    answer = http_call(plain.http_port, "/v1/logs", body, content_type="application/json")
    assert answer.http_status == 400 and "too deep" in answer.status.message.lower()


def test_undecodable_json_gets_a_json_status(plain):
    answer = http_call(plain.http_port, "/v1/logs", b'{"resourceLogs": [', content_type="application/json")
    assert answer.http_status == 400 and answer.headers["content-type"] == "application/json"
    assert json.loads(answer.body)["code"] == 3
    bad_id = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": "01"}]}]}]})
    answer = http_call(plain.http_port, "/v1/traces", bad_id.encode(), content_type="application/json")
    assert answer.http_status == 400 and "not hex" in answer.status.message


def big_logs(mib: int) -> bytes:
    """One log record whose body alone is `mib` MiB (compresses to ~1/1000)."""
    return logs_request(1, "big", body="a" * (mib * MIB)).SerializeToString()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gzip_bomb_over_64_mib_after_decompression_is_resource_exhausted(plain, transport):
    payload = big_logs(65)
    answer = export(transport, plain, "logs", payload, gzip_=True)
    assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    if transport == "http":
        assert answer.http_status == 413 and "after gzip decompression" in answer.status.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gzip_request_just_under_the_limit_is_accepted(plain, transport):
    request = logs_request(1, f"under-{transport}", body="a" * (60 * MIB))
    answer = export(transport, plain, "logs", request, gzip_=True)
    assert answer.code == grpc.StatusCode.OK and not answer.response.HasField("partial_success")
    assert f"under-{transport}-0" in stored_uids(plain)


def test_uncompressed_oversized_grpc_request_is_resource_exhausted(plain):
    assert grpc_call(plain.grpc_port, "logs", big_logs(65)).code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_oversized_content_length_gets_413_before_the_body_is_read(plain):
    with socket.create_connection(("localhost", plain.http_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: %d\r\n\r\n" % (65 * MIB)
        )
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_full_queue_is_unavailable_with_a_retry_delay(plain, transport):
    before = counter(
        plain, "otad_receiver_refused_log_records_total", reason="queue_full", transport=transport
    )
    requests_before = counter(
        plain, "otad_receiver_requests_total", signal="logs", transport=transport, outcome="unavailable"
    )
    answer = export(transport, plain, "logs", logs_request(1200, "overload"))  # queue_rows is 1000
    assert answer.code == grpc.StatusCode.UNAVAILABLE
    assert answer.retry_delay_s() == 5
    if transport == "http":
        assert answer.http_status == 503 and answer.headers["retry-after"] == "5"
    assert (
        counter(plain, "otad_receiver_refused_log_records_total", reason="queue_full", transport=transport)
        > before
    )
    assert (
        counter(
            plain, "otad_receiver_requests_total", signal="logs", transport=transport, outcome="unavailable"
        )
        == requests_before + 1
    )
    assert "overload-0" not in stored_uids(plain)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gzip_request_is_accepted_and_stored(plain, transport):
    answer = export(transport, plain, "logs", logs_request(20, f"gz-{transport}"), gzip_=True)
    assert answer.code == grpc.StatusCode.OK
    assert {f"gz-{transport}-{i}" for i in range(20)} <= stored_uids(plain)


def test_json_hex_ids_integer_enums_and_unknown_fields(plain):
    body = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "js"}}],
                    "futureResourceField": 1,
                },
                "scopeLogs": [
                    {
                        "scope": {"name": "s"},
                        "logRecords": [
                            {
                                "timeUnixNano": str(T0),
                                "severityNumber": 17,
                                "flags": 1,
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "body": {"stringValue": "payment failed"},
                                "attributes": [{"key": "log.record.uid", "value": {"stringValue": "json-1"}}],
                                "someFieldFromTheFuture": {"nested": [1, 2]},
                            }
                        ],
                    }
                ],
            }
        ],
        "unknownTopLevel": True,
    }
    answer = http_call(
        plain.http_port, "/v1/logs", json.dumps(body).encode(), content_type="application/json"
    )
    assert answer.http_status == 200 and json.loads(answer.body) == {}
    assert plain.pipeline.wait_idle(15)
    (row,) = [r["row"] for part in plain.store.iter_backlog() for r in part if r["uid"] == "json-1"]
    assert row["trace_id"] == "5b8efff798038103d269b633813fc60c" and row["span_id"] == "eee19b7ec3c1b174"
    assert row["service"] == "js" and row["fields"]["message"] == "payment failed"


def test_wrong_content_type_method_and_path(plain):
    port = plain.http_port
    answer = http_call(port, "/v1/logs", b"hello", content_type="text/plain")
    assert answer.http_status == 415 and "application/x-protobuf" in answer.status.message
    answer = http_call(port, "/v1/logs", b"", method="GET")
    assert answer.http_status == 405 and answer.headers["allow"] == "POST"
    answer = http_call(port, "/v1/profiles", b"")
    assert answer.http_status == 404 and "/v1/logs" in answer.status.message
    answer = http_call(port, "/v1/logs", b"x", headers={"Content-Encoding": "br"})
    assert answer.http_status == 415
    answer = http_call(port, "/v1/logs", b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert answer.http_status == 400
    assert (
        counter(
            plain, "otad_receiver_requests_total", signal="unknown", transport="http", outcome="not_found"
        )
        >= 1
    )


def test_too_many_http_requests_in_flight_is_503_with_retry_after(plain):
    before = counter(
        plain, "otad_receiver_refused_log_records_total", reason="too_many_requests", transport="http"
    )
    plain.http.app.max_in_flight = 0  # every request is then one too many
    try:
        answer = http_call(plain.http_port, "/v1/logs", logs_request(1, "crowded").SerializeToString())
    finally:
        plain.http.app.max_in_flight = 32
    assert answer.http_status == 503 and answer.headers["retry-after"] == "5" and answer.retry_delay_s() == 5
    assert (
        counter(
            plain, "otad_receiver_refused_log_records_total", reason="too_many_requests", transport="http"
        )
        == before + 1
    )
    assert "crowded-0" not in stored_uids(plain)


def test_slow_http_body_gets_408_and_frees_its_slot(plain):
    plain.http.app.read_timeout_s = 0.5
    try:
        with socket.create_connection(("localhost", plain.http_port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 100\r\n\r\n0123456789"
            )
            start = time.monotonic()
            head = sock.recv(4096)
            waited = time.monotonic() - start
    finally:
        plain.http.app.read_timeout_s = 30.0
    assert head.startswith(b"HTTP/1.1 408 ") and 0.3 < waited < 5
    assert plain.http.app.in_flight == 0


def test_http_keep_alive_serves_many_requests_on_one_connection(plain):
    conn = http.client.HTTPConnection("localhost", plain.http_port, timeout=10)
    try:
        http_call(plain.http_port, "/v1/logs", b"", conn=conn)
        first = conn.sock
        for _ in range(3):
            assert (
                http_call(
                    plain.http_port, "/v1/logs", logs_request(1, "ka").SerializeToString(), conn=conn
                ).http_status
                == 200
            )
        assert conn.sock is first  # http.client reconnects (new socket) if the server closed it
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------ TLS and auth
def client_context(pki, *, ca=None, client=True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca or pki.ca))
    if client:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tls_with_bearer_token_accepts_sdk_exporters(tls_auth, pki, tokens, transport):
    port = tls_auth.grpc_port if transport == "grpc" else tls_auth.http_port
    results, span_id = sdk_export(
        transport,
        port,
        f"tls-{transport}",
        scheme="https",
        ca=pki.ca,
        headers={"authorization": f"Bearer {tokens['file-new']}"},
    )
    assert results == SUCCESS
    assert {f"log-tls-{transport}", span_id} <= stored_uids(tls_auth)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("presented", [None, "Bearer nope", "Basic {token}", "Bearer {token}x", "Bearer  "])
def test_missing_or_wrong_token_is_unauthenticated(tls_auth, pki, tokens, transport, presented):
    authorization = presented.format(token=tokens["file-old"]) if presented else None
    headers = {"authorization": authorization} if authorization else {}
    if transport == "grpc":
        creds = grpc.ssl_channel_credentials(pki.read("ca"))
        answer = grpc_call(
            tls_auth.grpc_port,
            "logs",
            logs_request(1, "denied").SerializeToString(),
            credentials=creds,
            metadata=tuple(headers.items()),
        )
    else:
        answer = http_call(
            tls_auth.http_port,
            "/v1/logs",
            logs_request(1, "denied").SerializeToString(),
            headers=headers,
            context=client_context(pki, client=False),
        )
        assert answer.http_status == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert answer.code == grpc.StatusCode.UNAUTHENTICATED
    assert tokens["file-old"] not in answer.status.message  # never echo what was presented
    reason = (
        "missing"
        if presented is None
        else "wrong"
        if "x" in presented or "nope" in presented
        else "malformed"
    )
    assert counter(tls_auth, "otad_auth_failures_total", transport=transport, reason=reason) >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("which", ["file-old", "file-new", "env"])
def test_every_configured_token_is_accepted(tls_auth, pki, tokens, transport, which):
    token = tokens[which]
    payload = logs_request(1, f"tok-{transport}-{token}").SerializeToString()
    if transport == "grpc":
        answer = grpc_call(
            tls_auth.grpc_port,
            "logs",
            payload,
            credentials=grpc.ssl_channel_credentials(pki.read("ca")),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    else:
        answer = http_call(
            tls_auth.http_port,
            "/v1/logs",
            payload,
            headers={"Authorization": f"bearer {token}"},
            context=client_context(pki, client=False),
        )
    assert answer.code == grpc.StatusCode.OK


def test_grpc_health_needs_no_token(tls_auth, pki):
    with grpc.secure_channel(
        f"localhost:{tls_auth.grpc_port}", grpc.ssl_channel_credentials(pki.read("ca"))
    ) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tls_server_refuses_plaintext_and_untrusting_clients(tls_auth, pki, tokens, transport):
    token = (("authorization", f"Bearer {tokens['file-old']}"),)
    payload = logs_request(1, "x").SerializeToString()
    if transport == "grpc":
        assert (
            grpc_call(tls_auth.grpc_port, "logs", payload, metadata=token, timeout=3).code
            == grpc.StatusCode.UNAVAILABLE
        )
        other = grpc.ssl_channel_credentials(pki.read("other_ca"))
        assert (
            grpc_call(tls_auth.grpc_port, "logs", payload, metadata=token, credentials=other, timeout=3).code
            == grpc.StatusCode.UNAVAILABLE
        )
    else:
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            http_call(tls_auth.http_port, "/v1/logs", payload, headers=dict(token))
        with pytest.raises(ssl.SSLCertVerificationError):
            http_call(
                tls_auth.http_port,
                "/v1/logs",
                payload,
                headers=dict(token),
                context=client_context(pki, ca=pki.other_ca, client=False),
            )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mtls_accepts_a_client_certificate(mtls, pki, transport):
    port = mtls.grpc_port if transport == "grpc" else mtls.http_port
    results, span_id = sdk_export(
        transport,
        port,
        f"mtls-{transport}",
        scheme="https",
        ca=pki.ca,
        client=(pki.client_cert, pki.client_key),
    )
    assert results == SUCCESS
    assert {f"log-mtls-{transport}", span_id} <= stored_uids(mtls)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mtls_refuses_a_client_without_certificate(mtls, pki, transport):
    payload = logs_request(1, "no-cert").SerializeToString()
    if transport == "grpc":
        answer = grpc_call(
            mtls.grpc_port,
            "logs",
            payload,
            credentials=grpc.ssl_channel_credentials(pki.read("ca")),
            timeout=3,
        )
        assert answer.code == grpc.StatusCode.UNAVAILABLE
    else:
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            http_call(mtls.http_port, "/v1/logs", payload, context=client_context(pki, client=False))
    assert "no-cert-0" not in stored_uids(mtls)


def test_a_burst_of_concurrent_grpc_exports_is_never_refused_as_resource_exhausted(plain):
    """A Collector runs ~10 export workers per exporter; many exporters at once must never see a bare
    RESOURCE_EXHAUSTED (clients drop data on it). grpc.server's maximum_concurrent_rpcs would send exactly that."""
    payload = logs_request(1, "burst").SerializeToString()
    channels = [
        grpc.insecure_channel(f"localhost:{plain.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(4)
    ]
    try:
        calls = [ch.unary_unary(f"/{SERVICE['logs']}/Export") for ch in channels]
        futures = [calls[i % 4].future(payload, timeout=30) for i in range(400)]
        codes = []
        for f in futures:
            try:
                f.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
    finally:
        for ch in channels:
            ch.close()
    assert set(codes) == {grpc.StatusCode.OK}, {c: codes.count(c) for c in set(codes)}
