"""Emit stage configuration: where and how anomaly events are exported, by the OTel SDK's conventions.

Each value comes from the first of: `OTAD_EXPORT_*` (otad's override), `OTEL_EXPORTER_OTLP_LOGS_*` (the logs
signal's), `OTEL_EXPORTER_OTLP_*` (every signal's), the default, as the OTel SDK exporters resolve them
(opentelemetry-specification, "OpenTelemetry Protocol Exporter": Endpoint URLs for OTLP/HTTP, insecure from the
scheme, headers as percent-encoded W3C-baggage-style pairs, timeout in milliseconds). Read once at start-up;
anything unusable stops start-up with a sentence naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from receiver.settings import ConfigError, Settings

__all__ = ["ExportConfig", "parse_key_values", "resolve_export"]

_PREFIXES = ("OTEL_EXPORTER_OTLP_LOGS_", "OTEL_EXPORTER_OTLP_")
_LOGS_PATH = "/v1/logs"
_DEFAULT_PORT = {"grpc": 4317, "http/protobuf": 4318}
# Resource attributes that name the producing entity: an event belongs to the source record's service, host and
# process, so otad's own values of these never go on it (OTEL_RESOURCE_ATTRIBUTES keeps the rest, e.g.
# deployment.environment.name or k8s.cluster.name, where the source record's resource does not set them).
_IDENTIFYING = ("service.", "host.", "process.", "container.", "k8s.pod.", "k8s.container.", "telemetry.")


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """The resolved export: `endpoint` is gRPC's HOST:PORT target or OTLP/HTTP's full URL; None = stored only."""

    endpoint: str | None
    protocol: str = "grpc"  # grpc | http/protobuf
    insecure: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    compression: str = "gzip"  # gzip | none
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    resource: dict[str, str] = field(default_factory=dict)  # from OTEL_RESOURCE_ATTRIBUTES, non-identifying
    sources: dict[str, str] = field(default_factory=dict)  # value -> the variable it came from (messages)

    def describe(self) -> str:
        """One line for the start-up log (no header values)."""
        tls = "plaintext" if self.insecure else "TLS" + (" + client cert" if self.client_cert_file else "")
        return f"{self.endpoint} ({self.protocol}, {tls}, {self.compression}, timeout {self.timeout_s:g}s)"


def parse_key_values(text: str, variable: str) -> dict[str, str]:
    """`k1=v1,k2=v2` with percent-encoded keys and values (OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES).

    Raises:
        ConfigError: an item without `=` or with an empty key.
    """
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = unquote(key.strip())
        if not sep or not key:
            raise ConfigError(
                f"{variable} must be KEY=VALUE pairs separated by commas (percent-encoded), "
                "for example authorization=Bearer%20x,tenant=a"
            )
        out[key] = unquote(value.strip())
    return out


def _pick(
    settings: Settings, environ: Mapping[str, str], otad_field: str, suffix: str
) -> tuple[object, str] | None:
    """The first value given, and the variable it came from: OTAD_EXPORT_*, then the OTEL_ logs/generic one."""
    value = getattr(settings, otad_field)
    if value is not None:
        return (value.get_secret_value() if hasattr(value, "get_secret_value") else value), (
            "OTAD_" + otad_field.upper()
        )
    for prefix in _PREFIXES:
        raw = environ.get(prefix + suffix, "").strip()
        if raw:
            return raw, prefix + suffix
    return None


def _bool(value: object, variable: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ConfigError(f"{variable} ({value!r}) must be true or false")
    return text == "true"


def _endpoint(raw: str, variable: str, protocol: str, insecure: bool | None) -> tuple[str, bool]:
    """(target, insecure): gRPC's HOST:PORT, or OTLP/HTTP's URL with /v1/logs appended to a generic endpoint."""
    if "://" in raw:
        url = urlsplit(raw)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                f"{variable} ({raw!r}) must be an http:// or https:// URL or HOST:PORT, "
                "for example http://otel-collector:4317"
            )
        try:
            port = url.port or _DEFAULT_PORT[protocol]
        except ValueError:
            raise ConfigError(f"{variable} ({raw!r}) has a port that is not a number in 0-65535") from None
        secure_scheme = url.scheme == "https"
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        path = url.path
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ConfigError(
                f"{variable} ({raw!r}) must be HOST:PORT or an http:// or https:// URL, "
                "for example otel-collector:4317"
            )
        port, secure_scheme, path = int(port_text), insecure is False, ""
    if insecure is None:
        insecure = not secure_scheme
    if protocol == "grpc":
        return f"{host}:{port}", insecure
    # The spec: the signal's path goes on the generic endpoint, never on the signal-specific one (used as is).
    # OTAD_EXPORT_ENDPOINT is otad's logs endpoint: as is when it has a path, else the generic form.
    if variable == "OTEL_EXPORTER_OTLP_ENDPOINT" or (variable.startswith("OTAD_") and path in ("", "/")):
        path = path.rstrip("/") + _LOGS_PATH
    path = path or "/"
    scheme = "https" if (secure_scheme if "://" in raw else not insecure) else "http"
    return f"{scheme}://{host}:{port}{path}", scheme == "http"


def _resource(environ: Mapping[str, str]) -> dict[str, str]:
    raw = environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    attributes = parse_key_values(raw, "OTEL_RESOURCE_ATTRIBUTES") if raw.strip() else {}
    return {k: v for k, v in attributes.items() if not k.startswith(_IDENTIFYING)}


def resolve_export(settings: Settings, environ: Mapping[str, str] | None = None) -> ExportConfig:
    """The export as the settings and the OTEL_* environment give it.

    long: one resolution step per variable family, in the spec's order.

    Raises:
        ConfigError: a value is unusable; the sentence names the variable.
    """
    env = os.environ if environ is None else environ
    sources: dict[str, str] = {}
    protocol_pick = _pick(settings, env, "export_protocol", "PROTOCOL")
    protocol = str(protocol_pick[0]) if protocol_pick else "grpc"
    if protocol not in _DEFAULT_PORT:
        assert protocol_pick is not None
        raise ConfigError(f"{protocol_pick[1]} ({protocol!r}) must be grpc or http/protobuf")
    insecure_pick = _pick(settings, env, "export_insecure", "INSECURE")
    insecure = _bool(*insecure_pick) if insecure_pick else None
    headers_pick = _pick(settings, env, "export_headers", "HEADERS")
    headers = parse_key_values(str(headers_pick[0]), headers_pick[1]) if headers_pick else {}
    compression_pick = _pick(settings, env, "export_compression", "COMPRESSION")
    compression = str(compression_pick[0]).strip().lower() if compression_pick else "gzip"
    if compression not in ("gzip", "none"):
        assert compression_pick is not None
        raise ConfigError(f"{compression_pick[1]} ({compression_pick[0]!r}) must be gzip or none")
    timeout_s = 10.0
    timeout_pick = _pick(settings, env, "export_timeout_s", "TIMEOUT")
    if timeout_pick is not None:
        value, variable = timeout_pick
        try:
            timeout_s = float(str(value)) if variable.startswith("OTAD_") else float(str(value)) / 1000.0
        except ValueError:
            raise ConfigError(
                f"{variable} ({value!r}) must be a number of milliseconds, e.g. 10000"
            ) from None
        if timeout_s <= 0:
            raise ConfigError(f"{variable} ({value!r}) must be > 0")
    files: dict[str, Path | None] = {}
    for name, otad_field, suffix in (
        ("ca", "export_ca_file", "CERTIFICATE"),
        ("cert", "export_client_cert_file", "CLIENT_CERTIFICATE"),
        ("key", "export_client_key_file", "CLIENT_KEY"),
    ):
        pick = _pick(settings, env, otad_field, suffix)
        files[name] = Path(str(pick[0])) if pick else None
        if pick:
            sources[name] = pick[1]
    if (files["cert"] is None) != (files["key"] is None):
        given, missing = ("cert", "key") if files["key"] is None else ("key", "cert")
        hint = {"cert": "client certificate", "key": "client key"}
        raise ConfigError(
            f"{sources[given]} is set but no {hint[missing]} (OTAD_EXPORT_CLIENT_{missing.upper()}_FILE or "
            f"OTEL_EXPORTER_OTLP_[LOGS_]CLIENT_{'KEY' if missing == 'key' else 'CERTIFICATE'}); set both or neither"
        )
    endpoint_pick = _pick(settings, env, "export_endpoint", "ENDPOINT")
    endpoint = None
    if endpoint_pick is not None:
        if insecure is None and any(files.values()) and "://" not in str(endpoint_pick[0]):
            insecure = False  # HOST:PORT and a certificate given: TLS
        endpoint, insecure = _endpoint(str(endpoint_pick[0]), endpoint_pick[1], protocol, insecure)
        sources["endpoint"] = endpoint_pick[1]
    if insecure and any(files.values()):
        name = next(k for k, v in files.items() if v is not None)
        raise ConfigError(
            f"{sources[name]} is set but the export is plaintext (OTAD_EXPORT_INSECURE=true or an http:// "
            "endpoint); set OTAD_EXPORT_INSECURE=false or use an https:// endpoint to export over TLS"
        )
    return ExportConfig(
        endpoint,
        protocol,
        bool(insecure) if insecure is not None else True,
        headers,
        timeout_s,
        compression,
        files["ca"],
        files["cert"],
        files["key"],
        _resource(env),
        sources,
    )
