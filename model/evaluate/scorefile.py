"""Evaluate: read and write score files and labels (CSV, DESIGN.md §2), with errors that name file and line."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

SCORE_COLUMNS = (
    "uid",
    "signal",
    "time_unix_nano",
    "service",
    "score",
    "raw_score",
    "threshold",
    "is_anomaly",
)
LABEL_COLUMNS = ("uid", "signal", "kind", "time_unix_nano", "service")


def _read_csv(path: str | Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; expected header {','.join(columns)}"
            )
        yield from enumerate(reader, start=2)


def load_scores(path: str | Path) -> list[dict[str, Any]]:
    """Read a score file into dicts with typed values (str, int and float, as SCORE_COLUMNS).

    Raises:
        ValueError: a column is missing or a value does not parse; the message names the file and line.
    """
    rows = []
    for line, raw in _read_csv(path, SCORE_COLUMNS):
        try:
            row = {
                "uid": raw["uid"],
                "signal": raw["signal"],
                "service": raw["service"],
                "time_unix_nano": int(raw["time_unix_nano"]),
                "score": float(raw["score"]),
                "raw_score": float(raw["raw_score"]),
                "threshold": float(raw["threshold"]),
                "is_anomaly": int(raw["is_anomaly"]),
            }
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{line}: {exc}") from exc
        if row["is_anomaly"] not in (0, 1):
            raise ValueError(f"{path}:{line}: is_anomaly must be 0 or 1, got {row['is_anomaly']}")
        rows.append(row)
    return rows


def load_label_rows(path: str | Path) -> dict[str, tuple[str, int | None]]:
    """Read a labels CSV into uid -> (kind, time_unix_nano or None); an empty kind reads as "unknown".

    Raises:
        ValueError: a column is missing, a time does not parse, or a uid carries two kinds.
    """
    labels: dict[str, tuple[str, int | None]] = {}
    for line, raw in _read_csv(path, LABEL_COLUMNS):
        kind = raw["kind"] or "unknown"
        t = raw["time_unix_nano"]
        try:
            time_ns = int(t) if t else None
        except ValueError as exc:
            raise ValueError(f"{path}:{line}: {exc}") from exc
        if raw["uid"] in labels and labels[raw["uid"]][0] != kind:
            raise ValueError(
                f"{path}:{line}: uid {raw['uid']} is labelled both {labels[raw['uid']][0]} and {kind}"
            )
        labels[raw["uid"]] = (kind, time_ns)
    return labels


def load_labels(path: str | Path) -> dict[str, str]:
    """Read a labels CSV into uid -> kind (an empty kind reads as "unknown")."""
    return {uid: kind for uid, (kind, _) in load_label_rows(path).items()}


def write_score_file(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write a score file, floats with 4 decimals. Returns the number of rows written."""
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SCORE_COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    r["uid"],
                    r["signal"],
                    int(r["time_unix_nano"]),
                    r["service"],
                    f"{float(r['score']):.4f}",
                    f"{float(r['raw_score']):.4f}",
                    f"{float(r['threshold']):.4f}",
                    int(r["is_anomaly"]),
                ]
            )
            n += 1
    return n
