"""Requests refused before their items are read are answered right, counted and logged, on both transports.

Each refusal kind goes to a real otad service (conftest `plain`) from a real client: grpcio (with its own gzip and
deflate), http.client, and, for what neither can send (a grpc-encoding grpc core does not know, a call without a
message, a deadline that passes before the message), HTTP/2 frames written by hand. Each test checks the status
the client got, `otad_receiver_refused_requests{reason}`, `otad_receiver_requests{outcome}` and the warning line.
The last test measures the RSS of a separate serving process (benchmarks/bench_refusal_memory.py).
"""

from __future__ import annotations

import gzip
import http.client
import importlib.util
import logging
import re
import socket
import struct
import time
import zlib
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb

from receiver.otlp.handler import warn_limited

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_refusal_memory.py"


@pytest.fixture(autouse=True)
def fresh_log_limits(monkeypatch):
    """warn_limited logs a kind once per 10 s; each test starts with none logged yet."""
    monkeypatch.setitem(warn_limited.__globals__, "_last_logged", {})


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A logs request of 65 MiB, one over the default limit, that gzip and deflate make about 65 KiB."""
    request = logs_pb.ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "a" * (65 * MIB)
    return request.SerializeToString()


def counts(service, transport: str, reason: str, outcome: str) -> tuple[float, float]:
    registry = service.metrics.registry
    refused = registry.get_sample_value(
        "otad_receiver_refused_requests_total", {"signal": "logs", "transport": transport, "reason": reason}
    )
    requests = registry.get_sample_value(
        "otad_receiver_requests_total", {"signal": "logs", "transport": transport, "outcome": outcome}
    )
    return refused or 0.0, requests or 0.0


def assert_counted(service, transport: str, reason: str, outcome: str, before: tuple[float, float]) -> None:
    """Both counters moved by one; waits a little, as grpc core may answer the client before otad counts."""
    deadline = time.monotonic() + 5
    while counts(service, transport, reason, outcome) != (before[0] + 1, before[1] + 1):
        assert time.monotonic() < deadline, (
            reason,
            outcome,
            before,
            counts(service, transport, reason, outcome),
        )
        time.sleep(0.02)


def warnings_of(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def grpc_export(port: int, payload: bytes, compression=None) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(
        f"localhost:{port}", options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        try:
            channel.unary_unary(LOGS_EXPORT)(payload, timeout=30, compression=compression)
        except grpc.RpcError as err:
            return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def http_post(port: int, body, headers: dict[str, str], *, chunked: bool = False) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("localhost", port, timeout=30)
    try:
        conn.request("POST", "/v1/logs", body=body, headers=headers, encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------ OTLP/gRPC

GRPC_CASES = {  # kind: (payload maker, grpcio compression, status, reason, outcome, text in the warning)
    "undecodable": (
        lambda bomb: b"\xff\xff\xff\xff not protobuf",
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "undecodable",
        "invalid_argument",
        "cannot decode the logs request",
    ),
    "gzip bomb": (
        lambda bomb: bomb,
        grpc.Compression.Gzip,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too_large",
        "resource_exhausted",
        "after gzip decompression",
    ),
    "deflate bomb": (
        lambda bomb: bomb,
        grpc.Compression.Deflate,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too_large",
        "resource_exhausted",
        "after deflate decompression",
    ),
    "corrupt gzip": (
        lambda bomb: b"\x1f\x8b\x08\x00 not deflate data",
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad_encoding",
        "invalid_argument",
        "not valid gzip",
    ),
    "truncated gzip": (
        lambda bomb: gzip.compress(b"\x0a\x00" * 5000)[:-12],
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad_encoding",
        "invalid_argument",
        "gzip data is truncated",
    ),
    "truncated deflate": (
        lambda bomb: zlib.compress(b"\x0a\x00" * 5000)[:-6],
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad_encoding",
        "invalid_argument",
        "truncated",
    ),
    # refused by grpc core from the length prefix, before otad's handler gets a message
    "over the limit uncompressed": (
        lambda bomb: bomb,
        None,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "grpc_core",
        "cancelled",
        "ended by grpc core",
    ),
}


@pytest.mark.parametrize("kind", GRPC_CASES)
def test_grpc_refusal_is_answered_counted_and_logged(plain, bomb, caplog, kind):
    make, compression, code, reason, outcome, text = GRPC_CASES[kind]
    before = counts(plain, "grpc", reason, outcome)
    with caplog.at_level(logging.WARNING):
        got, details = grpc_export(plain.grpc_port, make(bomb), compression)
        assert got == code, details
        assert_counted(plain, "grpc", reason, outcome, before)
    assert len(warnings_of(caplog, text)) == 1, caplog.text


def test_grpc_gzip_and_deflate_from_grpcio_are_accepted(plain):
    """grpc core no longer inflates; otad does, for both encodings grpcio offers."""
    request = logs_pb.ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "x" * 10_000
    for compression in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        assert grpc_export(plain.grpc_port, request.SerializeToString(), compression)[0] == grpc.StatusCode.OK


def test_grpc_refusals_of_one_kind_log_one_line(plain, caplog):
    """warn_limited: the first refusal of a kind is logged, the next ones within 10 s are only counted."""
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert grpc_export(plain.grpc_port, b"\xff not protobuf")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert len(warnings_of(caplog, "cannot decode the logs request")) == 1


# HTTP/2 written by hand (RFC 9113): what grpcio will not send. HPACK literals without indexing or Huffman coding.


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def raw_grpc_call(
    port: int,
    extra_headers: dict[str, str],
    message: bytes | None,
    *,
    half_close: bool = True,
    wait_s: float = 2.0,
) -> bytes:
    """One Export call on a fresh connection; `message` None sends no DATA frame, and without `half_close` the
    stream stays open. Returns what the server sent within `wait_s`."""
    headers = {
        ":method": "POST",
        ":scheme": "http",
        ":path": LOGS_EXPORT,
        ":authority": "localhost",
        "content-type": "application/grpc",
        "te": "trailers",
        **extra_headers,
    }
    block = b"".join(
        b"\x00" + bytes([len(k)]) + k.encode() + bytes([len(v)]) + v.encode() for k, v in headers.items()
    )
    with socket.create_connection(("localhost", port), timeout=wait_s) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0))  # preface, SETTINGS
        end_headers, end_stream = 0x4, 0x1
        sock.sendall(_frame(1, end_headers | (end_stream if message is None and half_close else 0), 1, block))
        if message is not None:
            sock.sendall(_frame(0, end_stream, 1, b"\x01" + struct.pack(">I", len(message)) + message))
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def grpc_status_in(received: bytes) -> int | None:
    match = re.search(rb"grpc-status([\x01-\x03])(\d+)", received)
    return int(match.group(2)) if match and len(match.group(2)) == match.group(1)[0] else None


def test_grpc_encoding_unknown_to_grpc_core_is_counted_as_a_grpc_core_refusal(plain, caplog):
    """zstd (a Collector exporter can send it): core answers INTERNAL before the message reaches otad."""
    before = counts(plain, "grpc", "grpc_core", "cancelled")
    with caplog.at_level(logging.WARNING):
        received = raw_grpc_call(plain.grpc_port, {"grpc-encoding": "zstd"}, b"\x28\xb5\x2f\xfd zstd frame")
        assert grpc_status_in(received) == grpc.StatusCode.INTERNAL.value[0]
        assert_counted(plain, "grpc", "grpc_core", "cancelled", before)
    assert len(warnings_of(caplog, "ended by grpc core")) == 1


def test_grpc_call_without_a_message_is_invalid_argument(plain, caplog):
    before = counts(plain, "grpc", "undecodable", "invalid_argument")
    with caplog.at_level(logging.WARNING):
        received = raw_grpc_call(plain.grpc_port, {}, None)
    assert grpc_status_in(received) == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert_counted(plain, "grpc", "undecodable", "invalid_argument", before)
    assert len(warnings_of(caplog, "carried no request message")) == 1


def test_grpc_deadline_passing_before_the_message_is_not_a_refusal(plain, caplog):
    """The client's deadline, not otad's refusal: counted as a deadline_exceeded request, not logged."""
    refused_before = counts(plain, "grpc", "grpc_core", "cancelled")[0]
    deadline_before = counts(plain, "grpc", "grpc_core", "deadline_exceeded")[1]
    with caplog.at_level(logging.WARNING):
        received = raw_grpc_call(
            plain.grpc_port, {"grpc-timeout": "200m"}, None, half_close=False, wait_s=1.5
        )
    assert grpc_status_in(received) == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    deadline = time.monotonic() + 5
    while counts(plain, "grpc", "grpc_core", "deadline_exceeded")[1] != deadline_before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert counts(plain, "grpc", "grpc_core", "cancelled")[0] == refused_before
    assert not warnings_of(caplog, "ended by grpc core")


# ------------------------------------------------------------------------------------------------ OTLP/HTTP

PROTOBUF = {"Content-Type": "application/x-protobuf"}
HTTP_CASES = {  # kind: (body maker, headers, chunked, status, reason, outcome, text in the warning)
    "undecodable protobuf": (
        lambda bomb: b"\xff\xff\xff\xff not protobuf",
        PROTOBUF,
        False,
        400,
        "undecodable",
        "invalid_argument",
        "cannot decode the logs request",
    ),
    "undecodable json": (
        lambda bomb: b'{"resourceLogs": [',
        {"Content-Type": "application/json"},
        False,
        400,
        "undecodable",
        "invalid_argument",
        "not JSON",
    ),
    "over the limit by Content-Length": (
        lambda bomb: bomb,
        PROTOBUF,
        False,
        413,
        "too_large",
        "resource_exhausted",
        "(Content-Length)",
    ),
    "over the limit, chunked": (
        lambda bomb: (bomb[i : i + MIB] for i in range(0, len(bomb), MIB)),
        PROTOBUF,
        True,
        413,
        "too_large",
        "resource_exhausted",
        "larger than 64 MiB",
    ),
    "gzip bomb": (
        gzip.compress,
        {**PROTOBUF, "Content-Encoding": "gzip"},
        False,
        413,
        "too_large",
        "resource_exhausted",
        "after gzip decompression",
    ),
    "corrupt gzip": (
        lambda bomb: b"\x1f\x8b\x08\x00 not deflate data",
        {**PROTOBUF, "Content-Encoding": "gzip"},
        False,
        400,
        "bad_encoding",
        "invalid_argument",
        "not valid gzip",
    ),
    "unsupported encoding": (
        lambda bomb: b"x",
        {**PROTOBUF, "Content-Encoding": "br"},
        False,
        415,
        "unsupported_encoding",
        "invalid_argument",
        "unsupported content encoding",
    ),
    "unsupported media type": (
        lambda bomb: b"hello",
        {"Content-Type": "text/plain"},
        False,
        415,
        "unsupported_media_type",
        "invalid_argument",
        "unsupported content type",
    ),
}


@pytest.mark.parametrize("kind", HTTP_CASES)
def test_http_refusal_is_answered_counted_and_logged(plain, bomb, caplog, kind):
    make, headers, chunked, status, reason, outcome, text = HTTP_CASES[kind]
    before = counts(plain, "http", reason, outcome)
    with caplog.at_level(logging.WARNING):
        try:
            got, _ = http_post(plain.http_port, make(bomb), headers, chunked=chunked)
        except (ConnectionError, http.client.RemoteDisconnected):
            got = None  # the server answered and closed while the body was still being sent
        if got is not None:
            assert got == status
        assert_counted(plain, "http", reason, outcome, before)
    assert len(warnings_of(caplog, text)) == 1, caplog.text


def test_http_slow_body_is_a_counted_read_timeout(plain, caplog):
    before = counts(plain, "http", "read_timeout", "deadline_exceeded")
    plain.http.app.read_timeout_s = 0.3
    try:
        with (
            caplog.at_level(logging.WARNING),
            socket.create_connection(("localhost", plain.http_port), 10) as sock,
        ):
            sock.sendall(
                b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 100\r\n\r\n0123456789"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 408 ")
    finally:
        plain.http.app.read_timeout_s = 30.0
    assert_counted(plain, "http", "read_timeout", "deadline_exceeded", before)
    assert len(warnings_of(caplog, "not received within")) == 1


# ------------------------------------------------------------------------------------------------ memory


def test_rss_returns_after_three_over_limit_gzip_requests():
    """A separate serving process, so the client's own 65 MiB buffers are not in the figure (~10 s)."""
    spec = importlib.util.spec_from_file_location("bench_refusal_memory", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.measure(("grpc-gzip", "http-gzip", "http-chunked"), repeat=3, settle_s=1.5)
    for kind, status, before, after, _after_gc, _after_trim in results:
        assert status in (grpc.StatusCode.RESOURCE_EXHAUSTED, 413, -1), (kind, status)
        assert after - before < 20, (
            f"{kind}: RSS {before:.0f} MiB before, {after:.0f} MiB after three refusals"
        )
