"""Receive: bearer-token authentication of OTLP clients, shared by the gRPC interceptor and the HTTP server.

Tokens come from OTAD_AUTH_TOKEN_FILE (one per line, so a rotation can list the old and the new token) and/or
OTAD_AUTH_TOKENS (comma-separated). Every presented token is compared with every configured one in constant
time (`hmac.compare_digest`), so timing reveals neither the token nor which one matched.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence

import grpc

from receiver.metrics import Metrics
from receiver.otlp.errors import UnauthenticatedError, to_status
from receiver.settings import ConfigError, Settings

__all__ = ["BearerAuth", "GrpcAuthInterceptor", "failure_message"]

logger = logging.getLogger(__name__)

# Kubernetes gRPC probes cannot send headers; health answers carry no data.
_UNAUTHENTICATED_METHODS = ("/grpc.health.v1.Health/",)


class BearerAuth:
    """Checks `authorization: Bearer <token>` against the configured tokens."""

    def __init__(self, tokens: Sequence[str]):
        if not tokens:
            raise ValueError("BearerAuth needs at least one token")
        self._tokens = [t.encode("utf-8") for t in tokens]

    @classmethod
    def from_settings(cls, settings: Settings) -> BearerAuth | None:
        """The configured tokens, or None when auth is off.

        Raises:
            ConfigError: the token file is missing, unreadable or empty.
        """
        tokens: list[str] = []
        if settings.auth_tokens is not None:
            tokens += [t.strip() for t in settings.auth_tokens.get_secret_value().split(",") if t.strip()]
        path = settings.auth_token_file
        if path is not None:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"OTAD_AUTH_TOKEN_FILE ({path}) cannot be read ({exc.strerror}); "
                    "point it at a file with one bearer token per line"
                ) from None
            found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not found:
                raise ConfigError(
                    f"OTAD_AUTH_TOKEN_FILE ({path}) holds no token; write one bearer token per line"
                )
            tokens += found
        if not tokens:
            return None
        logger.info("bearer-token auth on: %d token(s) accepted", len(tokens))
        return cls(tokens)

    def check(self, authorization: str | None) -> str | None:
        """None when the header carries a valid token, else the reason: missing, malformed or wrong."""
        if not authorization:
            return "missing"
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return "malformed"
        candidate = presented.strip().encode("utf-8")
        matched = False
        for token in self._tokens:  # no early exit: the time taken does not depend on which token matched
            matched |= hmac.compare_digest(candidate, token)
        return None if matched else "wrong"


class GrpcAuthInterceptor(grpc.ServerInterceptor):
    """Refuses OTLP/gRPC calls without a valid bearer token with UNAUTHENTICATED (before the request is read)."""

    def __init__(self, auth: BearerAuth, metrics: Metrics):
        self.auth, self.metrics = auth, metrics

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_UNAUTHENTICATED_METHODS):
            return continuation(handler_call_details)
        headers = {k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)}
        reason = self.auth.check(headers.get("authorization"))
        if reason is None:
            return continuation(handler_call_details)
        self.metrics.auth_failures.labels("grpc", reason).inc()
        status = to_status(UnauthenticatedError(failure_message(reason)))

        def deny(request, context):
            context.abort_with_status(status)

        return grpc.unary_unary_rpc_method_handler(deny)


def failure_message(reason: str) -> str:
    """The client-facing sentence for a `check` reason (never echoes the presented token)."""
    return {
        "missing": "missing authorization header: send 'authorization: Bearer <token>'",
        "malformed": "authorization header is not 'Bearer <token>'",
        "wrong": "bearer token not accepted",
    }[reason]
