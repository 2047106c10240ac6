"""The benchmark's datasets, converted into a work directory, with the label join kept on this side.

Every dataset is an OTLP/JSON lines file (the Collector file-exporter format) plus labels keyed the way the
benchmark can find them again: by the record's uid (simulator, BGL: `log.record.uid` = the row uid and the
events' `anomaly.source.uid`), or by `<series>@<time_ms>` (NAB, whose metric points carry no uid of their own).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from model.schema import Row

SIM_RATE = 6.0  # requests per simulated second (docs/evaluation.md's workload)
SIM_ANOMALY_RATE = 0.1  # share of simulated time inside incidents (docs/evaluation.md)
NAB_SERIES_FIELD = "unmapped.series"  # the data-point attribute `series`, as the row mapper stores it


@dataclass
class Dataset:
    """One labelled dataset. `labels`: key -> kind for every anomalous key; `times`: key -> time (ms) for every
    labelled key (anomalous or not, where the labels list normal ones too)."""

    name: str
    family: str  # sim | bgl | nab | webapp
    otlp: Path
    labels: dict[str, str]
    times: dict[str, int]
    info: dict[str, Any] = field(default_factory=dict)
    nab_dir: Path | None = None  # windows.csv, points.csv, series.csv (NAB only)
    host_series: dict[tuple[str, str], str] = field(default_factory=dict)  # NAB: (service, host) -> series

    @property
    def has_kinds(self) -> bool:
        return self.family != "nab"

    def row_key(self, row: Row) -> str:
        if self.family == "nab":
            return f"{row.fields.get(NAB_SERIES_FIELD)}@{row.time_ms}"
        return row.uid

    def nab_series(self, row: Row) -> str:
        return str(row.fields.get(NAB_SERIES_FIELD, ""))

    def event_key(self, resource: Mapping[str, Any], attrs: Mapping[str, Any], time_unix_nano: int) -> str:
        """The label key of an anomaly event (NAB: its source resource names the series, its time the point)."""
        if self.family == "nab":
            series = self.host_series.get((str(resource.get("service.name")), str(resource.get("host.name"))))
            return f"{series}@{time_unix_nano // 1_000_000}"
        return str(attrs.get("anomaly.source.uid"))


def _run(cmd: list[str], log: Callable[[str], None]) -> str:
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    log(f"{Path(cmd[1]).name}: {done.stdout.strip()[:300]} ({time.monotonic() - t0:.1f}s)")
    return done.stdout


def prepare_sim(
    work: Path, seed: int, minutes: float, log: Callable[[str], None], text_logs: bool = False
) -> Dataset:
    """`otad simulate --output-dir` in-process: the labelled shop, `minutes` simulated minutes, fixed seed.
    `text_logs` (`sim-text-<seed>`): the same records, each log record only its line, with no severity and no
    attributes but the uid, as a filelog receiver without parsers forwards an application's log file."""
    from sim.simulate import FileSink, SimulateConfig, simulate

    name = f"sim-text-{seed}" if text_logs else f"sim-{seed}"
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    config = SimulateConfig(
        duration_s=minutes * 60, rate=SIM_RATE, seed=seed, anomaly_rate=SIM_ANOMALY_RATE, speedup=0.0
    )
    t0 = time.monotonic()
    summary = simulate(config, [FileSink(out / "otlp.jsonl")], out / "labels.csv")
    labels, times = {}, {}
    with open(out / "labels.csv", newline="") as handle:
        for r in csv.DictReader(handle):
            labels[r["uid"]] = r["kind"]
            times[r["uid"]] = int(r["time_unix_nano"]) // 1_000_000
    info = {
        "simulated_minutes": minutes,
        "rate": SIM_RATE,
        "anomaly_rate": SIM_ANOMALY_RATE,
        "seed": seed,
        "records": summary.total,
        "records_per_signal": dict(summary.records),
        "episodes": summary.episodes,
        "labelled": len(labels),
    }
    log(
        f"sim seed {seed}: {summary.total} records ({dict(summary.records)}), {summary.episodes} episodes, "
        f"{len(labels)} labelled, {minutes:g} simulated min ({time.monotonic() - t0:.1f}s)"
    )
    if text_logs:
        _logs_as_lines(out / "otlp.jsonl")
    return Dataset(name, "sim", out / "otlp.jsonl", labels, times, info)


def _logs_as_lines(path: Path) -> None:
    """Rewrite the file's log records in place as bare lines: the body's text, the uid, nothing else."""
    tmp = path.with_suffix(".tmp")
    with path.open() as fin, tmp.open("w") as fout:
        for line in fin:
            doc = json.loads(line)
            for rl in doc.get("resourceLogs", []):
                for sl in rl.get("scopeLogs", []):
                    for rec in sl.get("logRecords", []):
                        uid = [a for a in rec.get("attributes", []) if a["key"] == "log.record.uid"]
                        for key in ("severityNumber", "severityText", "attributes", "traceId", "spanId"):
                            rec.pop(key, None)
                        rec["attributes"] = uid
            fout.write(json.dumps(doc) + "\n")
    tmp.replace(path)


def prepare_bgl(
    work: Path, devdata: Path, log: Callable[[str], None], max_lines: int | None = None
) -> Dataset:
    """BGL_2k via the devdata converter (optionally only its first `max_lines` lines, for fast tests)."""
    src = devdata / "raw" / "bgl" / "BGL_2k.log"
    out = work / "bgl"
    out.mkdir(parents=True, exist_ok=True)
    if max_lines is not None:
        cut = out / "BGL_head.log"
        with open(src, encoding="utf-8", errors="replace") as fin:
            cut.write_text("".join(line for _, line in zip(range(max_lines), fin, strict=False)))
        src = cut
    _run([sys.executable, str(devdata / "bgl_to_otlp.py"), str(src), str(out)], log)
    labels, times, total = {}, {}, 0
    with open(out / "labels.csv", newline="") as handle:
        for r in csv.DictReader(handle):
            total += 1
            times[r["uid"]] = int(r["time_ms"])
            if r["is_anomaly"] == "1":
                labels[r["uid"]] = r["reason"] or "alert"
    info = {"records": total, "labelled": len(labels), "max_lines": max_lines}
    return Dataset("bgl", "bgl", out / "logs.jsonl", labels, times, info)


def prepare_bgl_lines(
    work: Path, devdata: Path, log: Callable[[str], None], max_lines: int | None = None
) -> Dataset:
    """BGL_2k as a Collector's filelog receiver with a timestamp parser and no severity parser sends it: each
    line, its label column cut off, is a plain-text body with no severity and no attributes but the uid (the
    level is only in the text). The time is the line's own, so the set keeps its order."""
    from datetime import datetime

    src = devdata / "raw" / "bgl" / "BGL_2k.log"
    out = work / "bgl-lines"
    out.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8", errors="replace") as handle:
        lines = [line.rstrip("\n") for _, line in zip(range(max_lines or 1 << 62), handle, strict=False)]
    parsed = []
    for line in lines:
        parts = line.split(" ", 5)
        if len(parts) < 6:
            continue
        t = datetime.strptime(parts[4], "%Y-%m-%d-%H.%M.%S.%f").replace(tzinfo=UTC)
        parsed.append((int(t.timestamp()) * 10**9 + t.microsecond * 1000, parts[0], line.split(" ", 1)[1]))
    parsed.sort(key=lambda r: r[0])
    labels, times = {}, {}
    with open(out / "logs.jsonl", "w") as fh:
        for a in range(0, len(parsed), 100):
            records = []
            for j, (tns, label, body) in enumerate(parsed[a : a + 100], start=a):
                uid = f"bgl-line-{j:06d}"
                times[uid] = tns // 1_000_000
                if label != "-":
                    labels[uid] = label
                uid_attr = {"key": "log.record.uid", "value": {"stringValue": uid}}
                records.append(
                    {"timeUnixNano": str(tns), "body": {"stringValue": body}, "attributes": [uid_attr]}
                )
            resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "bgl"}}]}
            fh.write(
                json.dumps({"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": records}]}]})
            )
            fh.write("\n")
    info = {"records": len(times), "labelled": len(labels), "max_lines": max_lines}
    log(f"bgl-lines: {len(times)} unparsed lines, {len(labels)} alerts")
    return Dataset("bgl-lines", "bgl", out / "logs.jsonl", labels, times, info)


def prepare_webapp(
    work: Path, log: Callable[[str], None], rows: int = 27_000, seed: int = 5, shape: str = "attributes"
) -> Dataset:
    """Synthetic logs of issue 12's held-out shape (benchmarks/webapp_logs.py): rare INFO faults recurring
    through the whole period, the training half included. Not real data: one yardstick among several. `shape`:
    the fields as attributes (`webapp`), or only in a JSON (`webapp-json`) or logfmt (`webapp-logfmt`) body."""
    from benchmarks.webapp_logs import write
    from receiver.jsonfiles import read_rows

    name = "webapp" if shape == "attributes" else f"webapp-{shape}"
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    labels = write(out / "logs.jsonl", rows, seed, shape)
    times = {r.uid: r.time_ms for r in read_rows([out / "logs.jsonl"])}
    info = {"records": len(times), "labelled": len(labels), "seed": seed, "synthetic": True, "shape": shape}
    log(f"{name}: {len(times)} records, {len(labels)} faults, seed {seed} ({time.monotonic() - t0:.1f}s)")
    return Dataset(name, "webapp", out / "logs.jsonl", labels, times, info)


def prepare_nab(work: Path, devdata: Path, log: Callable[[str], None]) -> Dataset:
    """NAB dev subset via the devdata converter; the replay and the model read metrics_interleaved.jsonl."""
    out = work / "nab"
    _run([sys.executable, str(devdata / "nab_to_otlp.py"), str(devdata / "raw" / "nab"), str(out)], log)
    labels, times = {}, {}
    with open(out / "points.csv", newline="") as handle:
        for r in csv.DictReader(handle):
            key = f"{r['series']}@{r['time_ms']}"
            times[key] = int(r["time_ms"])
            if r["in_window"] == "1":
                labels[key] = "window"
    with open(out / "series.csv", newline="") as handle:
        host_series = {(r["category"], r["host_name"]): r["series"] for r in csv.DictReader(handle)}
    manifest = json.loads((out / "manifest.json").read_text())
    info = {k: manifest[k] for k in ("series", "points", "points_in_windows", "windows") if k in manifest}
    return Dataset("nab", "nab", out / "metrics_interleaved.jsonl", labels, times, info, out, host_series)


def count_records(line: Mapping[str, Any]) -> int:
    """Records in one OTLP/JSON request: log records, spans or metric data points (rows otad makes of them)."""
    n = 0
    for rl in line.get("resourceLogs", ()):
        n += sum(len(sl.get("logRecords", ())) for sl in rl.get("scopeLogs", ()))
    for rs in line.get("resourceSpans", ()):
        n += sum(len(ss.get("spans", ())) for ss in rs.get("scopeSpans", ()))
    for rm in line.get("resourceMetrics", ()):
        for sm in rm.get("scopeMetrics", ()):
            for m in sm.get("metrics", ()):
                for kind in ("gauge", "sum", "histogram", "exponentialHistogram", "summary"):
                    n += len(m.get(kind, {}).get("dataPoints", ()))
    return n
