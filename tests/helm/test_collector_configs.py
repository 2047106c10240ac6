"""docs/collector/*.yaml, docs/querying.md and the Grafana dashboard: the Collector configs are wired correctly,
and every anomaly field they use is one otad really emits, compared with an event from the real service."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc

from receiver.service import Service
from receiver.settings import Settings
from tests.helm.tools import REPO
from tests.otlp_requests import log_request, normal_logs, slow_failures
from tests.otlp_sink import OtlpSink

DOCS = REPO / "docs"
CONFIGS = sorted((DOCS / "collector").glob("*.yaml"))
QUERY_DOCS = [
    DOCS / "querying.md",
    DOCS / "grafana" / "otad-anomalies.json",
    DOCS / "collector" / "README.md",
    DOCS / "kubernetes.md",
    *CONFIGS,
]
LOOP_FILTER = 'instrumentation_scope.name == "otad"'
OTAD_PORT = 4317
T0 = 1_762_041_600_000_000_000


# ------------------------------------------------------------------------------------ a real anomaly event
@pytest.fixture(scope="module")
def emitted(tmp_path_factory) -> dict:
    """Fields of real anomaly events: the service trains on normal logs, scores outliers and exports events to
    an OTLP sink. Returns {"attributes", "resource", "scope", "event_name", "body_paths"}."""
    with OtlpSink() as sink:
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("otad") / "data",
            grpc_endpoint="localhost:0",
            http_endpoint="localhost:0",
            metrics_endpoint="localhost:0",
            export_endpoint=sink.endpoint,
            event_wait_s=0,  # each finding's first event at once, not after 60 s (receiver/aggregate.py)
            bootstrap_rows=150,
            train_epochs=2,
            batch_wait_ms=20,
            milvus_lite_process=False,
        )
        service = Service(settings)
        service.start()
        try:
            channel = grpc.insecure_channel(f"localhost:{service.grpc_port}")
            logs = logs_grpc.LogsServiceStub(channel)
            logs.Export(
                log_request(normal_logs(200, T0, random.Random(0), "n0", duration_attr=True)), timeout=5
            )
            deadline = time.monotonic() + 60
            while service.pipeline.state != "scoring" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert service.pipeline.state == "scoring", service.pipeline.status()
            start = T0 + 210 * 20_000_000
            logs.Export(
                log_request(
                    normal_logs(20, start, random.Random(9), "n9", duration_attr=True)
                    + slow_failures(3, start, duration_attr=True)
                ),
                timeout=5,
            )
            assert sink.wait_for(lambda: len(sink.log_records()) > 0, timeout=30), "no anomaly event exported"
            channel.close()
        finally:
            service.stop(5)
        resource, scope, record = sink.log_records()[0]
    return {
        "attributes": {kv.key for kv in record.attributes},
        "resource": {kv.key for kv in resource.attributes},
        "scope": scope.name,
        "event_name": record.event_name,
        "trace_id": record.trace_id.hex(),
        "body_paths": _paths(json.loads(record.body.string_value)),
    }


def _paths(node, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            out |= {path} | _paths(value, path)
    elif isinstance(node, list):
        for value in node:
            out |= _paths(value, prefix)
    return out


def test_the_real_event_has_the_documented_shape(emitted):
    assert emitted["scope"] == "otad" and emitted["event_name"] == "otad.anomaly"
    assert {"anomaly.score", "anomaly.source.signal", "anomaly.finding.uid"} <= emitted["attributes"]
    assert "event.name" not in emitted["attributes"]  # deprecated; only with OTAD_EVENT_NAME_ATTRIBUTE=true
    assert "service.name" in emitted["resource"] and emitted["trace_id"] == bytes(range(1, 17)).hex()


# ------------------------------------------------------------------------------------- the Collector configs
def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_both_configs_exist():
    assert {p.name for p in CONFIGS} == {"agent-to-otad.yaml", "loadbalancing-to-otad.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_pipelines_reference_defined_components(path):
    config = load(path)
    connectors = set(config.get("connectors") or {})
    pipelines = config["service"]["pipelines"]
    assert {name.split("/")[0] for name in pipelines} >= {"logs", "traces", "metrics"}
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "exporters"):
            assert pipeline.get(kind), f"{name}: no {kind}"
        for kind in used:
            for component in pipeline.get(kind, []):
                defined = set(config.get(kind) or {}) | (connectors if kind != "processors" else set())
                assert component in defined, (
                    f"{path.name}: pipeline {name} uses undefined {kind[:-1]} {component}"
                )
                used[kind].add(component)
        processors = pipeline.get("processors", [])
        if processors:
            assert processors[0] == "memory_limiter", f"{name}: memory_limiter must come first"
    for kind, names in used.items():
        unused = set(config.get(kind) or {}) - names
        assert not unused, f"{path.name}: {kind} defined but unused: {unused}"


def _otad_exporters(config: dict) -> dict[str, dict]:
    return {name: spec for name, spec in config["exporters"].items() if name.split("/")[-1] == "otad"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_otad_is_reached_on_4317(path):
    exporters = _otad_exporters(load(path))
    assert exporters
    for name, spec in exporters.items():
        kind = name.split("/")[0]
        if kind in ("otlp_grpc", "otlp"):
            assert spec["endpoint"].endswith(f":{OTAD_PORT}"), spec["endpoint"]
            assert spec["compression"] == "gzip"
        else:
            assert kind == "loadbalancing" and spec["routing_key"] == "service"
            resolver = spec["resolver"]
            assert "endpoint" not in spec["protocol"]["otlp"]  # the resolver supplies it
            if "k8s" in resolver:
                assert resolver["k8s"]["ports"] == [OTAD_PORT] and "." in resolver["k8s"]["service"]
            else:
                assert resolver["dns"]["port"] == OTAD_PORT
    receiver = load(path)["receivers"]["otlp"]["protocols"]["grpc"]
    assert receiver["endpoint"].endswith(f":{OTAD_PORT}")  # otad's events come back here


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_feedback_loop_is_broken(path, emitted):
    config = load(path)
    otad = set(_otad_exporters(config))
    loop_filters = {
        name
        for name, spec in config["processors"].items()
        if name.split("/")[0] == "filter" and LOOP_FILTER in spec["logs"]["log_record"]
    }
    assert loop_filters
    assert emitted["scope"] == "otad"  # the filter matches what otad really sends
    for name, pipeline in config["service"]["pipelines"].items():
        if name.startswith("logs") and otad & set(pipeline["exporters"]):
            assert loop_filters & set(pipeline["processors"]), (
                f"{name} feeds otad without dropping scope otad"
            )
            assert set(pipeline["exporters"]) <= otad, (
                f"{name}: the filter would also hide events from the backend"
            )
        if name.startswith("logs") and not otad & set(pipeline["exporters"]):
            assert not loop_filters & set(pipeline.get("processors", [])), (
                f"{name}: events must reach the backend"
            )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_both_exporter_spellings_are_documented(path):
    text = path.read_text()
    assert "otlp_grpc" in load(path)["service"]["pipelines"]["logs"]["exporters"][0]
    assert "sed 's/otlp_grpc/otlp/g'" in text and "v0.144.0" in text
    legacy = yaml.safe_load(text.replace("otlp_grpc", "otlp"))  # the older spelling is the same config
    assert "otlp/backend" in legacy["exporters"]


# ------------------------------------------------------------------ fields used in configs, queries, dashboard
_DOTTED = re.compile(r"(?<![\w.])anomaly\.[a-z_]+(?:\.[a-z_]+)*")
_UNDERSCORED = re.compile(r"(?<![\w.])anomaly_[a-z_]+")  # Loki structured metadata: dots become underscores


@pytest.mark.parametrize("path", QUERY_DOCS, ids=lambda p: p.name)
def test_queries_use_only_emitted_fields(path, emitted):
    text = path.read_text()
    attributes = emitted["attributes"]
    dotted = set(_DOTTED.findall(text))
    unknown = {t for t in dotted if t not in attributes and t.removesuffix(".keyword") not in attributes}
    assert not unknown, f"{path.name} uses {sorted(unknown)}; otad emits {sorted(attributes)}"
    loki_names = {a.replace(".", "_") for a in attributes}
    body_fields = {p.split(".")[-1] for p in emitted["body_paths"]}
    unknown = set(_UNDERSCORED.findall(text)) - loki_names - body_fields
    assert not unknown, (
        f"{path.name} uses {sorted(unknown)}; Loki names of otad's attributes: {sorted(loki_names)}"
    )


def test_query_docs_use_the_event_identity(emitted):
    text = (DOCS / "querying.md").read_text()
    assert emitted["event_name"] in text
    assert f"ScopeName = '{emitted['scope']}'" in text and f'scope.name": "{emitted["scope"]}"' in text
    assert f'scope_name="{emitted["scope"]}"' in text
    for needed in (
        "anomaly.score",
        "anomaly.source.signal",
        "service.name",
        "TraceId",
        "ScopeName",
        "LogAttributes['anomaly.score']",
        "ResourceAttributes['service.name']",
    ):
        assert needed in text, needed


def test_dashboard_is_valid_grafana_json(emitted):
    dashboard = json.loads((DOCS / "grafana" / "otad-anomalies.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
