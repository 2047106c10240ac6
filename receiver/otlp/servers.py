"""Receive: builds both OTLP servers (gRPC and HTTP) from Settings, sharing one ExportHandler, TLS and auth."""

from __future__ import annotations

from collections.abc import Callable

from receiver.consumer import Consumer
from receiver.metrics import Metrics
from receiver.otlp.auth import BearerAuth, GrpcAuthInterceptor
from receiver.otlp.grpc_options import GrpcServerOptions
from receiver.otlp.grpc_server import OtlpGrpcServer
from receiver.otlp.handler import ExportHandler
from receiver.otlp.http_server import OtlpHttpServer
from receiver.otlp.tls import ServerTls, load_server_tls
from receiver.rows.mapper import RowMapper
from receiver.settings import Settings

__all__ = ["Security", "build_servers", "grpc_server_options", "load_security"]

Security = tuple[ServerTls | None, BearerAuth | None]


def load_security(settings: Settings) -> Security:
    """TLS material and bearer tokens, read once; call it before anything is started.

    Raises:
        ConfigError: unusable TLS files or token file (one sentence naming the variable and the fix).
    """
    return load_server_tls(settings), BearerAuth.from_settings(settings)


def grpc_server_options(settings: Settings, security: Security, metrics: Metrics) -> GrpcServerOptions:
    """The gRPC transport settings, TLS and bearer-token interceptor of every otad gRPC server (OTLP and API)."""
    tls, auth = security
    return GrpcServerOptions(
        max_concurrent_streams=settings.grpc_max_concurrent_streams,
        keepalive_time_s=settings.grpc_keepalive_time_s,
        keepalive_timeout_s=settings.grpc_keepalive_timeout_s,
        keepalive_min_time_s=settings.grpc_keepalive_min_time_s,
        max_connection_age_s=settings.grpc_max_connection_age_s,
        credentials=tls.grpc_credentials() if tls else None,
        interceptors=(GrpcAuthInterceptor(auth, metrics),) if auth else (),
    )


def build_servers(
    settings: Settings,
    security: Security,
    consumer: Consumer,
    metrics: Metrics,
    has_room: Callable[[], bool] = lambda: True,
) -> tuple[OtlpGrpcServer, OtlpHttpServer]:
    """The OTLP/gRPC and OTLP/HTTP servers, bound but not started.

    Raises:
        OSError: an endpoint cannot be bound.
    """
    tls, auth = security
    export = ExportHandler(consumer, RowMapper(), metrics, settings.retry_after_s, has_room)
    options = grpc_server_options(settings, security, metrics)
    grpc_server = OtlpGrpcServer(
        settings.grpc_endpoint, export, max_recv_mib=settings.max_recv_mib, options=options
    )
    http_server = OtlpHttpServer(
        settings.http_endpoint,
        export,
        metrics,
        max_recv_mib=settings.max_recv_mib,
        retry_after_s=settings.retry_after_s,
        tls=tls,
        auth=auth,
    )
    return grpc_server, http_server
