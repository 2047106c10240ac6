"""A client of otad's API for the CLI (receiver/cli_api.py): gRPC to OTAD_QUERY_ENDPOINT, or JSON over HTTP to
the OTLP/HTTP server's /v1/otad/ routes, with TLS (a CA bundle, optionally a client certificate) and a token."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message

from receiver.api.methods import METHODS

__all__ = ["ApiCallError", "ApiClient", "Connection"]


class ApiCallError(Exception):
    """A call that failed: `code` is the gRPC status name (NOT_FOUND, UNAVAILABLE, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass(frozen=True)
class Connection:
    """Where and how to reach the API. `http_url` set (http[s]://host:port): JSON over HTTP; else gRPC."""

    endpoint: str = "localhost:4320"
    http_url: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None
    timeout_s: float = 30.0

    @property
    def where(self) -> str:
        return self.http_url or self.endpoint


_CODES = {c.value[0]: c.name for c in grpc.StatusCode}


class ApiClient:
    """Calls `/<service>/<method>` (as in METHODS, e.g. "otad.v1.AnomalyService", "ListAnomalies")."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self._channel: grpc.Channel | None = None

    def call(self, service: str, method: str, request: Message) -> Message:
        """The response message.

        Raises:
            ApiCallError: the call failed (its status code and message).
        """
        desc = METHODS[f"/{service}/{method}"]
        response_type = message_factory.GetMessageClass(desc.output_type)
        if self.conn.http_url:
            return self._http(service, method, request, response_type)
        return self._grpc(service, method, request, response_type)

    def _grpc(self, service: str, method: str, request: Message, response_type: type[Message]) -> Message:
        if self._channel is None:
            self._channel = self._open_channel()
        stub: grpc.UnaryUnaryMultiCallable[Message, Message] = self._channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        metadata = (("authorization", f"Bearer {self.conn.token}"),) if self.conn.token else None
        try:
            return stub(request, timeout=self.conn.timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else None
            raise ApiCallError(code.name, details or str(exc)) from None

    def _open_channel(self) -> grpc.Channel:
        c = self.conn
        if not (c.tls or c.ca_file):
            return grpc.insecure_channel(c.endpoint)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=c.ca_file.read_bytes() if c.ca_file else None,
            private_key=c.key_file.read_bytes() if c.key_file else None,
            certificate_chain=c.cert_file.read_bytes() if c.cert_file else None,
        )
        return grpc.secure_channel(c.endpoint, credentials)

    def _http(self, service: str, method: str, request: Message, response_type: type[Message]) -> Message:
        c = self.conn
        assert c.http_url is not None
        url = f"{c.http_url.rstrip('/')}/v1/otad/{service.rsplit('.', 1)[-1]}/{method}"
        body = json_format.MessageToJson(request, preserving_proto_field_name=True).encode()
        headers = {"content-type": "application/json"}
        if c.token:
            headers["authorization"] = f"Bearer {c.token}"
        context = None
        if url.startswith("https://"):
            context = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
            if c.cert_file and c.key_file:
                context.load_cert_chain(c.cert_file, c.key_file)
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=c.timeout_s, context=context) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiCallError(*_http_error(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiCallError("UNAVAILABLE", str(getattr(exc, "reason", exc))) from None
        return json_format.Parse(data, response_type(), ignore_unknown_fields=True)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


def _http_error(exc: urllib.error.HTTPError) -> tuple[str, str]:
    try:
        body = json.loads(exc.read() or b"{}")
        return _CODES.get(int(body.get("code", 2)), "UNKNOWN"), str(body.get("message", exc.reason))
    except (ValueError, TypeError):
        return "UNKNOWN", f"HTTP {exc.code} {exc.reason}"
