"""The anomaly event: an OCSF Detection Finding (class 2004) built once per anomaly, carried in an OTLP LogRecord.

The event schema users query is docs/querying.md and docs/contracts.md; `AnomalyEvent` holds the finding so the
stored copy and the exported copy are the same object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from model.schema import DETECTION_FINDING, Anomaly, Value, content_uid

OTAD_SCOPE = "otad"  # instrumentation scope of otad's events; the receiver skips records of this scope
EVENT_NAME = "otad.anomaly"  # the LogRecord event name; the receiver skips records carrying it
ERROR_SCORE = 90.0  # scores at or above this are the top band: severity ERROR, OCSF High, pattern UNSEEN
OCSF_VERSION = "1.8.0"
MAX_BODY_BYTES = 16 * 1024
_MAX_EVIDENCE = 16
_MAX_NEIGHBORS = 100
_SUMMARY_FIELDS = ("message", "api.operation", "metric.name", "name")  # first one present goes in the title
_SIGNAL_NOUN = {"logs": "log record", "traces": "span", "metrics": "metric data point"}


def _clip(text: object, limit: int) -> str:
    """One line, at most `limit` characters (of str(text))."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _any_value(value: Value) -> AnyValue:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _resource(anomaly: Anomaly) -> Resource:
    attributes = dict(anomaly.row.resource)
    attributes.setdefault("service.name", anomaly.row.service)
    return Resource(attributes=[KeyValue(key=k, value=_any_value(v)) for k, v in attributes.items()])


def _id_bytes(hex_id: str, size: int) -> bytes:
    """The id as bytes, or b"" (absent) when it is empty or malformed."""
    try:
        raw = bytes.fromhex(hex_id)
    except ValueError:
        return b""
    return raw if len(raw) == size and any(raw) else b""


def _is_top_band(anomaly: Anomaly) -> bool:
    return anomaly.score >= ERROR_SCORE


def _score_int(anomaly: Anomaly) -> int:
    """The score as the integer shown to people (truncated, so 89.9 is not shown as the top band's 90)."""
    return int(max(0.0, min(100.0, anomaly.score)))


def finding_uid(anomaly: Anomaly) -> str:
    """Stable finding id: the same source record under the same model version is the same finding."""
    return content_uid(anomaly.row.uid, anomaly.model_version)


def _title(anomaly: Anomaly) -> str:
    row = anomaly.row
    noun = _SIGNAL_NOUN.get(row.signal, "record")
    head = f"Unusual {noun} from {_clip(row.service, 120)} (score {_score_int(anomaly)}/100)"
    summary = next((row.fields[k] for k in _SUMMARY_FIELDS if row.fields.get(k) not in (None, "")), None)
    return f"{head}: {_clip(summary, 80)}" if summary is not None else head


def _analysis(anomaly: Anomaly) -> dict:
    evidence = [(_clip(f, 128), _clip(o, 200), _clip(t, 200)) for f, o, t in anomaly.evidence[:_MAX_EVIDENCE]]
    pattern = "UNSEEN" if _is_top_band(anomaly) else "RARE"
    anomalies = [
        {
            "observation_parameter": "embedding k-NN distance",
            "observation_type": "Distribution Analysis",
            "observed_pattern": pattern,
            "observations": [{"value": str(anomaly.raw_score)}],
        }
    ]
    anomalies += [
        {
            "observation_parameter": f,
            "observation_type": "Distribution Analysis",
            "observations": [{"value": o}],
        }
        for f, o, _ in evidence
    ]
    baselines = [{"observation_parameter": "threshold", "observations": [{"value": str(anomaly.threshold)}]}]
    baselines += [{"observation_parameter": f, "observations": [{"value": t}]} for f, _, t in evidence]
    return {
        "analysis_targets": [{"name": _clip(anomaly.row.service, 256), "type": "service"}],
        "anomalies": anomalies,
        "baselines": baselines,
    }


def finding(anomaly: Anomaly, version: str) -> dict:
    """The OCSF Detection Finding (class 2004, activity Create) for one anomaly, as a dict."""
    row, score = anomaly.row, _score_int(anomaly)
    top = _is_top_band(anomaly)
    related: dict = {"uid": row.uid, "type_uid": row.type_uid}
    if row.trace_id:
        related["trace_uid"] = row.trace_id
    body: dict = {
        "class_uid": DETECTION_FINDING,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": DETECTION_FINDING * 100 + 1,
        "severity_id": 4 if top else 3,
        "severity": "High" if top else "Medium",
        "time": row.time_ms,
        "status_id": 1,
        "status": "New",
        "is_alert": True,
        "confidence_score": score,
        "risk_score": score,
        "metadata": {
            "product": {"name": "otad", "vendor_name": "otad", "version": version},
            "version": OCSF_VERSION,
        },
        "finding_info": {
            "uid": finding_uid(anomaly),
            "title": _title(anomaly),
            "desc": _clip(anomaly.explanation, 1024),
            "analytic": {
                "type_id": 4,
                "type": "Learning (ML/DL)",
                "name": anomaly.detector,
                "version": anomaly.model_version,
            },
            "types": ["Anomaly"],
            "first_seen_time": row.time_ms,
            "last_seen_time": row.time_ms,
            "created_time": anomaly.detected_unix_nano // 1_000_000,
            "related_events": [related],
        },
        "anomaly_analyses": [_analysis(anomaly)],
        "unmapped": {"anomaly.source.signal": row.signal},
    }
    if row.trace_id:
        body["trace"] = {"uid": row.trace_id, **({"span": {"uid": row.span_id}} if row.span_id else {})}
    return body


@dataclass(frozen=True, slots=True)
class AnomalyEvent:
    """One anomaly and its finding, built once: the same finding is stored and exported."""

    anomaly: Anomaly
    finding: dict

    @classmethod
    def of(cls, anomaly: Anomaly, version: str) -> AnomalyEvent:
        return cls(anomaly, finding(anomaly, version))

    @property
    def uid(self) -> str:
        return str(self.finding["finding_info"]["uid"])


def _body_json(finding_body: dict) -> str:
    """The finding as JSON, under MAX_BODY_BYTES: trailing evidence goes first, then the description."""
    body = json.loads(json.dumps(finding_body))  # cut a copy: the stored finding keeps everything
    analysis = body["anomaly_analyses"][0]
    while True:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        if len(text.encode("utf-8")) < MAX_BODY_BYTES:
            return text
        if len(analysis["anomalies"]) > 1:
            analysis["anomalies"].pop()
            analysis["baselines"].pop()
        else:
            body["finding_info"]["desc"] = _clip(body["finding_info"]["desc"], 200)
            body["finding_info"]["title"] = _clip(body["finding_info"]["title"], 200)
            return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def build_event(event: AnomalyEvent) -> tuple[Resource, LogRecord]:
    """The anomaly event (docs/contracts.md) and the source record's resource it belongs under."""
    anomaly = event.anomaly
    row, top = anomaly.row, _is_top_band(anomaly)
    neighbors = ArrayValue(values=[AnyValue(string_value=n) for n in anomaly.neighbors[:_MAX_NEIGHBORS]])
    attributes: list[tuple[str, AnyValue]] = [
        ("event.name", AnyValue(string_value=EVENT_NAME)),
        ("anomaly.score", AnyValue(double_value=float(anomaly.score))),
        ("anomaly.raw_score", AnyValue(double_value=float(anomaly.raw_score))),
        ("anomaly.threshold", AnyValue(double_value=float(anomaly.threshold))),
        ("anomaly.detector", AnyValue(string_value=anomaly.detector)),
        ("anomaly.model.version", AnyValue(string_value=anomaly.model_version)),
        ("anomaly.source.signal", AnyValue(string_value=row.signal)),
        ("anomaly.source.uid", AnyValue(string_value=row.uid)),
        ("anomaly.source.ocsf.class_uid", AnyValue(int_value=row.class_uid)),
        ("anomaly.explanation", AnyValue(string_value=_clip(anomaly.explanation, 1024))),
        ("anomaly.neighbors", AnyValue(array_value=neighbors)),
    ]
    record = LogRecord(
        time_unix_nano=row.time_unix_nano,
        observed_time_unix_nano=anomaly.detected_unix_nano,
        severity_number=SeverityNumber.SEVERITY_NUMBER_ERROR if top else SeverityNumber.SEVERITY_NUMBER_WARN,
        severity_text="ERROR" if top else "WARN",
        event_name=EVENT_NAME,
        body=AnyValue(string_value=_body_json(event.finding)),
        attributes=[KeyValue(key=k, value=v) for k, v in attributes],
        trace_id=_id_bytes(row.trace_id, 16),
        span_id=_id_bytes(row.span_id, 8),
    )
    return _resource(anomaly), record


def build_request(events: Sequence[AnomalyEvent], version: str) -> ExportLogsServiceRequest:
    """One request; events under an identical resource share one ResourceLogs (scope `otad`/version)."""
    groups: dict[tuple, ScopeLogs] = {}
    request = ExportLogsServiceRequest()
    for event in events:
        resource, record = build_event(event)
        key = tuple(
            sorted((kv.key, kv.value.SerializeToString(deterministic=True)) for kv in resource.attributes)
        )
        if key not in groups:
            scope = ScopeLogs(scope=InstrumentationScope(name=OTAD_SCOPE, version=version))
            request.resource_logs.append(ResourceLogs(resource=resource, scope_logs=[scope]))
            groups[key] = request.resource_logs[-1].scope_logs[0]
        groups[key].log_records.append(record)
    return request
