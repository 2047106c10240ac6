"""The anomaly emitter configured the OTel SDK way (OTEL_EXPORTER_OTLP_[LOGS_]*, OTAD_EXPORT_* overriding), one test
per variable family, each against a real server: otad's own OTLP/gRPC and OTLP/HTTP servers (plaintext, TLS +
bearer auth, mTLS; otad is a LogsService too and skips its own events) or a small OTLP/HTTP sink that answers
429/503 with Retry-After on cue."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from receiver.emit import emitter_from_settings
from receiver.settings import ConfigError, Settings
from tests.conformance.test_emitter_tls import anomaly

pytestmark = pytest.mark.integration


def ignored(service) -> float:
    return service.metrics.registry.get_sample_value("otad_ignored_items_total", {"signal": "logs"}) or 0.0


def export_two(env: dict[str, str], **settings) -> dict:
    """Two events through an emitter built as the service builds it, from `env` and `settings`; its stats."""
    emitter = emitter_from_settings(Settings(**settings), "test", environ=env)
    emitter.start()
    try:
        emitter.emit([anomaly("e1"), anomaly("e2")])
        assert emitter.flush(15)
    finally:
        emitter.shutdown(2)
    return emitter.stats


# ------------------------------------------------------------------------------- ENDPOINT (URL) and PROTOCOL
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_endpoint_url_with_http_scheme_is_plaintext(plain, protocol):
    port = plain.grpc_port if protocol == "grpc" else plain.http_port
    before = ignored(plain)
    stats = export_two(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://localhost:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    )
    assert stats["sent"] == 2 and stats["failed"] == 0
    assert ignored(plain) == before + 2  # arrived (at /v1/logs for HTTP: appended to the generic endpoint)


def test_signal_specific_http_endpoint_is_used_as_is(plain):
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:1",
    }
    ok = export_two(
        {**env, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"http://localhost:{plain.http_port}/v1/logs"}
    )
    assert ok["sent"] == 2  # the logs endpoint wins over the generic one
    root = export_two({**env, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"http://localhost:{plain.http_port}"})
    assert root["failed"] == 2 and root["retries"] == 0  # no /v1/logs appended: 404 at "/", not retried


def test_otad_export_endpoint_overrides_and_keeps_host_port(plain):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:1"}
    assert export_two(env, export_endpoint=f"localhost:{plain.grpc_port}")["sent"] == 2


# --------------------------------------------------------------------------- CERTIFICATE, HEADERS, INSECURE
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("with_token", [True, False])
def test_https_endpoint_private_ca_and_percent_encoded_headers(tls_auth, pki, tokens, protocol, with_token):
    port = tls_auth.grpc_port if protocol == "grpc" else tls_auth.http_port
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://localhost:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
        "OTEL_EXPORTER_OTLP_HEADERS": "tenant=a"
        + (f",authorization=Bearer%20{tokens['env']}" if with_token else ""),
    }
    stats = export_two(env)
    if with_token:  # "Bearer%20x" arrived as "Bearer x"
        assert stats["sent"] == 2 and stats["failed"] == 0
    else:  # UNAUTHENTICATED / 401 is not retried
        assert stats["failed"] == 2 and stats["retries"] == 0


def test_insecure_false_turns_host_port_into_tls(tls_auth, pki, tokens):
    env = {
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"localhost:{tls_auth.grpc_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "false",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": f"authorization=Bearer%20{tokens['env']}",
    }
    assert export_two(env)["sent"] == 2
    plaintext = {**env, "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    plaintext.pop("OTEL_EXPORTER_OTLP_CERTIFICATE")
    assert export_two(plaintext)["failed"] == 2  # a plaintext client cannot talk to a TLS server


# --------------------------------------------------------------------------- CLIENT_KEY, CLIENT_CERTIFICATE
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("client_cert", [True, False])
def test_client_certificate_for_mtls(mtls, pki, protocol, client_cert):
    port = mtls.grpc_port if protocol == "grpc" else mtls.http_port
    env = {
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"https://localhost:{port}"
        + ("/v1/logs" if protocol != "grpc" else ""),
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
    }
    if client_cert:
        env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] = str(pki.client_cert)
        env["OTEL_EXPORTER_OTLP_CLIENT_KEY"] = str(pki.client_key)
    stats = export_two(env, export_timeout_s=3)
    assert (stats["sent"], stats["failed"]) == ((2, 0) if client_cert else (0, 2))


def test_client_key_without_certificate_names_the_variable(pki):
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://localhost:4317",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.ca),
    }
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_CLIENT_KEY is set but no client certificate"):
        emitter_from_settings(Settings(), "test", environ=env)


def test_a_certificate_file_that_is_not_pem_names_the_variable(tmp_path):
    bad = tmp_path / "ca.txt"
    bad.write_text("not a certificate")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://localhost:4317",
        "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE": str(bad),
    }
    with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE \(.*\) is not PEM"):
        emitter_from_settings(Settings(), "test", environ=env)


# ----------------------------------------------------------------------------------------------- TIMEOUT
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_timeout_in_milliseconds_bounds_every_attempt(protocol):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "400",
        }
        t0 = time.monotonic()
        stats = export_two(env)
        took = time.monotonic() - t0
    assert stats["failed"] == 2 and took < 3.0, took


# -------------------------------------------------------------------------------- OTLP/HTTP retry rules
class _HttpSink(ThreadingHTTPServer):
    """OTLP/HTTP logs endpoint answering the scripted statuses first (with Retry-After), then 200."""

    def __init__(self, script: list[tuple[int, str | None]]) -> None:
        self.script, self.calls, self.bodies = list(script), [], []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                sink.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                sink.calls.append((time.monotonic(), self.path, self.headers["Content-Encoding"]))
                status, retry_after = sink.script.pop(0) if sink.script else (200, None)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.mark.parametrize(
    ("status", "retried"), [(429, True), (502, True), (503, True), (504, True), (400, False), (500, False)]
)
def test_http_retries_only_the_retryable_statuses_after_retry_after(status, retried):
    sink = _HttpSink([(status, "1")])
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
        stats = export_two(env)
    finally:
        sink.shutdown()
    assert [c[1:] for c in sink.calls[:1]] == [("/v1/logs", "gzip")]
    if retried:
        assert stats["sent"] == 2 and stats["retries"] == 1 and len(sink.calls) == 2
        assert sink.calls[1][0] - sink.calls[0][0] >= 0.95  # Retry-After: 1 honoured
    else:
        assert stats["failed"] == 2 and stats["retries"] == 0 and len(sink.calls) == 1


# ----------------------------------------------------------------------------------------------- COMPRESSION
@pytest.mark.parametrize(
    ("env", "encoding"), [({}, "gzip"), ({"OTEL_EXPORTER_OTLP_COMPRESSION": "none"}, None)]
)
def test_http_compression_gzip_by_default_and_none_when_asked(env, encoding):
    sink = _HttpSink([])
    try:
        base = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
        stats = export_two({**base, **env})
    finally:
        sink.shutdown()
    assert stats["sent"] == 2 and [c[2] for c in sink.calls] == [encoding] * len(sink.calls)
    body = gzip.decompress(sink.bodies[0]) if encoding else sink.bodies[0]
    request = ExportLogsServiceRequest.FromString(body)
    records = [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    assert len(records) >= 1


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_grpc_exports_with_either_compression(plain, compression):
    before = ignored(plain)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://localhost:{plain.grpc_port}",
        "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": compression,
    }
    stats = export_two(env)
    assert stats["sent"] == 2 and stats["failed"] == 0
    assert ignored(plain) == before + 2
