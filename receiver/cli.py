"""`otad`: the composition root. Builds settings, storage, model, pipeline and servers; runs subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from receiver import otad_version
from receiver.settings import ConfigError, Settings

logger = logging.getLogger("otad")


def load_settings(**overrides) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "OTAD_" + str(err["loc"][0]).upper() if err.get("loc") else "configuration"
        sys.stderr.write(f"otad: bad configuration: {name}: {err['msg']}\n")
        raise SystemExit(2) from None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        data_dir=args.data_dir,
        grpc_endpoint=args.grpc_endpoint,
        export_endpoint=args.export_endpoint,
        milvus_uri=args.milvus_uri,
    )
    setup_logging(settings.log_level)
    from storage.lite_process import DataDirInUseError

    try:
        from receiver.service import Service

        service = Service(settings)
    except ConfigError as exc:
        sys.stderr.write(f"otad: bad configuration: {exc}\n")
        return 2
    except DataDirInUseError as exc:
        sys.stderr.write(f"otad: {exc}\n")
        return 1
    # The handler only records the signal: it runs in the main thread between any two bytecodes, and a lock
    # taken there (Event.set) deadlocks when the main thread holds that lock at that moment.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    service.start()
    while not received:
        time.sleep(0.2)
    logger.info(
        "shutting down: no new data; finishing in-flight batches (up to %.0fs)", settings.shutdown_grace_s
    )
    service.stop(settings.shutdown_grace_s)
    logger.info("stopped")
    # Everything is stored or spooled and checkpointed: leave without interpreter finalization, which aborts
    # (SIGABRT, "terminate called without an active exception") when a native thread is still running.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ----------------------------------------------------------------------------------------------- files
def read_rows(paths: list[Path]):
    """Map every record of OTLP/JSON files to rows (sorted by time). Rejections are reported, not hidden."""
    from receiver.jsonfiles import read_rows as read_json_rows
    from receiver.progress import read_with_progress

    return read_with_progress(paths, read_json_rows)


def cmd_train(args: argparse.Namespace) -> int:
    from model.train import TrainConfig
    from model.version import fit_version
    from receiver.progress import epoch_progress

    settings = load_settings(data_dir=args.data_dir, milvus_uri=args.milvus_uri)
    from receiver.service import open_store

    setup_logging(settings.log_level)
    if args.input:
        rows = read_rows(args.input)
    else:  # the current version's stored rows (not those it flagged); before the first model, the backlog
        from receiver.retrain import stored_training_rows

        store = open_store(settings)
        try:
            rows = stored_training_rows(store, settings, args.max_rows)
        finally:
            store.close()
    if args.train_fraction < 1.0 and rows:
        t0, t1 = rows[0].time_unix_nano, rows[-1].time_unix_nano
        cut = t0 + int((t1 - t0) * args.train_fraction)
        rows = [r for r in rows if r.time_unix_nano <= cut]
    rows = rows[-(args.max_rows or settings.train_max_rows) :]
    if len(rows) < 50:
        sys.stderr.write(f"otad train: only {len(rows)} rows to train on; need at least 50\n")
        return 2
    sys.stderr.write(f"training on {len(rows)} rows ...\n")
    mv = fit_version(
        rows,
        k=settings.knn_k,
        alert_pvalue=settings.alert_pvalue,
        detectors=settings.detector_names,
        combiner=settings.combiner,
        weighting=settings.member_weights,
        false_alerts_per_hour=settings.false_alerts_per_hour,
        embed_dim=settings.embed_dim,
        max_rows=settings.reference_max_rows,
        series_max=settings.series_max,
        train_config=TrainConfig(epochs=args.epochs or settings.train_epochs, seed=settings.seed),
        progress=epoch_progress(args.epochs or settings.train_epochs),
    )
    path = mv.save(settings.models_dir)
    sys.stdout.write(
        f"model {mv.version} saved to {path} (best epoch {mv.meta['best_epoch']}, "
        f"{mv.meta['reference_rows']} reference vectors, detectors {'+'.join(mv.ensemble.names)}, "
        f"trained until {mv.meta['train_end_unix_nano']})\n"
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from model.evaluate import write_score_file
    from model.scorer import Scorer
    from receiver.service import load_model

    settings = load_settings(data_dir=args.data_dir)
    setup_logging(settings.log_level)
    mv = load_model(settings)
    if mv is None:
        sys.stderr.write(f"otad score: no model under {settings.models_dir}; run `otad train` first\n")
        return 2
    rows = read_rows(args.input)
    scorer = Scorer(mv, learn=not args.no_learn, threads=2)
    from receiver.progress import Progress

    out, step, bar = [], 4096, Progress(len(rows), "scoring")
    for i in range(0, len(rows), step):
        part = rows[i : i + step]
        scored = scorer.score(part)
        for r, s, raw, a in zip(part, scored.scores, scored.raw, scored.is_anomaly, strict=True):
            out.append(
                {
                    "uid": r.uid,
                    "signal": r.signal,
                    "time_unix_nano": r.time_unix_nano,
                    "service": r.service,
                    "score": float(s),
                    "raw_score": float(raw),
                    "threshold": scorer.threshold,
                    "is_anomaly": int(a),
                }
            )
        bar.update(len(part))
    bar.close()
    write_score_file(args.output, out)
    flagged = sum(o["is_anomaly"] for o in out)
    sys.stdout.write(
        f"wrote {len(out)} scores to {args.output} ({flagged} at or above threshold "
        f"{scorer.threshold:.1f}); model {mv.version} trained until {mv.meta['train_end_unix_nano']}\n"
    )
    if args.baseline_output:
        _write_baseline(rows, args.baseline_output, mv.meta["train_end_unix_nano"] + 1)
    return 0


def _write_baseline(rows, path: Path, since_ns: int) -> None:
    from model.evaluate import baseline_score_rows, write_score_file, zscore_baseline

    records = []
    for r in rows:
        value = r.fields.get("metric.value")
        duration = r.fields.get("duration")
        records.append(
            {
                "uid": r.uid,
                "signal": r.signal,
                "time_unix_nano": r.time_unix_nano,
                "service": r.service,
                "duration_ms": float(duration) if isinstance(duration, int | float) else None,
                "value": float(value) if isinstance(value, int | float) else None,
                "series": r.fields.get("metric.series"),
            }
        )
    raw = zscore_baseline(records, since_ns=since_ns)
    write_score_file(path, baseline_score_rows(records, raw))
    sys.stdout.write(f"wrote the per-service latency z-score baseline to {path}\n")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from receiver.evaluate_cmd import run
    from receiver.service import load_model

    if args.since is None and not args.all_rows:
        settings = load_settings(data_dir=args.data_dir)
        mv = load_model(settings)
        if mv is not None:
            args.since = int(mv.meta["train_end_unix_nano"]) + 1
            sys.stderr.write(f"evaluating rows after the model's training window (--since {args.since})\n")
    return run(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from sim import simulate

    setup_logging("INFO")
    return simulate.run(args)


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Runs the source checkout's benchmarks/detection.py with the given arguments (not in a wheel)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "detection.py"
    if not script.is_file():
        sys.stderr.write("otad benchmark needs a source checkout: benchmarks/detection.py is not installed\n")
        return 2
    import subprocess

    return subprocess.call([sys.executable, str(script), *args.args])


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The `otad` command line.

    long: a flat list of the subcommands and their flags, read top to bottom.
    """
    parser = argparse.ArgumentParser(prog="otad", description="Anomaly detection for OpenTelemetry data.")
    parser.add_argument("--version", action="version", version=otad_version())
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, milvus: bool = False) -> None:
        p.add_argument("--data-dir", type=Path, default=None, help="overrides OTAD_DATA_DIR")
        if milvus:
            p.add_argument("--milvus-uri", default=None, help="overrides OTAD_MILVUS_URI")

    p = sub.add_parser("serve", help="run the service (OTLP/gRPC in, anomaly events out)")
    common(p, milvus=True)
    p.add_argument("--grpc-endpoint", default=None, help="overrides OTAD_GRPC_ENDPOINT")
    p.add_argument("--export-endpoint", default=None, help="overrides OTAD_EXPORT_ENDPOINT")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="train a model version from OTLP/JSON files or stored rows")
    common(p, milvus=True)
    p.add_argument(
        "--input", nargs="+", type=Path, default=None, help="Collector file-exporter files (OTLP/JSON lines)"
    )
    p.add_argument(
        "--train-fraction", type=float, default=1.0, help="train on the first fraction of the time range"
    )
    p.add_argument(
        "--max-rows", type=int, default=None, help="newest rows used (default OTAD_TRAIN_MAX_ROWS)"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="upper bound on epochs (default OTAD_TRAIN_EPOCHS)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="score every record of OTLP/JSON files into a score file")
    common(p)
    p.add_argument("--input", nargs="+", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True, help="score CSV (docs/contracts.md)")
    p.add_argument("--no-learn", action="store_true", help="do not grow the normal history while scoring")
    p.add_argument(
        "--baseline-output",
        type=Path,
        default=None,
        help="also write the per-service latency z-score baseline score file",
    )
    p.set_defaults(func=cmd_score)

    from receiver import evaluate_cmd

    p = sub.add_parser("evaluate", help="detection metrics and PR curve from a score file and labels")
    common(p)
    evaluate_cmd.add_arguments(p)
    p.add_argument(
        "--all-rows", action="store_true", help="do not restrict to rows after the model's training window"
    )
    p.set_defaults(func=cmd_evaluate)

    # Every argument goes to the script, options too: this parser has no option prefix of its own.
    p = sub.add_parser(
        "benchmark",
        help="the detection benchmark (source checkout; --help: its options)",
        add_help=False,
        prefix_chars="\0",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_benchmark)

    try:
        from sim import simulate

        p = sub.add_parser("simulate", help="labelled multi-service workload generator")
        simulate.add_arguments(p)
        p.set_defaults(func=cmd_simulate)
    except ImportError as exc:  # the simulator's OpenTelemetry SDK is the optional `sim` extra
        hint = f"otad simulate needs the `sim` extra ({exc}): pip install 'otad[sim]'\n"

        class _NeedsSimExtra(argparse.Action):
            """Ends any `otad simulate ...` with the hint; it runs even with no arguments (REMAINDER)."""

            def __call__(
                self,
                parser: argparse.ArgumentParser,
                namespace: argparse.Namespace,
                values: object,
                option_string: str | None = None,
            ) -> None:
                parser.exit(2, hint)

        p = sub.add_parser(
            "simulate",
            help="labelled multi-service workload generator (pip install 'otad[sim]')",
            add_help=False,
        )
        p.add_argument("args", nargs=argparse.REMAINDER, action=_NeedsSimExtra, help=argparse.SUPPRESS)
    from receiver import cli_api, cli_tools

    cli_api.register(sub)  # otad's API: anomalies, anomaly, similar, feedback, models (docs/api.md)
    cli_tools.register(sub)  # validate, report, demo; anomalies --follow
    return parser


def main(argv: list[str] | None = None) -> int:
    from receiver.cli_tools import run  # unknown OTAD_* warned; operator mistakes as one line

    args = build_parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())
