"""Score the anomaly events a service run exported against the dataset's labels.

Only rows after the cold-start model's training window can be flagged (the window's rows became its reference),
so recall counts the labelled rows after it. Events are deduplicated by their source (a resend may repeat one).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from benchmarks.detection_lib.datasets import Dataset
from benchmarks.detection_lib.metrics import nab_score
from receiver.otlp.otlpjson import to_json_line

EVENT_NAME = "otad.anomaly"


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "double_value", "int_value", "bool_value") else None


def _events(ds: Dataset, requests: Sequence[Any]) -> tuple[dict[str, float], int]:
    """label key -> highest score, and the number of event records (before deduplication)."""
    keys: dict[str, float] = {}
    n = 0
    for req in requests:
        for rl in req.resource_logs:
            res = {kv.key: _value(kv.value) for kv in rl.resource.attributes}
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    attrs = {kv.key: _value(kv.value) for kv in rec.attributes}
                    if rec.event_name != EVENT_NAME and attrs.get("event.name") != EVENT_NAME:
                        continue
                    n += 1
                    key = ds.event_key(res, attrs, rec.time_unix_nano)
                    keys[key] = max(keys.get(key, 0.0), float(attrs.get("anomaly.score") or 0.0))
    return keys, n


def score_events(
    ds: Dataset,
    requests: Sequence[Any],
    events_path: Path,
    cold_start: dict[str, Any],
    devdata: Path,
    times_ns: np.ndarray,
) -> dict[str, Any]:
    """Precision/recall of the events, kinds caught, events per hour of scored data, NAB scores (NAB)."""
    with open(events_path, "w") as handle:
        for req in requests:
            handle.write(to_json_line(req) + "\n")
    flagged, n_records = _events(ds, requests)
    cut_ns = int(cold_start.get("train_end_unix_nano") or 0)
    cut_ms = cut_ns // 1_000_000
    after = {k: kind for k, kind in ds.labels.items() if ds.times.get(k, 0) > cut_ms}
    hits = [k for k in flagged if k in ds.labels]
    in_window = [k for k in flagged if k in ds.times and ds.times[k] <= cut_ms]
    scored_rows = int((times_ns > cut_ns).sum())
    hours = (int(times_ns[-1]) - cut_ns) / 3.6e12 if len(times_ns) and cut_ns else 0.0
    out: dict[str, Any] = {
        "events": n_records,
        "flagged_sources": len(flagged),
        "scored_rows": scored_rows,
        "labelled_after_cut": len(after),
        "precision": round(len(hits) / len(flagged), 4) if flagged else None,
        "recall": round(sum(1 for k in flagged if k in after) / len(after), 4) if after else None,
        "events_per_hour_of_data": round(len(flagged) / hours, 4) if hours > 0 else None,
        "scored_hours_of_data": round(hours, 3),
        "events_at_or_before_cut": len(in_window),  # scored late: arrived after the cold start began
        "events_unresolved": sum(1 for k in flagged if k not in ds.times and k not in ds.labels)
        if ds.family != "sim"
        else None,
        "events_path": str(events_path),
    }
    if ds.has_kinds:
        present = sorted(set(after.values()))
        caught = sorted({after[k] for k in flagged if k in after})
        out.update(kinds_present=len(present), kinds_flagged=len(caught), kinds_caught=caught)
    if ds.family == "nab" and ds.nab_dir is not None:
        out["nab"] = nab_score(ds.nab_dir, devdata, events_path)
        out["nab"]["protocol"] = (
            "service: points before the cold start and unflagged points count as unflagged"
        )
    return out
