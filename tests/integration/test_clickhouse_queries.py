"""docs/querying.md's ClickHouse queries, run by ClickHouse itself (chDB, embedded) over the events of a real otad.

The events come from a running otad (trained in-process, sent slow failures) through its emitter to an OTLP sink;
each is inserted into the Collector ClickHouse exporter's `otel_logs` table (its DDL and its mapping: attribute
values as strings, ids as hex, the body as its string), and every ```sql block of the page's ClickHouse section
must run and return the anomalies the events hold.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter

import numpy as np
import pytest

from tests.helm.tools import REPO
from tests.otlp_sink import OtlpSink
from tests.real_otad import TRACE_ID, anomalous_otad

chdb_session = pytest.importorskip("chdb.session", reason="chDB (the `test` extra) is not installed")

DOC = REPO / "docs" / "querying.md"
DOC_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"  # the page's example id, replaced by the events' trace id

# The exporter's logs table (exporter/clickhouseexporter/internal/sqltemplates/logs_table.sql, engine MergeTree,
# no TTL), column for column.
OTEL_LOGS = """
CREATE TABLE otel_logs (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TimestampTime DateTime DEFAULT toDateTime(Timestamp),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    TraceFlags UInt8,
    SeverityText LowCardinality(String) CODEC(ZSTD(1)),
    SeverityNumber UInt8,
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    Body String CODEC(ZSTD(1)),
    ResourceSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion LowCardinality(String) CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    LogAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    EventName String CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_value mapValues(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_body Body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8
) ENGINE = MergeTree
PARTITION BY toDate(TimestampTime)
PRIMARY KEY (ServiceName, TimestampTime)
ORDER BY (ServiceName, TimestampTime, Timestamp)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1
"""


def as_string(value) -> str:
    """pcommon.Value.AsString(): strings as they are, numbers in shortest form, bytes base64, arrays/maps JSON."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind in ("array_value", "kvlist_value"):
        return json.dumps(_raw(value), separators=(",", ":"))
    return _scalar(value, kind)


def _scalar(value, kind: str) -> str:
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":  # strconv.FormatFloat(v, 'f', -1, 64): shortest, never an exponent
        d = value.double_value
        return (
            {math.inf: "+Inf", -math.inf: "-Inf"}.get(d, "NaN")
            if not math.isfinite(d)
            else (np.format_float_positional(d, trim="-"))
        )
    return base64.b64encode(value.bytes_value).decode()


def _raw(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_raw(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _raw(kv.value) for kv in value.kvlist_value.values}
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return _scalar(value, kind) if kind else None


def otel_logs_row(resource, scope, record) -> dict:
    """One log record as the ClickHouse exporter inserts it (exporter_logs.go, pushLogsData)."""
    ts = record.time_unix_nano or record.observed_time_unix_nano
    attrs = {kv.key: as_string(kv.value) for kv in resource.attributes}
    return {
        "Timestamp": f"{ts // 10**9}.{ts % 10**9:09d}",
        "TraceId": record.trace_id.hex(),
        "SpanId": record.span_id.hex(),
        "TraceFlags": record.flags & 0xFF,
        "SeverityText": record.severity_text,
        "SeverityNumber": int(record.severity_number),
        "ServiceName": attrs.get("service.name", ""),
        "Body": as_string(record.body),
        "ResourceSchemaUrl": "",
        "ResourceAttributes": attrs,
        "ScopeSchemaUrl": "",
        "ScopeName": scope.name,
        "ScopeVersion": scope.version,
        "ScopeAttributes": {kv.key: as_string(kv.value) for kv in scope.attributes},
        "LogAttributes": {kv.key: as_string(kv.value) for kv in record.attributes},
        "EventName": record.event_name,
    }


def clickhouse_queries() -> list[str]:
    """The ```sql blocks of the ClickHouse section, with the page's placeholders filled in."""
    text = DOC.read_text()
    section = text[text.index("## ClickHouse") :]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    out = []
    for sql in blocks:
        sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 1 HOUR", sql)
        out.append(sql.replace(DOC_TRACE_ID, TRACE_ID).strip().rstrip(";"))
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, SQL) of every ClickHouse target and variable of docs/grafana/*.json, Grafana's macros still in."""
    found = []
    for path in sorted((REPO / "docs" / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard.get("panels", []):
            for target in panel.get("targets", []):
                if target.get("rawSql"):
                    found.append((f"{path.name}: {panel.get('title')}", target["rawSql"]))
        for v in dashboard.get("templating", {}).get("list", []):
            if v.get("type") == "query" and "clickhouse" in str(v.get("datasource", "")) and v.get("query"):
                found.append((f"{path.name}: variable {v['name']}", v["query"]))
    return found


def grafana_macros(sql: str, services: list[str]) -> str:
    """The ClickHouse data source's macros and the dashboard's variables (All services, minimum score 0)."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 1 HOUR", sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(\1, INTERVAL 60 second)", sql)
    sql = sql.replace("${service:singlequote}", ", ".join(f"'{s}'" for s in services))
    return sql.replace("$min_score", "0")


@pytest.fixture(scope="module")
def otel_logs(tmp_path_factory):
    """A chDB session whose `otel_logs` holds the events of a real otad; returns (session, inserted rows)."""
    with OtlpSink() as sink, anomalous_otad(tmp_path_factory.mktemp("otad") / "data", sink):
        records = sink.log_records()
    rows = [otel_logs_row(*r) for r in records]
    session = chdb_session.Session(str(tmp_path_factory.mktemp("chdb")))
    session.query(OTEL_LOGS)
    session.query("INSERT INTO otel_logs FORMAT JSONEachRow\n" + "\n".join(json.dumps(r) for r in rows))
    yield session, rows
    session.close()


def run(session, sql: str) -> list[dict]:
    return json.loads(session.query(sql, "JSON").bytes() or b'{"data": []}')["data"]


def test_the_page_has_clickhouse_queries():
    assert len(clickhouse_queries()) >= 3


def test_the_events_fill_otel_logs_as_the_exporter_maps_them(otel_logs):
    session, rows = otel_logs
    assert int(run(session, "SELECT count() AS n FROM otel_logs")[0]["n"]) == len(rows) > 0
    # The page: where the table has an EventName column, EventName = 'otad.anomaly' selects the events too.
    named = run(session, "SELECT count() AS n FROM otel_logs WHERE EventName = 'otad.anomaly'")
    assert int(named[0]["n"]) == len(rows)
    sources = {r["LogAttributes"]["anomaly.source.uid"] for r in rows}
    assert any(uid.startswith("slow-") for uid in sources), sources


def check_counts(result: list[dict], ours: list[dict]) -> set[str]:
    """Counts in a result are the events' own: `findings` and the findings' latest `anomalies`, or events counted
    per service (and time). Returns the result's columns."""
    per_service = Counter(r["ResourceAttributes"]["service.name"] for r in ours)
    columns = set(result[0])
    if "findings" in columns:  # the findings' latest counts: anomalies; distinct finding uids: findings
        latest: dict[tuple[str, str], int] = {}
        for r in ours:
            key = (r["ServiceName"], r["LogAttributes"].get("anomaly.finding.uid", ""))
            latest[key] = max(latest.get(key, 0), int(r["LogAttributes"].get("anomaly.finding.count", 0)))
        expected = Counter()
        for (service, _), count in latest.items():
            expected[service] += count
        assert {r["service"]: int(r["anomalies"]) for r in result} == dict(expected), result
        assert sum(int(r["findings"]) for r in result) == len(latest)
        assert result[0]["service"] == "checkout" and int(result[0]["anomalies"]) >= 1
    elif "anomalies" in columns:  # events counted: per service (and time), they add up to every event
        assert sum(int(r["anomalies"]) for r in result) == len(ours), result
        if "service" in columns:
            assert {r["service"]: int(r["anomalies"]) for r in result} == dict(per_service)
            assert result[0]["service"] == per_service.most_common(1)[0][0] == "checkout"
    return columns


@pytest.mark.parametrize("index", range(len(clickhouse_queries())))
def test_every_clickhouse_query_runs_and_finds_the_anomalies(otel_logs, index):
    session, rows = otel_logs
    sql = clickhouse_queries()[index]
    result = run(session, sql)
    assert result, f"no rows from:\n{sql}"
    ours = [r for r in rows if r["ScopeName"] == "otad"]
    columns = check_counts(result, ours)
    if "score" in columns:  # one trace's anomalies, strongest first
        assert len(result) == sum(r["TraceId"] == TRACE_ID for r in ours)
        scores = [float(r["score"]) for r in result]
        assert scores == sorted(scores, reverse=True) and scores[0] > 0
    titles = [r.get("title") for r in result if r.get("title") is not None]
    assert all(titles), titles  # JSONExtractString found the finding's title in every Body


@pytest.mark.parametrize("where, sql", dashboard_queries(), ids=[w for w, _ in dashboard_queries()])
def test_every_dashboard_clickhouse_query_runs(otel_logs, where, sql):
    session, rows = otel_logs
    services = sorted({r["ServiceName"] for r in rows})
    result = run(session, grafana_macros(sql, services))
    assert result, f"{where}: no rows"
    check_counts(result, [r for r in rows if r["ScopeName"] == "otad"])
