"""`otad simulate`: files, labels, determinism and sending through the SDK's OTLP/gRPC exporters."""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from model.schema import metric_point_uid
from receiver.otlp.otlpjson import from_dict
from sim import simulate
from sim.world import KINDS
from tests.otlp_sink import OtlpSink

# 20 simulated minutes at a modest rate with a high anomaly rate: all nine kinds fit (one episode each).
FLAGS = [
    "--duration",
    "1200",
    "--rate",
    "2",
    "--anomaly-rate",
    "0.3",
    "--seed",
    "7",
    "--start",
    "2026-11-02T10:00:00Z",
]
FORBIDDEN = ("anomal", "label", "injected", *KINDS)


def run_simulate(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    return simulate.run(parser.parse_args(list(argv)))


def scalar(value) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def load(path: Path) -> dict:
    """Every record of a file-exporter file, by signal: uid -> (service, trace id, attributes, body)."""
    records: dict[str, dict] = {"logs": {}, "traces": {}, "metrics": {}}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            request = from_dict(json.loads(line))
            for rl in getattr(request, "resource_logs", []):
                service = _service(rl.resource)
                for record in (r for sl in rl.scope_logs for r in sl.log_records):
                    attrs = {kv.key: scalar(kv.value) for kv in record.attributes}
                    records["logs"][attrs["log.record.uid"]] = (
                        service,
                        record.trace_id.hex(),
                        attrs,
                        record.body.string_value,
                    )
            for rs in getattr(request, "resource_spans", []):
                service = _service(rs.resource)
                for span in (s for ss in rs.scope_spans for s in ss.spans):
                    attrs = {kv.key: scalar(kv.value) for kv in span.attributes}
                    records["traces"][span.span_id.hex()] = (service, span.trace_id.hex(), attrs, span.name)
            for rm in getattr(request, "resource_metrics", []):
                service = _service(rm.resource)
                for metric in (m for sm in rm.scope_metrics for m in sm.metrics):
                    points = getattr(metric, metric.WhichOneof("data")).data_points
                    for point in points:
                        attrs = {kv.key: scalar(kv.value) for kv in point.attributes}
                        uid = metric_point_uid(service, metric.name, attrs, point.time_unix_nano)
                        records["metrics"][uid] = (service, "", attrs, metric.name)
    return records


def count_records(path: Path) -> int:
    """Records in a file-exporter file, counted from the JSON alone (cheaper than parsing to protobuf)."""
    total = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            data = json.loads(line)
            for rl in data.get("resourceLogs", []):
                total += sum(len(sl.get("logRecords", [])) for sl in rl.get("scopeLogs", []))
            for rs in data.get("resourceSpans", []):
                total += sum(len(ss.get("spans", [])) for ss in rs.get("scopeSpans", []))
            for rm in data.get("resourceMetrics", []):
                for metric in (m for sm in rm.get("scopeMetrics", []) for m in sm.get("metrics", [])):
                    total += sum(
                        len(v.get("dataPoints", [])) for k, v in metric.items() if isinstance(v, dict)
                    )
    return total


def _service(resource) -> str:
    return next(scalar(kv.value) for kv in resource.attributes if kv.key == "service.name")


def read_labels(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    assert run_simulate("--output-dir", str(out), *FLAGS) == 0
    return out


@pytest.fixture(scope="module")
def records(run_dir) -> dict:
    return load(run_dir / "otlp.jsonl")


def test_writes_telemetry_and_labels(run_dir, records):
    assert (run_dir / "otlp.jsonl").stat().st_size > 0
    assert all(len(records[s]) > 500 for s in records)
    services = {service for signal in records.values() for service, *_ in signal.values()}
    assert {"frontend", "auth", "inventory", "payments", "postgres"} <= services
    with open(run_dir / "labels.csv", encoding="utf-8") as handle:
        assert handle.readline().strip() == "uid,signal,kind,time_unix_nano,service"


def test_every_kind_is_labelled_and_every_label_names_a_record(run_dir, records):
    labels = read_labels(run_dir / "labels.csv")
    assert {row["kind"] for row in labels} == set(KINDS)
    for row in labels:
        assert row["uid"] in records[row["signal"]], row
        assert records[row["signal"]][row["uid"]][0] == row["service"]
    assert len({(row["uid"], row["signal"]) for row in labels}) == len(labels)


def test_labels_pick_the_records_that_carry_the_anomaly(run_dir, records):
    labels = read_labels(run_dir / "labels.csv")
    by_kind = {kind: [records[r["signal"]][r["uid"]] for r in labels if r["kind"] == kind] for kind in KINDS}
    assert all(attrs.get("auth.result") != "success" for _, _, attrs, _ in by_kind["brute_force"])
    assert any(body.startswith("login failed for user") for _, _, _, body in by_kind["brute_force"])
    assert any("query timeout after 5000 ms" in body for _, _, _, body in by_kind["db_timeout_burst"])
    assert any(a.get("http.response.status_code") == 500 for _, _, a, _ in by_kind["error_rate_burst"])
    assert any(body.startswith("fatal: ") for _, _, _, body in by_kind["crash_loop"])
    assert any(a.get("http.response.status_code") == 503 for _, _, a, _ in by_kind["crash_loop"])
    assert all(
        name == "process.memory.usage"
        for _, _, _, name in (records["metrics"][r["uid"]] for r in labels if r["kind"] == "memory_leak")
    )
    assert any(a.get("url.path", "").startswith("/admin/") for _, _, a, _ in by_kind["admin_endpoint"])
    sizes = [
        a["http.response.body.size"]
        for _, _, a, _ in by_kind["data_exfiltration"]
        if "http.response.body.size" in a
    ]
    assert min(sizes) > 2_000_000  # normal exports are ~40 KB


def test_no_label_leaks_into_the_telemetry(records):
    for signal in records.values():
        for service, _, attrs, body in signal.values():
            texts = [service, body, *attrs, *(str(v) for v in attrs.values())]
            for text in texts:
                low = text.lower()
                assert not any(word in low for word in FORBIDDEN), text


def test_logs_share_trace_context_with_spans(records):
    span_traces = {trace_id for _, trace_id, _, _ in records["traces"].values()}
    log_traces = [trace_id for _, trace_id, _, _ in records["logs"].values() if trace_id]
    assert len(log_traces) > 0.8 * len(records["logs"])
    assert set(log_traces) <= span_traces


def test_same_seed_same_bytes_other_seed_other_bytes(run_dir, tmp_path):
    again = tmp_path / "again"
    assert run_simulate("--output-dir", str(again), *FLAGS) == 0
    for name in ("otlp.jsonl", "labels.csv"):
        assert (again / name).read_bytes() == (run_dir / name).read_bytes()
    other = tmp_path / "other"
    other_flags = ["8" if i and FLAGS[i - 1] == "--seed" else flag for i, flag in enumerate(FLAGS)]
    assert run_simulate("--output-dir", str(other), *other_flags) == 0
    assert (other / "otlp.jsonl").read_bytes() != (run_dir / "otlp.jsonl").read_bytes()


def test_default_anomaly_rate_gives_a_sane_fraction(tmp_path):
    out = tmp_path / "sim"
    assert run_simulate("--output-dir", str(out), "--duration", "2400", "--rate", "1.5", "--seed", "3") == 0
    total = count_records(out / "otlp.jsonl")
    labels = read_labels(out / "labels.csv")
    assert 0.002 < len(labels) / total < 0.06


def test_target_sends_through_the_sdk_exporters(run_dir, records):
    with OtlpSink() as sink:
        assert (
            run_simulate(
                "--target",
                sink.endpoint,
                "--speedup",
                "1e9",
                "--labels",
                str(run_dir / "sent-labels.csv"),
                *FLAGS,
            )
            == 0
        )
        received = Counter({"logs": len(sink.log_records()), "traces": len(sink.spans())})
        sent_points = sum(len(getattr(m, m.WhichOneof("data")).data_points) for _, _, m in sink.metrics())
        span_ids = {span.span_id.hex() for _, _, span in sink.spans()}
    assert received == Counter({"logs": len(records["logs"]), "traces": len(records["traces"])})
    assert sent_points == len(records["metrics"])
    assert span_ids == set(records["traces"])
    assert (run_dir / "sent-labels.csv").read_bytes() == (run_dir / "labels.csv").read_bytes()


def test_needs_a_destination(caplog):
    assert run_simulate("--duration", "60") == 2
    assert "--target" in caplog.text
