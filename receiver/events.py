"""The anomaly event: an OCSF Detection Finding (class 2004) built once per anomaly, carried in an OTLP LogRecord.

The event schema users query is docs/querying.md and docs/contracts.md; `AnomalyEvent` holds the finding so the
stored copy and the exported copy are the same object. Repeats of one pattern are one finding
(receiver/aggregate.py): its first event is activity Create, later ones Update, with `count` and the
first/last times; `Occurrence` carries that state into the finding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from model.schema import DETECTION_FINDING, Anomaly, Value, content_uid

OTAD_SCOPE = "otad"  # instrumentation scope of otad's events; the receiver skips records of this scope
EVENT_NAME = "otad.anomaly"  # the LogRecord event_name; the receiver skips records carrying it
EVENT_NAME_ATTRIBUTE = "event.name"  # deprecated attribute form, only with OTAD_EVENT_NAME_ATTRIBUTE=true
ERROR_SCORE = 90.0  # scores at or above this are the top band: severity ERROR, OCSF High, pattern UNSEEN
OCSF_VERSION = "1.8.0"
MAX_BODY_BYTES = 16 * 1024
_MAX_EVIDENCE = 16
_MAX_NEIGHBORS = 100
_SUMMARY_FIELDS = ("message", "api.operation", "metric.name", "name")  # first one present goes in the title
_SIGNAL_NOUN = {"logs": "log record", "traces": "span", "metrics": "metric data point"}
_MAX_RELATED = 50  # source records named per event (`count` has them all)
# The source record's identifying fields, kept in `evidences` beside the ones the evidence names.
_EVIDENCE_FIELDS = (
    "message",
    "api.operation",
    "trace.span.operation",
    "metric.name",
    "http_request.http_method",
    "http_request.route",
    "http_request.url.path",
    "http_response.code",
    "duration",
    "src_endpoint.ip",
    "actor.user.name",
)
_RESOURCE_DATA = (
    "service.namespace",
    "service.version",
    "service.instance.id",
    "deployment.environment.name",
)


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


def anomaly_uid(anomaly: Anomaly) -> str:
    """Stable id of one anomaly (its stored record): the same source record under the same model version."""
    return content_uid(anomaly.row.uid, anomaly.model_version)


finding_uid = anomaly_uid  # the name before findings aggregated repeats (kept for callers)


@dataclass(frozen=True, slots=True)
class Occurrence:
    """A finding's state when one of its events is built: the aggregated repeats of one pattern.

    `uid` is the finding's (stable for its life), `count` the anomalies in it so far, `related` the source
    records since its previous event. `activity_id` is 1 (Create) for its first event, 2 (Update) after.
    """

    uid: str
    activity_id: int
    count: int
    first_seen_ms: int
    last_seen_ms: int
    pattern_uid: str = ""
    related: tuple[str, ...] = field(default=())


def single(anomaly: Anomaly) -> Occurrence:
    """The finding of one anomaly on its own (no aggregation)."""
    t = anomaly.row.time_ms
    return Occurrence(anomaly_uid(anomaly), 1, 1, t, t, "", (anomaly.row.uid,))


def _confidence(score: int) -> tuple[int, str]:
    """OCSF confidence_id / confidence from the calibrated score: Low below 70, Medium below 90, else High."""
    return (3, "High") if score >= ERROR_SCORE else (2, "Medium") if score >= 70 else (1, "Low")


def _evidences(anomaly: Anomaly) -> list[dict]:
    """The source record's fields that mattered: those the evidence names, and what identifies the record."""
    fields = anomaly.row.fields
    named = {f.split(".")[0] if f.startswith("ctx.") else f for f, _, _ in anomaly.evidence}
    keys = [k for k in fields if any(k == n or k.startswith(n) or n.startswith(k) for n in named)]
    keys += [k for k in _EVIDENCE_FIELDS if k in fields and k not in keys]
    data = {
        k: _clip(fields[k], 200) if isinstance(fields[k], str) else fields[k] for k in keys[:_MAX_EVIDENCE]
    }
    return [{"data": data, "name": _clip(anomaly.row.service, 256)}] if data else []


def _resources(anomaly: Anomaly) -> list[dict]:
    """OCSF Resource Details: the service, and its host and pod when the source resource names them."""
    res = anomaly.row.resource
    service: dict = {"type": "service", "name": _clip(anomaly.row.service, 256)}
    data = {k: res[k] for k in _RESOURCE_DATA if k in res}
    if data:
        service["data"] = data
    out = [service]
    if res.get("host.name"):
        out.append({"type": "host", "name": _clip(res["host.name"], 256)})
    if res.get("k8s.pod.name"):
        pod = {"type": "k8s.pod", "name": _clip(res["k8s.pod.name"], 256)}
        if res.get("k8s.namespace.name"):
            pod["namespace"] = _clip(res["k8s.namespace.name"], 256)
        out.append(pod)
    return out


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


def finding(anomaly: Anomaly, version: str, occurrence: Occurrence | None = None) -> dict:
    """The OCSF Detection Finding (class 2004) for an anomaly, as a dict.

    With an `occurrence` the finding is that aggregate's (activity Create or Update, its uid, `count`, first
    and last seen, the source records since its previous event); without, the anomaly's own (Create, count 1).

    long: one dict literal, the finding's fields in OCSF order.
    """
    occ = occurrence or single(anomaly)
    row, score = anomaly.row, _score_int(anomaly)
    top = _is_top_band(anomaly)
    confidence_id, confidence = _confidence(score)
    related: list[dict] = []
    for uid in occ.related[:_MAX_RELATED] or (row.uid,):
        related.append({"uid": uid, "type_uid": row.type_uid})
    if row.trace_id and related[-1]["uid"] == row.uid:
        related[-1]["trace_uid"] = row.trace_id
    update = occ.activity_id == 2
    body: dict = {
        "class_uid": DETECTION_FINDING,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": occ.activity_id,
        "activity_name": "Update" if update else "Create",
        "type_uid": DETECTION_FINDING * 100 + occ.activity_id,
        "severity_id": 4 if top else 3,
        "severity": "High" if top else "Medium",
        "time": row.time_ms,
        "start_time": occ.first_seen_ms,
        "end_time": occ.last_seen_ms,
        "count": occ.count,
        "status_id": 2 if update else 1,
        "status": "In Progress" if update else "New",
        "is_alert": True,
        "confidence_id": confidence_id,
        "confidence": confidence,
        "confidence_score": score,
        "risk_score": score,
        "metadata": {
            "product": {"name": "otad", "vendor_name": "otad", "version": version},
            "version": OCSF_VERSION,
        },
        "finding_info": {
            "uid": occ.uid,
            "title": _title(anomaly),
            "desc": _clip(anomaly.explanation, 1024),
            "analytic": {
                "type_id": 4,
                "type": "Learning (ML/DL)",
                "name": anomaly.detector,
                "version": anomaly.model_version,
            },
            "types": ["Anomaly"],
            "first_seen_time": occ.first_seen_ms,
            "last_seen_time": occ.last_seen_ms,
            "created_time": anomaly.detected_unix_nano // 1_000_000,
            "related_events": related,
        },
        "evidences": _evidences(anomaly),
        "resources": _resources(anomaly),
        "anomaly_analyses": [_analysis(anomaly)],
        "unmapped": {"anomaly.source.signal": row.signal},
    }
    if occ.pattern_uid:
        body["unmapped"]["anomaly.pattern.uid"] = occ.pattern_uid
    if update:
        body["finding_info"]["modified_time"] = anomaly.detected_unix_nano // 1_000_000
    if not body["evidences"]:
        del body["evidences"]
    if row.trace_id:
        body["trace"] = {"uid": row.trace_id, **({"span": {"uid": row.span_id}} if row.span_id else {})}
    return body


@dataclass(frozen=True, slots=True)
class AnomalyEvent:
    """One anomaly and its finding, built once: the same finding is stored and exported."""

    anomaly: Anomaly
    finding: dict

    @classmethod
    def of(cls, anomaly: Anomaly, version: str, occurrence: Occurrence | None = None) -> AnomalyEvent:
        return cls(anomaly, finding(anomaly, version, occurrence))

    @property
    def uid(self) -> str:
        """The anomaly's uid (its stored record), not the finding's: several anomalies share one finding."""
        return anomaly_uid(self.anomaly)

    @property
    def finding_uid(self) -> str:
        return str(self.finding["finding_info"]["uid"])

    @property
    def count(self) -> int:
        return int(self.finding.get("count", 1))


def _body_json(finding_body: dict) -> str:
    """The finding as JSON, under MAX_BODY_BYTES: trailing evidence goes first, then the description."""
    body = json.loads(json.dumps(finding_body))  # cut a copy: the stored finding keeps everything
    analysis = body["anomaly_analyses"][0]
    while True:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        if len(text.encode("utf-8")) < MAX_BODY_BYTES:
            return text
        related = body["finding_info"]["related_events"]
        if len(analysis["anomalies"]) > 1:
            analysis["anomalies"].pop()
            analysis["baselines"].pop()
        elif len(related) > 1:
            del related[: len(related) // 2]  # the newest half stays; `count` still says how many
        else:
            body["finding_info"]["desc"] = _clip(body["finding_info"]["desc"], 200)
            body["finding_info"]["title"] = _clip(body["finding_info"]["title"], 200)
            return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def build_event(event: AnomalyEvent, *, name_attribute: bool = False) -> tuple[Resource, LogRecord]:
    """The anomaly event (docs/contracts.md) and the source record's resource it belongs under.

    The event name is the LogRecord's `event_name` field; `name_attribute` adds the deprecated `event.name`
    attribute too, for backends that cannot read the field (docs/querying.md).
    """
    anomaly = event.anomaly
    row, top = anomaly.row, _is_top_band(anomaly)
    neighbors = ArrayValue(values=[AnyValue(string_value=n) for n in anomaly.neighbors[:_MAX_NEIGHBORS]])
    attributes: list[tuple[str, AnyValue]] = [
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
        ("anomaly.finding.uid", AnyValue(string_value=event.finding_uid)),
        ("anomaly.finding.count", AnyValue(int_value=event.count)),
    ]
    if name_attribute:
        attributes.insert(0, (EVENT_NAME_ATTRIBUTE, AnyValue(string_value=EVENT_NAME)))
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


def build_request(
    events: Sequence[AnomalyEvent],
    version: str,
    resource_attributes: Mapping[str, str] | None = None,
    *,
    name_attribute: bool = False,
) -> ExportLogsServiceRequest:
    """One request; events under an identical resource share one ResourceLogs (scope `otad`/version).

    `resource_attributes` (OTEL_RESOURCE_ATTRIBUTES) are added to each event's resource where the source
    record's resource does not set the same key: the event stays under the service it is about.
    """
    groups: dict[tuple, ScopeLogs] = {}
    request = ExportLogsServiceRequest()
    for event in events:
        resource, record = build_event(event, name_attribute=name_attribute)
        if resource_attributes:
            present = {kv.key for kv in resource.attributes}
            resource.attributes.extend(
                KeyValue(key=k, value=AnyValue(string_value=v))
                for k, v in resource_attributes.items()
                if k not in present
            )
        key = tuple(
            sorted((kv.key, kv.value.SerializeToString(deterministic=True)) for kv in resource.attributes)
        )
        if key not in groups:
            scope = ScopeLogs(scope=InstrumentationScope(name=OTAD_SCOPE, version=version))
            request.resource_logs.append(ResourceLogs(resource=resource, scope_logs=[scope]))
            groups[key] = request.resource_logs[-1].scope_logs[0]
        groups[key].log_records.append(record)
    return request
