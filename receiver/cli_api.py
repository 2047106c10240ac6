"""`otad anomalies|anomaly|similar|feedback|models`: otad's API from the command line (docs/api.md).

Every command calls a running `otad serve`: over gRPC at OTAD_QUERY_ENDPOINT (`--endpoint`), or as JSON over
HTTP with `--http https://host:4318`; `--tls`/`--ca-file` (and `--cert-file`/`--key-file` for mTLS) and
`--token`/`--token-file`/OTAD_API_TOKEN as the server wants them. `--json` prints the response message as
JSON; otherwise a table. `otad anomalies` reads the store directly when no service answers (as it always did).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from receiver.api.client import ApiCallError, ApiClient, Connection
from receiver.api.gen import anomalies_pb2, common_pb2, feedback_pb2, models_pb2

ANOMALIES, FEEDBACK, MODELS = "otad.v1.AnomalyService", "otad.v1.FeedbackService", "otad.v1.ModelService"
_KIND = {"normal": feedback_pb2.FEEDBACK_KIND_NORMAL, "suppress": feedback_pb2.FEEDBACK_KIND_SUPPRESS}
_SUMMARY = ("message", "api.operation", "trace.span.operation", "metric.name", "http_request.url.path")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the API commands to `otad`'s subcommands (`anomalies` replaces any earlier one).

    long: a flat list of the subcommands and their flags, read top to bottom.
    """
    sub.choices.pop("anomalies", None)
    p = _parser(sub, "anomalies", "list anomaly events, newest first (through otad's API)", cmd_anomalies)
    p.add_argument("--milvus-uri", default=None, help="read this store directly when no service answers")
    p.add_argument("--limit", type=int, default=20, help="anomalies per page")
    p.add_argument("--service", default=None)
    p.add_argument("--signal", choices=("logs", "traces", "metrics"), default=None)
    p.add_argument("--min-score", type=float, default=None)
    p.add_argument("--detector", default=None, help="only anomalies this ensemble member took part in")
    p.add_argument(
        "--since", type=_duration, default=None, help="detected in the last ... (30s, 15m, 2h, 7d)"
    )
    p.add_argument("--page-token", default="", help="next_page_token of an earlier page")
    p.add_argument("--include-suppressed", action="store_true", help="also anomalies silenced by feedback")

    p = _parser(sub, "anomaly", "one anomaly: its row, nearest normal rows and feature deltas", cmd_anomaly)
    p.add_argument("uid", help="finding uid or source row uid")
    p.add_argument("--neighbors", type=int, default=5)

    p = _parser(sub, "similar", "stored rows nearest to a row, by vector search", cmd_similar)
    p.add_argument("uid", help="row uid or finding uid")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--service", default="")
    p.add_argument("--anomalies-only", action="store_true")

    fb = sub.add_parser("feedback", help="say what is normal, silence look-alikes, list and revoke feedback")
    actions = fb.add_subparsers(dest="action", required=True)
    p = _parser(
        actions, "normal", "the row (and its look-alikes) is normal: stop reporting them", cmd_feedback
    )
    p.add_argument("uid")
    p.add_argument(
        "--lookalikes", action="store_true", help="add its stored look-alikes to the reference too"
    )
    _feedback_flags(p, ttl_help="seconds until it expires (default: never)")
    p = _parser(actions, "suppress", "silence look-alikes of a row in one service for a while", cmd_feedback)
    p.add_argument("uid")
    _feedback_flags(p, ttl_help="seconds until it expires (default 86400)")
    p = _parser(actions, "list", "feedback entries, newest first", cmd_feedback)
    p.add_argument("--all", action="store_true", help="also revoked and expired entries")
    p.add_argument("--service", default="")
    p.add_argument("--kind", choices=tuple(_KIND), default=None)
    p = _parser(actions, "revoke", "end a feedback entry (it stays listed)", cmd_feedback)
    p.add_argument("id")
    p.add_argument("--by", default="")
    p.add_argument("--reason", default="")

    p = _parser(sub, "models", "model versions: list, status, retrain, promote, rollback", cmd_models)
    p.add_argument(
        "action", nargs="?", default="list", choices=("list", "status", "retrain", "promote", "rollback")
    )
    p.add_argument("version", nargs="?", default=None, help="for promote (required) and rollback (optional)")
    p.add_argument("--reason", default="")
    p.add_argument("--by", default="")


def _parser(sub: argparse._SubParsersAction, name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--data-dir", type=Path, default=None, help="overrides OTAD_DATA_DIR (for the settings)")
    p.add_argument("--endpoint", default=None, help="otad's gRPC API (default OTAD_QUERY_ENDPOINT)")
    p.add_argument("--http", default=None, metavar="URL", help="use JSON over HTTP: http(s)://host:4318")
    p.add_argument("--tls", action="store_true", help="TLS with the system CAs (implied by --ca-file)")
    p.add_argument("--ca-file", type=Path, default=None, help="CA bundle that signed the server certificate")
    p.add_argument("--cert-file", type=Path, default=None, help="client certificate (mTLS)")
    p.add_argument("--key-file", type=Path, default=None, help="client key (mTLS)")
    p.add_argument("--token", default=None, help="bearer token (default OTAD_API_TOKEN)")
    p.add_argument("--token-file", type=Path, default=None, help="file holding the bearer token")
    p.add_argument("--json", action="store_true", help="the response as JSON")
    p.set_defaults(func=func)
    return p


def _feedback_flags(p: argparse.ArgumentParser, ttl_help: str) -> None:
    p.add_argument("--service", default="", help="scope (suppress: default the row's service; '*': all)")
    p.add_argument("--ttl", type=_duration_s, default=0, help=ttl_help + "; 30m, 2h, 7d also work")
    p.add_argument("--by", default="", help="who gives it (default: the token's fingerprint)")
    p.add_argument("--reason", default="")
    p.add_argument("--radius", type=float, default=0.0, help="cosine distance of a look-alike (default 0.02)")


def _duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (30s, 15m, 2h, 7d or seconds)"
        ) from None


def _duration(text: str) -> int:
    return _duration_s(text) * 1_000_000_000


def connection(args: argparse.Namespace) -> Connection:
    """Where to call, from the flags and the settings (OTAD_QUERY_ENDPOINT, OTAD_API_TOKEN)."""
    from receiver.settings import Settings

    endpoint = args.endpoint
    if endpoint is None:
        try:
            extra = {"data_dir": args.data_dir} if args.data_dir else {}
            endpoint = Settings(**extra).query_endpoint
        except ValueError:
            endpoint = "localhost:4320"
    token = args.token or os.environ.get("OTAD_API_TOKEN")
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip().splitlines()[0].strip()
    return Connection(endpoint, args.http, args.tls, args.ca_file, args.cert_file, args.key_file, token)


def _call(args: argparse.Namespace, service: str, method: str, request: Message) -> Message:
    client = ApiClient(connection(args))
    try:
        return client.call(service, method, request)
    finally:
        client.close()


def _run(args: argparse.Namespace, service: str, method: str, request: Message, show: Any) -> int:
    try:
        response = _call(args, service, method, request)
    except ApiCallError as exc:
        where = connection(args).where
        hint = " (is `otad serve` running?)" if exc.code == "UNAVAILABLE" else ""
        sys.stderr.write(f"otad {args.command}: {exc.code} from {where}: {exc.message}{hint}\n")
        return 1
    if args.json:
        sys.stdout.write(
            json_format.MessageToJson(response, preserving_proto_field_name=True, indent=1) + "\n"
        )
    else:
        show(response)
    return 0


# ----------------------------------------------------------------------------------------------- commands
def cmd_anomalies(args: argparse.Namespace) -> int:
    req = anomalies_pb2.ListAnomaliesRequest(
        service=args.service or "",
        signal=args.signal or "",
        min_score=args.min_score or 0.0,
        detector=args.detector or "",
        page_size=args.limit,
        page_token=args.page_token,
        include_suppressed=args.include_suppressed,
        start_unix_nano=time.time_ns() - args.since if args.since else 0,
    )
    try:
        response = _call(args, ANOMALIES, "ListAnomalies", req)
    except ApiCallError as exc:
        if exc.code != "UNAVAILABLE":
            sys.stderr.write(f"otad anomalies: {exc.code}: {exc.message}\n")
            return 1
        sys.stderr.write(f"otad anomalies: no API at {connection(args).where}; reading the store directly\n")
        response = _from_store(args, req)
    if args.json:
        sys.stdout.write(
            json_format.MessageToJson(response, preserving_proto_field_name=True, indent=1) + "\n"
        )
    else:
        _show_anomalies(response)
    return 0


def _from_store(args: argparse.Namespace, req: anomalies_pb2.ListAnomaliesRequest) -> Message:
    """The API's own listing over the store, so every filter (signal, detector, suppressed) still holds."""
    from receiver.api.calls import list_anomalies
    from receiver.service import open_store
    from receiver.settings import Settings

    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("milvus_uri", args.milvus_uri)) if v}
    store = open_store(Settings(**overrides))
    try:
        return list_anomalies(store, req)
    finally:
        store.close()


def cmd_anomaly(args: argparse.Namespace) -> int:
    req = anomalies_pb2.GetAnomalyRequest(uid=args.uid, neighbors=args.neighbors)
    return _run(args, ANOMALIES, "GetAnomaly", req, _show_anomaly)


def cmd_similar(args: argparse.Namespace) -> int:
    req = anomalies_pb2.SimilarEventsRequest(
        uid=args.uid, limit=args.limit, service=args.service, anomalies_only=args.anomalies_only
    )
    return _run(args, ANOMALIES, "SimilarEvents", req, _show_similar)


def cmd_feedback(args: argparse.Namespace) -> int:
    request: Message
    if args.action == "normal":
        request = feedback_pb2.MarkNormalRequest(
            uid=args.uid,
            include_lookalikes=args.lookalikes,
            service=args.service,
            ttl_seconds=args.ttl,
            by=args.by,
            reason=args.reason,
            radius=args.radius,
        )
        return _run(args, FEEDBACK, "MarkNormal", request, lambda r: _show_feedback([r.feedback]))
    if args.action == "suppress":
        request = feedback_pb2.SuppressRequest(
            uid=args.uid,
            service=args.service,
            ttl_seconds=args.ttl,
            by=args.by,
            reason=args.reason,
            radius=args.radius,
        )
        return _run(args, FEEDBACK, "Suppress", request, lambda r: _show_feedback([r.feedback]))
    if args.action == "list":
        request = feedback_pb2.ListFeedbackRequest(
            include_inactive=args.all,
            service=args.service,
            kind=_KIND.get(args.kind or "", feedback_pb2.FEEDBACK_KIND_UNSPECIFIED),
        )
        return _run(args, FEEDBACK, "ListFeedback", request, lambda r: _show_feedback(r.feedback))
    request = feedback_pb2.RevokeFeedbackRequest(id=args.id, by=args.by, reason=args.reason)
    return _run(args, FEEDBACK, "RevokeFeedback", request, lambda r: _show_feedback([r.feedback]))


def cmd_models(args: argparse.Namespace) -> int:
    action = args.action
    if action == "status":
        return _run(args, MODELS, "GetModelStatus", models_pb2.GetModelStatusRequest(), _show_status)
    if action == "retrain":
        req: Message = models_pb2.RetrainRequest(reason=args.reason, by=args.by)
        return _run(args, MODELS, "Retrain", req, lambda r: _out(f"retrain started: {r.id}"))
    if action == "promote":
        if not args.version:
            sys.stderr.write("otad models promote: name the version to promote\n")
            return 2
        req = models_pb2.PromoteRequest(version=args.version, by=args.by, reason=args.reason)
        return _run(args, MODELS, "Promote", req, lambda r: _out(f"current model: {r.current}"))
    if action == "rollback":
        req = models_pb2.RollbackRequest(version=args.version or "", by=args.by, reason=args.reason)
        return _run(args, MODELS, "Rollback", req, lambda r: _out(f"current model: {r.current}"))
    return _run(args, MODELS, "ListModels", models_pb2.ListModelsRequest(), _show_models)


# ----------------------------------------------------------------------------------------------- tables
def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9)) + "Z" if ns else "-"


def _summary(row: common_pb2.Row) -> str:
    for key in _SUMMARY:
        if key in row.fields:
            value = row.fields[key]
            kind = value.WhichOneof("kind")
            return str(getattr(value, kind)) if kind else ""
    return ""


def _show_anomalies(r: Any) -> None:
    if not r.anomalies:
        _out("no anomalies stored yet")
        return
    for a in r.anomalies:
        silenced = f"  [silenced by feedback {a.suppressed_by}]" if a.suppressed_by else ""
        _out(
            f"{_when(a.time_unix_nano)}  {a.score:5.1f}  {a.signal:<7} {a.service:<16} {a.explanation}{silenced}"
        )
        _out(f"{'':22}uid {a.source_uid}  detector {a.detector}  model {a.model_version}")
    if r.next_page_token:
        _out(f"more: --page-token {r.next_page_token}")


def _show_anomaly(r: anomalies_pb2.GetAnomalyResponse) -> None:
    a = r.anomaly
    _out(
        f"anomaly {a.uid}  score {a.score:.1f} (threshold {a.threshold:.1f})  {a.detector}  model {a.model_version}"
    )
    _out(f"  {_when(a.time_unix_nano)}  {a.signal} from {a.service}, row {a.source_uid}")
    _out(f"  {a.explanation}")
    if r.row.uid:
        _out("row:")
        for key, value in sorted(r.row.fields.items()):
            kind = value.WhichOneof("kind")
            _out(f"  {key:<32} {getattr(value, kind) if kind else ''}")
    if r.deltas:
        _out(f"{'feature':<34} {'observed':<24} typical of its nearest normal rows")
        for d in r.deltas:
            _out(f"  {d.feature:<32} {d.observed[:24]:<24} {d.typical}")
    if r.neighbors:
        _out("nearest normal rows:")
        _show_neighbors(r.neighbors)


def _show_neighbors(items: Any) -> None:
    _out(f"  {'distance':>8}  {'score':>5}  {'service':<16} {'uid':<34} summary")
    for n in items:
        flag = "!" if n.is_anomaly else " "
        _out(
            f"  {n.distance:8.4f}  {n.score:5.1f}{flag} {n.row.service:<16} {n.row.uid:<34} {_summary(n.row)[:60]}"
        )


def _show_similar(r: anomalies_pb2.SimilarEventsResponse) -> None:
    _out(f"{len(r.events)} similar rows (model {r.model_version}; ! = flagged as an anomaly)")
    _show_neighbors(r.events)


def _show_feedback(items: Any) -> None:
    if not items:
        _out("no feedback")
        return
    for f in items:
        kind = {1: "normal", 2: "suppress"}.get(f.kind, "?")
        state = "active" if f.active else "revoked" if f.revoked else "expired"
        scope = f.service or "all services"
        until = _when(f.expires_unix_nano) if f.expires_unix_nano else "no expiry"
        _out(
            f"{f.id}  {kind:<8} {state:<7} row {f.source_uid}  scope {scope}  until {until}  radius {f.radius:g}"
        )
        _out(f"{'':18}by {f.by} at {_when(f.created_unix_nano)}: {f.reason or '(no reason)'}")


def _show_models(r: models_pb2.ListModelsResponse) -> None:
    _out(f"{'version':<26} {'state':<10} {'rows':>8}  {'trained from':<20}  {'until':<20}  created")
    for m in r.models:
        _out(
            f"{m.version:<26} {m.state:<10} {m.rows:>8}  {_when(m.train_start_unix_nano):<20}  "
            f"{_when(m.train_end_unix_nano):<20}  {_when(m.created_unix_nano)}"
        )


def _show_status(r: models_pb2.GetModelStatusResponse) -> None:
    _out(f"current     {r.current or '-'}")
    _out(f"challenger  {r.challenger or '-'}")
    for key, value in sorted(json_format.MessageToDict(r.drift).items()):
        _out(f"drift {key:<24} {value}")
    for key, value in sorted(json_format.MessageToDict(r.details).items()):
        _out(f"{key:<30} {value}")
