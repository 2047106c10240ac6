"""The user's words for otad's features: every internal feature name an explanation may show, as the source
attribute or OCSF field it comes from, or as a phrase with its unit. Explanations never show a `ctx.*` name."""

from __future__ import annotations

import math
from typing import Any

# name -> (label, unit). Unit "%" shows a share as a percentage, "ms" milliseconds, "" a plain number,
# "yes/no" a 0/1 flag; "level" a standardised deviation (shown as "N x its usual spread").
FEATURES: dict[str, tuple[str, str]] = {
    "duration": ("duration", "ms"),
    "message.duration_ms": ("duration in the message", "ms"),
    "http_response.length": ("response size", "bytes"),
    "http_request.length": ("request size", "bytes"),
    "http_response.code_class": ("HTTP status class", "xx"),
    "metric.value": ("metric value", ""),
    "metric.rate": ("metric rate", "/s"),
    "metric.mean": ("metric mean", ""),
    "metric.p99": ("metric p99", ""),
    "metric.count": ("metric count", ""),
    "trace.span.events": ("span events", ""),
    "trace.span.exception": ("exceptions in the span", ""),
    "message_length": ("message length", "characters"),
    "template_rarity": ("rarity of the message pattern", "level"),
    "ctx.template_share_60s": ("share of this message pattern in the last 60 s", "%"),
    "ctx.service_failures_60s": ("failures of this service in the last 60 s", ""),
    "ctx.service_failure_ratio_60s": ("share of this service's records that failed in the last 60 s", "%"),
    "ctx.failure_excess_60s": ("failures in the last 60 s beyond this service's usual rate", ""),
    "ctx.source_failures_300s": ("failures from this client address in the last 5 min", ""),
    "ctx.seen_user_country": ("user seen from this country before", "yes/no"),
    "ctx.seen_user_agent": ("user seen with this user agent before", "yes/no"),
    "ctx.seen_user_route": ("user seen on this route before", "yes/no"),
    "ctx.seen_user_source": ("user seen from this network before", "yes/no"),
    "ctx.series_z": ("value against this series' recent level", "level"),
    "ctx.series_log_ratio": ("value (log scale)", ""),
    "ctx.series_change": ("change from the series' previous value", "%"),
    "ctx.latency_z": ("latency against this operation's usual", "level"),
    "ctx.slow_excess_60s": ("slow requests in the last 60 s beyond this service's usual share", ""),
    "time.hour_sin": ("time of day", ""),
    "time.hour_cos": ("time of day", ""),
    "time.dow_sin": ("day of week", ""),
    "time.dow_cos": ("day of week", ""),
    # categorical columns: OCSF fields already, some with a friendlier name
    "template": ("message pattern", ""),
    "url_template": ("route", ""),
    "severity_id": ("severity", ""),
    "status_id": ("status", ""),
    "class_uid": ("OCSF class", ""),
    "activity_id": ("activity", ""),
    "has_user": ("has a user", ""),
    "trace.span.operation": ("operation", ""),
    "trace.span.kind": ("span kind", ""),
    "status_code": ("status code", ""),
}
SEVERITY = {0: "unknown", 1: "informational", 2: "low", 3: "medium", 4: "high", 5: "critical", 6: "fatal"}
STATUS = {0: "unknown", 1: "success", 2: "failure"}


def label(name: str) -> str:
    """The user's name for a feature: its phrase, or the source attribute it comes from."""
    base = name[: -len(".missing")] if name.endswith(".missing") else name
    if base in FEATURES:
        return FEATURES[base][0]
    if base.startswith("unmapped."):
        return base[len("unmapped.") :]  # the source attribute, as the application named it
    return base.replace("ctx.", "").replace("_", " ")


def show(name: str, value: Any) -> str:
    """A value of a feature with its unit ("1,250 ms", "12 %", "yes", "fatal")."""
    if value is None:
        return "missing"
    unit = FEATURES.get(name, ("", ""))[1]
    if name == "severity_id" and str(value).isdigit():
        return SEVERITY.get(int(value), str(value))
    if name == "status_id" and str(value).isdigit():
        return STATUS.get(int(value), str(value))
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)[:80]
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    if unit == "%":
        return f"{100.0 * x:.3g} %"
    if unit == "yes/no":
        return "yes" if x >= 0.5 else "no"
    if unit == "xx":
        return f"{x:.0f}xx"
    if unit == "level":
        return f"{x:+.1f} x its usual spread"
    if unit in ("ms", "bytes", "characters"):
        return f"{x:,.0f} {unit}"
    shown = f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"
    return f"{shown}{(' ' + unit) if unit else ''}"


def ratio(observed: Any, typical: Any, name: str = "") -> str:
    """The ratio, e.g. " (12x the usual)", when both are positive amounts (not shares or deviations) that
    differ at least two-fold; else ""."""
    if FEATURES.get(name, ("", ""))[1] in ("%", "level", "yes/no", "xx"):
        return ""
    try:
        o, t = float(observed), float(typical)
    except (TypeError, ValueError):
        return ""
    if not (math.isfinite(o) and math.isfinite(t)) or o <= 0 or t <= 0:
        return ""
    r = o / t
    if r >= 2:
        return f" ({r:,.3g}x the usual)"
    if r <= 0.5:
        return f" ({1 / r:,.3g}x below the usual)"
    return ""


def subject(row: Any, derived: dict[str, Any]) -> str:
    """The record in its own words for the first sentence: ' ("GET /pay failed", route /pay, HTTP 502,
    2,310 ms)', or '' when it carries nothing to show."""
    f = row.fields
    parts = []
    message = f.get("message")
    if isinstance(message, str) and message.strip():
        text = " ".join(message.split())
        parts.append(repr(text if len(text) <= 100 else text[:99] + "…"))
    for key, name in (
        ("trace.span.operation", "operation"),
        ("api.operation", "operation"),
        ("url_template", "route"),
    ):
        value = derived.get(key) or f.get(key)
        if value and not (parts and str(value) in parts[0]):
            parts.append(f"{name} {value}")
            break
    if row.signal == "metrics" and f.get("metric.name"):
        parts.append(
            f"{f['metric.name']} = {show('metric.value', derived.get('series_value', f.get('metric.value')))}"
        )
    code = f.get("http_response.code")
    if code is not None:
        parts.append(f"HTTP {code}")
    elif row.status_id == 2:
        parts.append("failed")
    duration = f.get("duration")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        parts.append(show("duration", duration))
    return f" ({', '.join(parts)})" if parts else ""
