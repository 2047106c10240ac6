"""Receive and emit: TLS material for the OTLP servers (TLS, and mTLS with a client CA) and the emitter's channel.

Files are read once at start-up; anything unusable stops start-up with a sentence naming the variable.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from receiver.export_config import ExportConfig, resolve_export
from receiver.settings import ConfigError, Settings

__all__ = ["ServerTls", "emitter_credentials", "emitter_ssl_context", "load_server_tls"]


@dataclass(frozen=True, slots=True)
class ServerTls:
    """Server certificate chain and key (PEM), and the client CA bundle when clients must present a cert."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    cert: bytes
    key: bytes
    client_ca: bytes | None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """For the OTLP/HTTP server: TLS 1.2+, client certificates required when a client CA is set."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=str(self.client_ca_file))
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _read(path: Path, variable: str, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{variable} ({path}) cannot be read ({exc.strerror}); point it at a PEM {what}"
        ) from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{variable} ({path}) is not PEM; point it at a PEM {what}")
    return data


def load_server_tls(settings: Settings) -> ServerTls | None:
    """The servers' TLS material, or None for plaintext (the default, on localhost).

    Raises:
        ConfigError: a file is missing or unreadable, or the certificate and key do not belong together.
    """
    cert_file, key_file = settings.tls_cert_file, settings.tls_key_file
    if cert_file is None:
        return None
    assert key_file is not None  # Settings refuses one without the other
    cert = _read(cert_file, "OTAD_TLS_CERT_FILE", "certificate (chain)")
    key = _read(key_file, "OTAD_TLS_KEY_FILE", "private key")
    ca = None
    if settings.tls_client_ca_file is not None:
        ca = _read(settings.tls_client_ca_file, "OTAD_TLS_CLIENT_CA_FILE", "CA bundle")
    tls = ServerTls(cert_file, key_file, settings.tls_client_ca_file, cert, key, ca)
    try:
        tls.ssl_context()
    except ssl.SSLError as exc:
        raise ConfigError(
            f"OTAD_TLS_CERT_FILE and OTAD_TLS_KEY_FILE do not form a usable pair ({exc.reason}); "
            "use the key that belongs to the certificate"
        ) from None
    return tls


def _export_config(source: Settings | ExportConfig) -> ExportConfig:
    return source if isinstance(source, ExportConfig) else resolve_export(source, environ={})


def _variable(config: ExportConfig, name: str, fallback: str) -> str:
    return config.sources.get(name, fallback)


def emitter_credentials(source: Settings | ExportConfig) -> grpc.ChannelCredentials | None:
    """gRPC TLS credentials for the anomaly-event export (CA bundle, client certificate and key for mTLS);
    None means plaintext. Settings alone are resolved without the OTEL_* environment (tests).

    Raises:
        ConfigError: a file is missing or not PEM; the sentence names the variable it came from.
    """
    config = _export_config(source)
    if config.insecure:
        return None
    ca, key, cert = _export_pem(config)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _export_pem(config: ExportConfig) -> tuple[bytes | None, bytes | None, bytes | None]:
    ca = key = cert = None
    if config.ca_file is not None:
        ca = _read(config.ca_file, _variable(config, "ca", "OTAD_EXPORT_CA_FILE"), "CA bundle")
    if config.client_cert_file is not None and config.client_key_file is not None:
        cert = _read(
            config.client_cert_file,
            _variable(config, "cert", "OTAD_EXPORT_CLIENT_CERT_FILE"),
            "client certificate (chain)",
        )
        key = _read(
            config.client_key_file, _variable(config, "key", "OTAD_EXPORT_CLIENT_KEY_FILE"), "private key"
        )
    return ca, key, cert


def emitter_ssl_context(source: Settings | ExportConfig) -> ssl.SSLContext | None:
    """The same TLS material for the OTLP/HTTP export; None means plaintext.

    Raises:
        ConfigError: as `emitter_credentials`, or the client certificate and key do not belong together.
    """
    config = _export_config(source)
    if config.insecure:
        return None
    _export_pem(config)  # readable and PEM, with the variable named if not
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.client_cert_file is not None and config.client_key_file is not None:
        try:
            context.load_cert_chain(config.client_cert_file, config.client_key_file)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{_variable(config, 'cert', 'OTAD_EXPORT_CLIENT_CERT_FILE')} and "
                f"{_variable(config, 'key', 'OTAD_EXPORT_CLIENT_KEY_FILE')} do not form a usable pair "
                f"({exc.reason}); use the key that belongs to the certificate"
            ) from None
    return context
