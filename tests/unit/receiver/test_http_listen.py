"""The OTLP/HTTP and metrics listening sockets: port 0 takes a port no other socket holds; a fixed port can be
taken again at once after a restart."""

from __future__ import annotations

import socket

from receiver.metrics import Metrics
from receiver.otlp.handler import ExportHandler
from receiver.otlp.http_server import OtlpHttpServer
from receiver.rows.mapper import RowMapper
from tests.helpers import free_port


def _server(endpoint: str) -> OtlpHttpServer:
    metrics = Metrics()
    return OtlpHttpServer(endpoint, ExportHandler(lambda rows: None, RowMapper(), metrics, 5), metrics)


def test_port_zero_is_bound_without_address_reuse_and_listens_at_once() -> None:
    # With SO_REUSEADDR, bind() to port 0 may pick the local port of an outgoing connection, and the later
    # listen() fails with "address in use" (seen once in CI as "the OTLP/HTTP server did not start").
    server = _server("127.0.0.1:0")
    try:
        sock = server._sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1  # listening before start()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass  # the kernel queues the connection: the port is ours
    finally:
        sock.close()


def test_a_fixed_port_keeps_address_reuse_for_restarts() -> None:
    port = free_port()
    server = _server(f"127.0.0.1:{port}")
    try:
        assert server.port == port
        assert server._sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    finally:
        server._sock.close()


def test_the_metrics_port_follows_the_same_rule() -> None:
    from prometheus_client import CollectorRegistry

    from receiver.health import HealthServer

    for endpoint, reuse in (("127.0.0.1:0", 0), (f"127.0.0.1:{free_port()}", 1)):
        server = HealthServer(endpoint, CollectorRegistry(), dict)
        try:
            assert server.httpd.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == reuse, endpoint
        finally:
            server.httpd.server_close()
