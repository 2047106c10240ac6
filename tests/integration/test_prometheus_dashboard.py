"""Debian's Prometheus scrapes a real otad's /metrics, and every PromQL expression of the Grafana dashboards
(docs/grafana/*.json, read from the JSON: panels, rows and variables whose data source is Prometheus) evaluates
through the Prometheus HTTP API without error; an expression over metrics that carry traffic returns series.

Skipped (with the reason) when the `prometheus` binary is missing: `.ci/run` installs it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.helm.tools import REPO
from tests.helpers import free_port
from tests.otlp_sink import OtlpSink
from tests.real_otad import anomalous_otad

PROMETHEUS = shutil.which("prometheus")
DASHBOARDS = sorted((REPO / "docs" / "grafana").glob("*.json"))
# Grafana's built-in interval variables, as Grafana fills them for a last-15-minutes view.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "15m",
    "__range_s": "900",
    "__interval_ms": "15000",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def _datasource_vars(dashboard: dict) -> set[str]:
    return {
        v["name"]
        for v in dashboard.get("templating", {}).get("list", [])
        if v.get("type") == "datasource" and v.get("query") == "prometheus"
    }


def _is_prometheus(source, prom_vars: set[str]) -> bool:
    if isinstance(source, dict):
        uid = str(source.get("uid", ""))
        return source.get("type") == "prometheus" or uid.strip("${}") in prom_vars
    return isinstance(source, str) and (source.lower() == "prometheus" or source.strip("${}") in prom_vars)


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _fill(expr: str, dashboard: dict) -> str:
    """Grafana's variables replaced: built-ins by fixed intervals, multi-value ones by a match-all regex."""
    values = dict(BUILTINS)
    for v in dashboard.get("templating", {}).get("list", []):
        current = (v.get("current") or {}).get("value")
        if v.get("includeAll") or current in ("$__all", ["$__all"]):
            values[v["name"]] = v.get("allValue") or ".*"
        elif isinstance(current, str) and current:
            values[v["name"]] = current
        else:
            values[v["name"]] = ".*"

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return values.get(name, m.group(0))

    return VARIABLE.sub(sub, expr)


def promql_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every Prometheus target and query variable of every dashboard."""
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        prom_vars = _datasource_vars(dashboard)
        for panel in _panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel.get("datasource")
                if target.get("expr") and _is_prometheus(source, prom_vars):
                    where = f"{path.name}: {panel.get('title')} [{target.get('refId', '')}]"
                    found.append((where, _fill(target["expr"], dashboard)))
        for v in dashboard.get("templating", {}).get("list", []):
            query = v.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            if v.get("type") == "query" and _is_prometheus(v.get("datasource"), prom_vars) and query:
                inner = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
                if inner:  # label_values(...) and friends are Grafana's, not PromQL
                    found.append((f"{path.name}: variable {v['name']}", _fill(inner.group(1), dashboard)))
    return found


def _get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return json.loads(_get(url))
    except urllib.error.HTTPError as exc:  # 400/422: a bad expression, with Prometheus's error in the body
        return json.loads(exc.read() or b"{}")


def _live_metrics(text: str) -> set[str]:
    """Metric names (and their base names without _total/_bucket/_sum/_count) with a non-zero sample."""
    live = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            metric = name.split("{")[0]
            if float(value) != 0:
                live |= {metric, re.sub(r"_(total|bucket|sum|count|created)$", "", metric)}
    return live


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """(Prometheus base URL, live metric names) while Prometheus scrapes a real otad every second."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("prometheus")
    with OtlpSink() as sink, anomalous_otad(tmp / "otad", sink) as service:
        target = f"127.0.0.1:{service.health.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs:\n  - job_name: otad\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        port = free_port()
        log = (tmp / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
                try:
                    scrapes = _query(base, 'count_over_time(up{job="otad"}[1m])')["data"]["result"]
                    if scrapes and float(scrapes[0]["value"][1]) >= 4:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            else:
                pytest.fail("Prometheus did not scrape otad four times in 60 s")
            up = _query(base, 'up{job="otad"}')["data"]["result"]
            assert up and up[0]["value"][1] == "1", up
            live = _live_metrics(_get(f"http://{target}/metrics").decode())
            yield base, live
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()


def test_the_dashboards_have_promql():
    assert DASHBOARDS and promql_expressions(), "no Prometheus expression in docs/grafana/*.json"


@pytest.mark.parametrize("where, expr", promql_expressions(), ids=[w for w, _ in promql_expressions()])
def test_every_dashboard_expression_evaluates(prometheus, where, expr):
    base, live = prometheus
    answer = _query(base, expr)
    assert answer.get("status") == "success", f"{where}: {expr}\n{answer}"
    names = set(re.findall(r"\b(otad_\w+|process_\w+|python_\w+)", expr))
    if names and names <= live:
        assert answer["data"]["result"], f"{where}: no series from {expr} though {sorted(names)} have samples"


def test_some_dashboard_expressions_are_over_live_traffic(prometheus):
    """The series check above is not vacuous: the traffic sent reaches metrics the dashboards draw."""
    _, live = prometheus
    over_traffic = [
        where
        for where, expr in promql_expressions()
        if (names := set(re.findall(r"\b(otad_\w+|process_\w+|python_\w+)", expr))) and names <= live
    ]
    assert len(over_traffic) >= 3, over_traffic
