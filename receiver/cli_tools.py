"""The command line's habits: `otad validate`, `otad report`, `otad demo`, `otad anomalies --follow`, warnings for
mistyped `OTAD_*` variables, one-line errors for operator mistakes, and progress bars.

`register(sub)` adds the subcommands to `receiver/cli.py`'s parser; `run(args)` runs one with the warnings first and
the operator mistakes turned into one line each (exit 2 for bad input, 1 for the environment).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Variables with the prefix that are not settings: set by otad for its children, or read by its tests and tools.
# OTAD_API_TOKEN is the API client's bearer token (receiver/cli_api.py), not a setting of the service.
_NOT_SETTINGS = {
    "OTAD_LITE_NICE",
    "OTAD_LITE_PARENT_PID",
    "OTAD_FUZZ_SCALE",
    "OTAD_BENCH_PROFILE",
    "OTAD_API_TOKEN",
}


# ------------------------------------------------------------------------------------------ environment
def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per `OTAD_*` variable that names no setting, with the closest setting when one is close."""
    from receiver.settings import Settings

    environ = os.environ if environ is None else environ
    known = {"OTAD_" + name.upper() for name in Settings.model_fields}
    for info in Settings.model_fields.values():  # names given by aliases (e.g. AliasChoices) count as known
        alias = info.validation_alias
        choices = getattr(alias, "choices", [alias])
        known |= {c.upper() for c in choices if isinstance(c, str) and c.upper().startswith("OTAD_")}
    warnings = []
    for name in sorted(environ):
        if not name.upper().startswith("OTAD_") or name.upper() in known or name.upper() in _NOT_SETTINGS:
            continue
        # Compared without the shared prefix, which would make any two names look alike.
        close = difflib.get_close_matches(name.upper()[5:], sorted(k[5:] for k in known), n=1, cutoff=0.7)
        hint = f"; did you mean OTAD_{close[0]}?" if close else " (otad ignores it)"
        warnings.append(f"otad: warning: {name} is not an otad setting{hint}")
    return warnings


# ------------------------------------------------------------------------------------------ errors
def run(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one subcommand: warn about unknown variables, and turn operator mistakes into one line.

    A port in use, a file that is missing or unreadable, bad settings and an unreachable Milvus end with one
    line on stderr and a non-zero exit; OTAD_LOG_LEVEL=DEBUG shows the traceback instead.
    """
    from pydantic import ValidationError

    from receiver.settings import ConfigError
    from storage.errors import StorageError

    for line in unknown_env():
        sys.stderr.write(line + "\n")
    debug = os.environ.get("OTAD_LOG_LEVEL", "").upper() == "DEBUG"
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("otad: interrupted\n")
        return 130
    except (ConfigError, ValidationError, OSError, StorageError) as exc:
        if debug:
            raise
        message, code = operator_error(exc)
        sys.stderr.write(f"otad {args.command}: {message}\n")
        return code


def operator_error(exc: BaseException) -> tuple[str, int]:
    """The one line (and exit code) for an operator mistake."""
    from pydantic import ValidationError

    from receiver.settings import ConfigError

    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        name = "OTAD_" + str(err["loc"][0]).upper() if err.get("loc") else "configuration"
        return f"bad configuration: {name}: {err['msg']}", 2
    if isinstance(exc, ConfigError):
        return f"bad configuration: {exc}", 2
    if isinstance(exc, OSError):
        text = str(exc)
        if exc.errno == errno.EADDRINUSE or "address in use" in text or "Address already in use" in text:
            where = (
                "" if "OTAD_" in text else " (on OTAD_GRPC_ENDPOINT, _HTTP_, _METRICS_ or _QUERY_ENDPOINT)"
            )
            return f"{text}{where}; is another otad (or another program) listening there?", 1
        if exc.filename is None and exc.strerror is None:  # raised with a sentence of its own
            return text, 2 if isinstance(exc, FileNotFoundError) else 1
        if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
            where = f" {exc.filename}" if exc.filename else ""
            return f"cannot open{where}: {exc.strerror or text}", 2
        return text, 1
    return f"{exc}; check OTAD_MILVUS_URI and that Milvus is running", 1


# ------------------------------------------------------------------------------------------ subcommands
def register(sub: argparse._SubParsersAction) -> None:
    """Add `validate`, `report` and `demo`, and `--follow` on `anomalies` (unless it has one already)."""
    from receiver import demo, report, validate

    p = sub.add_parser("validate", help="check the settings and the files they name, then exit")
    p.add_argument("--data-dir", type=Path, default=None, help="overrides OTAD_DATA_DIR")
    p.set_defaults(func=validate.cmd_validate)

    p = sub.add_parser("report", help="one self-contained HTML page: anomalies, explanations, scores, maps")
    report.add_arguments(p)
    p.set_defaults(func=report.cmd_report)

    p = sub.add_parser("demo", help="simulator -> rotel (a Collector) -> otad -> a sink; prints anomalies")
    demo.add_arguments(p)
    p.set_defaults(func=demo.cmd_demo)

    anomalies = sub.choices.get("anomalies")
    if anomalies is not None and "--follow" not in anomalies._option_string_actions:
        anomalies.add_argument("--follow", "-f", action="store_true", help="keep printing new anomalies")
        anomalies.add_argument("--interval", type=float, default=2.0, help="seconds between polls (--follow)")
        anomalies.set_defaults(func=_with_follow(anomalies.get_default("func")))


def _with_follow(listing: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def cmd(args: argparse.Namespace) -> int:
        code = listing(args)
        if code or not getattr(args, "follow", False) or args.json:
            return code
        return follow(args)

    return cmd


def follow(args: argparse.Namespace, polls: int | None = None) -> int:
    """Print anomalies detected after the listing, oldest first, polling every `args.interval` seconds."""
    from receiver.service import open_store

    settings = settings_with(data_dir=args.data_dir, milvus_uri=getattr(args, "milvus_uri", None))
    store = open_store(settings)
    seen: set[str] = set()
    since = int(time.time() * 1000) - 1
    try:
        while polls is None or polls > 0:
            fresh = [
                a
                for a in store.latest_anomalies(
                    1000, service=args.service, min_score=args.min_score, since_ms=since
                )
                if a["uid"] not in seen
            ]
            for a in sorted(fresh, key=lambda a: (a["detected_ms"], a["uid"])):
                seen.add(a["uid"])
                sys.stdout.write(format_anomaly(a) + "\n")
            sys.stdout.flush()
            if fresh:
                since = max(a["detected_ms"] for a in fresh)
            polls = None if polls is None else polls - 1
            if polls != 0:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0


def format_anomaly(a: Mapping[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a["time_ms"] / 1000))
    return f"{when}Z  {a['score']:5.1f}  {a['signal']:<7} {a['service']:<16} {a['explanation']}"


def settings_with(**overrides: Any):
    """Settings from the environment with the command line's overrides (None: not given)."""
    from receiver.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})
