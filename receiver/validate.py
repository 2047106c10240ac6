"""`otad validate`: the settings and every file they name, checked without starting anything.

Exit 0 with a summary when `otad serve` would start with this configuration, else exit 2 with one sentence
naming the variable to fix.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from receiver.settings import ConfigError, Settings

_LISTENERS = ("grpc_endpoint", "http_endpoint", "query_endpoint", "metrics_endpoint")


def writable_dir(path: Path) -> str | None:
    """Why `path` cannot be used as a data dir (None: it can): it must be, or be creatable as, a writable dir.
    Tried for real (a temporary file or directory, removed at once): permission bits do not bind root."""
    path = path.absolute()
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a directory"
    probe_in = path
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".otad-validate-", dir=probe_in))
    except OSError as exc:
        what = "is not writable" if probe_in == path else f"cannot be created in {probe_in}"
        return f"{path} {what} ({exc.strerror})"
    return None


def check(settings: Settings) -> list[str]:
    """Every check beyond the settings' own validation; returns what was checked, raises ConfigError."""
    from receiver.export_config import resolve_export
    from receiver.otlp.servers import load_security
    from receiver.otlp.tls import emitter_credentials, emitter_ssl_context

    load_security(settings)  # TLS files and token file: exist, readable, PEM, a matching pair
    export = resolve_export(
        settings
    )  # OTEL_EXPORTER_OTLP_* with OTAD_EXPORT_* overrides, as the emitter reads them
    if export.protocol == "grpc":
        emitter_credentials(export)
    else:
        emitter_ssl_context(export)
    problem = writable_dir(settings.data_dir)
    if problem:
        raise ConfigError(f"OTAD_DATA_DIR: {problem}; point it at a writable directory")
    ports: dict[int, str] = {}
    for name in _LISTENERS:
        port = int(getattr(settings, name).rpartition(":")[2])
        if port and port in ports:
            raise ConfigError(
                f"OTAD_{name.upper()} and OTAD_{ports[port].upper()} both use port {port}; give each its own port"
            )
        ports[port] = name
    done = [f"data dir {settings.data_dir.absolute()} (writable)"]
    done += [f"OTAD_{n.upper()}={getattr(settings, n)}" for n in _LISTENERS]
    done.append(f"Milvus {settings.resolved_milvus_uri}")
    done.append(
        f"events to {export.endpoint} ({export.protocol})" if export.endpoint else "events stored only"
    )
    if settings.tls_cert_file:
        done.append(f"TLS {settings.tls_cert_file} + {settings.tls_key_file}")
    return done


def cmd_validate(args: argparse.Namespace) -> int:
    # Bad values raise pydantic's ValidationError: cli_tools.run prints one line naming the variable, exit 2.
    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    try:
        done = check(settings)
    except ConfigError as exc:
        sys.stderr.write(f"otad validate: {exc}\n")
        return 2
    sys.stdout.write("otad validate: the configuration is usable: " + "; ".join(done) + "\n")
    return 0
