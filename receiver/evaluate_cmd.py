"""`otad evaluate`: the CLI layer over `model.evaluate` (parse flags, print the report, write plot/JSON)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from model.evaluate import Report, format_report, join, plot_pr, pr_curve, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `otad evaluate` flags on `parser`."""
    parser.add_argument(
        "--scores", required=True, type=Path, help="otad's score file (CSV, docs/contracts.md)"
    )
    parser.add_argument("--labels", required=True, type=Path, help="labels CSV: one row per anomalous record")
    parser.add_argument(
        "--since",
        type=int,
        default=None,
        metavar="NS",
        help="evaluate only rows with time_unix_nano >= NS (the model was trained before NS)",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=SCORES",
        help="a baseline score file to report beside otad; repeatable",
    )
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write PR curves to this PNG")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the reports as JSON")


def _parse_baselines(specs: list[str]) -> dict[str, Path]:
    baselines: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--baseline {spec!r} must be NAME=scores.csv")
        if name == "otad" or name in baselines:
            raise ValueError(
                f"--baseline name {name!r} is used twice (or is 'otad'); give each a unique name"
            )
        baselines[name] = Path(path)
    return baselines


def _to_json(r: Report) -> dict:
    def clean(v):  # JSON has no NaN: undefined metrics become null
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(r))


def run(args: argparse.Namespace) -> int:
    """Run `otad evaluate`; returns the exit code (0 ok, 2 bad input)."""
    try:
        paths = {"otad": args.scores, **_parse_baselines(args.baseline)}
        joined = {name: join(path, args.labels, since_ns=args.since) for name, path in paths.items()}
        reports = {name: report(j) for name, j in joined.items()}
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"otad evaluate: {exc}\n")
        return 2
    otad = reports.pop("otad")
    sys.stdout.write(format_report(otad, reports))
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401 - only to give a one-line hint when the extra is missing
        except ImportError:
            sys.stderr.write("otad evaluate --plot needs the `plot` extra: pip install 'otad[plot]'\n")
            return 2
        curves = {}
        for name, j in joined.items():
            if j.y.any():
                precision, recall, _ = pr_curve(j.y, j.score)
                curves[name] = (precision, recall)
        plot_pr(curves, args.plot, operating_point=(otad.precision, otad.recall))
        sys.stdout.write(f"PR curves written to {args.plot}\n")
    if args.json is not None:
        payload = {"otad": _to_json(otad), "baselines": {n: _to_json(r) for n, r in reports.items()}}
        args.json.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        sys.stdout.write(f"report written to {args.json}\n")
    return 0
