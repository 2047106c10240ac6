"""The OTLP/gRPC transport settings take effect on a real grpc server (no Milvus needed: only health is called)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from receiver.metrics import Metrics
from receiver.otlp.grpc_options import GrpcServerOptions
from receiver.otlp.grpc_server import OtlpGrpcServer
from receiver.otlp.handler import ExportHandler
from receiver.rows.mapper import RowMapper

pytestmark = pytest.mark.integration


def serve(**options) -> OtlpGrpcServer:
    handler = ExportHandler(None, RowMapper(), Metrics(), retry_after_s=1)  # type: ignore[arg-type]  # only health is called
    server = OtlpGrpcServer("localhost:0", handler, options=GrpcServerOptions(**options))
    server.start()
    return server


def states_after_a_call(port: int, seconds: float, **channel_options) -> list[grpc.ChannelConnectivity]:
    """Connect, make one health call, then watch the channel's connectivity for `seconds`."""
    seen: list[grpc.ChannelConnectivity] = []
    lock = threading.Lock()
    channel = grpc.insecure_channel(f"localhost:{port}", options=list(channel_options.items()))
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

        def record(state):
            with lock:
                seen.append(state)

        channel.subscribe(record)
        time.sleep(seconds)
        channel.unsubscribe(record)
    finally:
        channel.close()
    with lock:
        return list(seen)


def test_max_connection_age_closes_old_connections():
    server = serve(max_connection_age_s=1)
    try:
        states = states_after_a_call(server.port, 2.5)
    finally:
        server.stop(1)
    assert states[0] == grpc.ChannelConnectivity.READY
    assert grpc.ChannelConnectivity.IDLE in states  # the server sent GOAWAY: the client must reconnect


PINGS = {"grpc.keepalive_permit_without_calls": 1, "grpc.http2.max_pings_without_data": 0}


def test_connections_are_kept_without_max_connection_age_and_with_polite_pings():
    """The control for both tests around it: no age limit, client pings no more often than allowed."""
    server = serve(keepalive_min_time_s=1)
    try:
        states = states_after_a_call(server.port, 3, **{"grpc.keepalive_time_ms": 1500, **PINGS})
    finally:
        server.stop(1)
    assert states == [grpc.ChannelConnectivity.READY]


def test_clients_pinging_too_often_are_sent_away():
    server = serve(keepalive_min_time_s=30)
    try:
        states = states_after_a_call(server.port, 5, **{"grpc.keepalive_time_ms": 500, **PINGS})
    finally:
        server.stop(1)
    assert grpc.ChannelConnectivity.READY in states and len(states) > 1, states
