"""Receive: the OTLP/gRPC server's transport settings (size limit, streams, keepalive, TLS, auth) as grpc options."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import grpc

__all__ = ["GrpcServerOptions", "bind"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class GrpcServerOptions:
    """Defaults equal the Settings defaults; `Service` builds this from Settings."""

    max_concurrent_streams: int = 100
    keepalive_time_s: int = 60
    keepalive_timeout_s: int = 20
    keepalive_min_time_s: int = 5
    max_connection_age_s: int = 0  # 0: never
    credentials: grpc.ServerCredentials | None = None  # None: plaintext
    interceptors: tuple[grpc.ServerInterceptor, ...] = field(default_factory=tuple)

    def channel_args(self, max_recv_mib: int) -> list[tuple[str, int]]:
        # grpc core does not inflate messages: server.py does, with an output cap of max_recv_mib, and so sees and
        # counts a gzip bomb. Core's max_receive_message_length then caps the message as sent (a message over the
        # limit compressed is over it inflated too); server.py counts what core refuses (docs/receiver.md).
        # With decompression off, a compressed grpc.health.v1 Check would not decode; health probes don't compress.
        args = [
            # A second process on the same port is an error, not a silent share of the connections.
            ("grpc.so_reuseport", 0),
            ("grpc.per_message_decompression", 0),
            ("grpc.max_receive_message_length", max_recv_mib * _MIB),
            ("grpc.max_send_message_length", 4 * _MIB),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_time_ms", self.keepalive_time_s * 1000),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_s * 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", self.keepalive_min_time_s * 1000),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", self.keepalive_min_time_s * 1000),
            ("grpc.http2.max_ping_strikes", 2),
        ]
        if self.max_connection_age_s:
            args += [
                ("grpc.max_connection_age_ms", self.max_connection_age_s * 1000),
                ("grpc.max_connection_age_grace_ms", 30_000),
            ]
        return args


def bind(
    server: grpc.Server, endpoint: str, credentials: grpc.ServerCredentials | None, variable: str
) -> int:
    """Listen on `endpoint`; the port bound, or an OSError (EADDRINUSE) naming `variable` when it is taken."""
    try:
        if credentials is None:
            port = server.add_insecure_port(endpoint)
        else:
            port = server.add_secure_port(endpoint, credentials)
    except RuntimeError:
        port = 0
    if not port:
        raise OSError(
            errno.EADDRINUSE, f"cannot listen on {endpoint} ({variable}): address in use or not local"
        )
    return port
