"""`otad report`: one self-contained HTML page to look at (inline SVG, no script, nothing fetched).

Panels: anomalies over time per service and signal, the top explanations with the content of their nearest normal
rows, the score distributions (combined and per detector member), the PR curve when labels are given, and a 2-D
map (PCA) of the embeddings. With `--input`, the records are scored with the current model, which gives every
panel; without it, the page is built from what `otad serve` stored (anomalies and the rows' combined scores).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from receiver import otad_version
from receiver.report_svg import esc, histogram, lines, scatter

_SUMMARY = ("message", "api.operation", "http_request.url.path", "metric.name", "name")
PANELS = ("timeline", "explanations", "scores", "pr-curve", "embedding-map")


@dataclass
class ReportData:
    """Everything the page shows; `render` turns it into HTML."""

    source: str
    model_version: str
    rows: int = 0
    threshold: float | None = None
    anomalies: list[dict[str, Any]] = field(
        default_factory=list
    )  # time_ms, service, signal, score, explanation
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # name -> scores of every row (0-100 scale)
    pr: dict[str, Any] | None = None  # precision, recall, ap, point (recall, precision)
    map_xy: np.ndarray | None = None  # (n, 2)
    map_flagged: np.ndarray | None = None  # (n,) bool
    map_titles: list[str] = field(default_factory=list)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None, help="overrides OTAD_DATA_DIR")
    p.add_argument("--milvus-uri", default=None, help="overrides OTAD_MILVUS_URI")
    p.add_argument(
        "--input", nargs="+", type=Path, default=None, help="OTLP/JSON files to score for the page"
    )
    p.add_argument("--labels", type=Path, default=None, help="labels CSV: adds the PR curve (with --input)")
    p.add_argument("--output", type=Path, default=Path("otad-report.html"), help="the HTML file to write")
    p.add_argument("--top", type=int, default=10, help="explanations shown")
    p.add_argument("--map-points", type=int, default=2500, help="rows drawn on the embedding map")


def summary(fields: dict[str, Any]) -> str:
    """A record as a person reads it: its message, operation, route or metric name."""
    return next((str(fields[k]) for k in _SUMMARY if fields.get(k) not in (None, "")), "")


# ------------------------------------------------------------------------------------------ gathering
def from_files(settings, paths: list[Path], labels: Path | None, top: int, map_points: int) -> ReportData:
    """Score the files' records with the current model (as `otad score`) and keep what the page needs."""
    from model.scorer import Scorer
    from receiver.jsonfiles import read_rows
    from receiver.progress import Progress, read_with_progress
    from receiver.service import load_model

    mv = load_model(settings)
    if mv is None:
        raise FileNotFoundError(f"no model under {settings.models_dir}; run `otad train` first")
    rows = read_with_progress(paths, read_rows)
    scorer = Scorer(mv, learn=True, threads=2)
    scores, emb, flagged, found = [], [], [], []
    members: dict[str, list[np.ndarray]] = {}
    bar = Progress(len(rows), "scoring")
    for i in range(0, len(rows), 4096):
        batch = scorer.score(rows[i : i + 4096])
        scores.append(batch.scores)
        emb.append(batch.embeddings)
        flagged.append(batch.is_anomaly)
        found += batch.anomalies
        for name, p in batch.members.items():
            members.setdefault(name, []).append(p)
        bar.update(len(batch.rows))
    bar.close()
    data = ReportData(f"{len(paths)} file(s): " + ", ".join(p.name for p in paths), mv.version, len(rows))
    data.threshold = float(scorer.threshold)
    data.scores["combined"] = np.concatenate(scores) if scores else np.zeros(0)
    for name, parts in members.items():  # a member's p-value on the same 0-100 scale as the combined score
        data.scores[name] = np.minimum(100.0, -np.log10(np.clip(np.concatenate(parts), 1e-300, 1)) * 100 / 6)
    by_uid = {r.uid: r for r in rows}
    data.anomalies = [_anomaly_of(a, by_uid) for a in found]
    is_anomaly = np.concatenate(flagged) if flagged else np.zeros(0, bool)
    _add_map(
        data,
        np.concatenate(emb) if emb else np.zeros((0, 2)),
        is_anomaly,
        [summary(r.fields) for r in rows],
        map_points,
    )
    if labels is not None:
        since = int(mv.meta.get("train_end_unix_nano", 0)) + 1
        _add_pr(data, rows, labels, since, is_anomaly)
    data.anomalies.sort(key=lambda a: a["time_ms"])
    return data


def _anomaly_of(a, by_uid: dict) -> dict[str, Any]:
    neighbors = [summary(by_uid[u].fields) or u if u in by_uid else u for u in a.neighbors]
    return {
        "time_ms": a.row.time_ms,
        "service": a.row.service,
        "signal": a.row.signal,
        "score": float(a.score),
        "explanation": a.explanation,
        "record": summary(a.row.fields),
        "neighbors": neighbors,
    }


def from_store(settings, top: int, map_points: int) -> ReportData:
    """What `otad serve` stored: the anomalies (up to 100k), and up to 16k of the current model's rows (their
    combined scores and embeddings); the anomalies' records and nearest normal rows shown by their content."""
    from receiver.service import load_model, open_store

    store = open_store(settings)
    try:
        stored = store.latest_anomalies(100_000)
        mv = load_model(settings)
        version = mv.version if mv is not None else (stored[0]["model_version"] if stored else "none")
        data = ReportData(f"stored events under {settings.data_dir}", version)
        content: dict[str, str] = {}
        if mv is not None:
            fields = ["uid", "score", "is_anomaly", "embedding", "row"]
            rows = store.query_rows(version, "score >= 0", output_fields=fields, limit=16_384)
            data.rows = store.count_rows(version)
            content = {str(r["uid"]): summary((r.get("row") or {}).get("fields") or {}) for r in rows}
            data.scores["combined"] = np.array([float(r["score"]) for r in rows])
            emb = np.array([r["embedding"] for r in rows], np.float32).reshape(len(rows), -1)
            flagged = np.array([bool(r["is_anomaly"]) for r in rows], bool)
            _add_map(data, emb, flagged, [content[str(r["uid"])] for r in rows], map_points)
            wanted = {u for a in stored[:1000] for u in [a["source_uid"], *_neighbors(a)] if u not in content}
            uids = {"uids": sorted(wanted)}
            for r in store.query_rows(version, "uid in {uids}", uids, ["uid", "row"], 2000) if wanted else []:
                content[str(r["uid"])] = summary((r.get("row") or {}).get("fields") or {})
    finally:
        store.close()
    for a in stored:
        data.anomalies.append(
            {
                "time_ms": int(a["time_ms"]),
                "service": a["service"],
                "signal": a["signal"],
                "score": float(a["score"]),
                "explanation": a["explanation"],
                "record": content.get(str(a["source_uid"]), ""),
                "neighbors": [content.get(n) or n for n in _neighbors(a)],
            }
        )
        data.threshold = float(a["threshold"])
    data.anomalies.sort(key=lambda a: a["time_ms"])
    return data


def _neighbors(stored: dict[str, Any]) -> list[str]:
    return [str(n) for n in (stored.get("event") or {}).get("neighbors") or []]


def _add_map(data: ReportData, emb: np.ndarray, flagged: np.ndarray, titles: list[str], most: int) -> None:
    """A PCA projection of the embeddings: every anomaly (up to half the points) and a sample of the rest."""
    if len(emb) < 3:
        return
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    bad, good = np.flatnonzero(flagged), np.flatnonzero(~flagged)
    bad = rng.choice(bad, min(len(bad), most // 2), replace=False) if len(bad) else bad
    good = rng.choice(good, min(len(good), most - len(bad)), replace=False) if len(good) else good
    pick = np.concatenate([good, bad]).astype(int)
    data.map_xy = PCA(n_components=2, random_state=0).fit(emb).transform(emb[pick])
    data.map_flagged = flagged[pick]
    data.map_titles = [titles[i] for i in pick]


def _add_pr(data: ReportData, rows: list, labels: Path, since_ns: int, flagged: np.ndarray) -> None:
    """PR curve of the combined score over the rows after the model's training window (as `otad evaluate`), and
    the point of otad's own alerts (`flagged`: each row's own threshold, an episode's muted points excluded)."""
    from model.evaluate import average_precision, load_labels, pr_curve

    labelled = load_labels(labels)
    keep = np.array([r.time_unix_nano >= since_ns for r in rows], bool)
    if not keep.any():
        keep[:] = True
    y = np.array([r.uid in labelled for r in rows], np.int8)[keep]
    s = data.scores["combined"][keep]
    if not y.any():
        return
    precision, recall, _ = pr_curve(y, s)
    hit = flagged[keep]
    tp = float((hit & (y == 1)).sum())
    point = (tp / max(int(y.sum()), 1), tp / max(int(hit.sum()), 1))
    data.pr = {"precision": precision, "recall": recall, "ap": average_precision(y, s), "point": point}


# ------------------------------------------------------------------------------------------ the page
def _fmt_time(ms: float) -> str:
    return time.strftime("%m-%d %H:%M", time.gmtime(ms / 1000))


def _timeline(data: ReportData) -> str:
    if not data.anomalies:
        return "<p>No anomalies.</p>"
    t = np.array([a["time_ms"] for a in data.anomalies], np.float64)
    edges = np.linspace(t.min(), t.max() + 1, 41)
    series = {}
    for key in sorted({(a["service"], a["signal"]) for a in data.anomalies}):
        times = [a["time_ms"] for a in data.anomalies if (a["service"], a["signal"]) == key]
        counts, _ = np.histogram(times, bins=edges)
        series[f"{key[0]} / {key[1]}"] = (list(edges[:-1]), [float(c) for c in counts])
    top = dict(sorted(series.items(), key=lambda kv: -sum(kv[1][1]))[:9])
    return lines(top, label="anomalies over time per service and signal", fmt_x=_fmt_time)


def _explanations(data: ReportData, top: int) -> str:
    # The strongest first, at most two per service and signal: more kinds of anomaly shown.
    best: list[dict[str, Any]] = []
    per_stream: dict[tuple[str, str], int] = {}
    for a in sorted(data.anomalies, key=lambda a: -a["score"]):
        key = (a["service"], a["signal"])
        if per_stream.get(key, 0) < 2 and len(best) < top:
            best.append(a)
            per_stream[key] = per_stream.get(key, 0) + 1
    items = []
    for a in best:
        neighbors = "".join(f"<li>{esc(n)}</li>" for n in a["neighbors"][:3])
        record = f'<div class="record">{esc(a["record"])}</div>' if a["record"] else ""
        items.append(
            f'<li class="explanation"><b>{a["score"]:.0f}</b> {esc(a["service"])} / {esc(a["signal"])} at '
            f"{esc(_fmt_time(a['time_ms']))}Z{record}<div>{esc(a['explanation'])}</div>"
            + (
                f"<details><summary>nearest normal rows</summary><ul>{neighbors}</ul></details>"
                if neighbors
                else ""
            )
            + "</li>"
        )
    return f"<ol>{''.join(items)}</ol>" if items else "<p>No anomalies.</p>"


def _scores(data: ReportData) -> str:
    if not data.scores:
        return "<p>No scores.</p>"
    charts = [
        histogram(v, label=name, mark=data.threshold if name == "combined" else None)
        for name, v in data.scores.items()
    ]
    return '<div class="grid">' + "".join(charts) + "</div>"


def _pr(data: ReportData) -> str:
    if data.pr is None:
        return "<p>Give <code>--labels</code> (with <code>--input</code>) for the precision-recall curve.</p>"
    pr = data.pr
    curve = {f"otad (AP {pr['ap']:.3f})": (list(pr["recall"]), list(pr["precision"]))}
    r, p = pr["point"]
    point = {f"threshold: recall {r:.2f}, precision {p:.2f}": (r, p)}
    return lines(
        curve, label="precision-recall curve", y_range=(0.0, 1.0), points=point, width=520, height=320
    )


def _map(data: ReportData) -> str:
    if data.map_xy is None or data.map_flagged is None:
        return (
            "<p>The embedding map needs <code>--input</code> (embeddings are not kept with the events).</p>"
        )
    return scatter(data.map_xy, data.map_flagged, label="embeddings, PCA", titles=data.map_titles)


_CSS = (
    "body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}section{margin:28px 0}"
    "h2{border-bottom:1px solid #ddd;padding-bottom:4px}.grid{display:flex;flex-wrap:wrap;gap:12px}"
    ".explanation{margin:10px 0}.record{font-family:monospace;color:#555}.meta{color:#666}"
)


def render(data: ReportData, top: int = 10) -> str:
    """The whole page as one string (no external reference: the test checks for none)."""
    panels = {
        "timeline": ("Anomalies over time, per service and signal", _timeline(data)),
        "explanations": (
            f"Top {top} explanations (two per service and signal), with their nearest normal rows",
            _explanations(data, top),
        ),
        "scores": (
            "Score distributions (0-100; per detector member: -log10 p on the same scale)",
            _scores(data),
        ),
        "pr-curve": ("Precision and recall", _pr(data)),
        "embedding-map": ("Embedding map (PCA to 2-D)", _map(data)),
    }
    body = "".join(f'<section id="{k}"><h2>{esc(t)}</h2>{html}</section>' for k, (t, html) in panels.items())
    meta = (
        f"{esc(data.source)}; {data.rows:,} rows; {len(data.anomalies):,} anomalies; model {esc(data.model_version)}; "
        f"otad {esc(otad_version())}; {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>otad report</title>'
        f'<style>{_CSS}</style></head><body><h1>otad report</h1><p class="meta">{meta}</p>{body}</body></html>\n'
    )


def cmd_report(args: argparse.Namespace) -> int:
    from receiver.settings import Settings

    overrides = {"data_dir": args.data_dir, "milvus_uri": args.milvus_uri}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if args.labels is not None and not args.input:
        sys.stderr.write("otad report: --labels needs --input (the records to score and compare)\n")
        return 2
    if args.input:
        data = from_files(settings, args.input, args.labels, args.top, args.map_points)
    else:
        data = from_store(settings, args.top, args.map_points)
    args.output.write_text(render(data, args.top), encoding="utf-8")
    sys.stdout.write(
        f"report written to {args.output} ({data.rows:,} rows, {len(data.anomalies):,} anomalies)\n"
    )
    return 0
