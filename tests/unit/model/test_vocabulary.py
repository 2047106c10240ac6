"""Explanations in the user's words: feature labels, values with units, ratios, the record's own content."""

from __future__ import annotations

from model.context import FEATURES as CONTEXT_FEATURES
from model.features import NUMERIC
from model.schema import Row
from model.vocabulary import FEATURES, label, ratio, show, subject


def test_every_internal_feature_has_a_label_in_the_users_words():
    for name in (*NUMERIC, *CONTEXT_FEATURES):
        assert name in FEATURES, name
        assert "ctx." not in label(name) and "_" not in label(name)
    assert label("unmapped.cache.hit") == "cache.hit"  # an application attribute keeps its own name
    assert label("duration.missing") == "duration"


def test_values_carry_their_units():
    assert show("duration", 2310.4) == "2,310 ms"
    assert show("ctx.service_failure_ratio_60s", 0.125) == "12.5 %"
    assert show("ctx.seen_user_country", 0.0) == "no"
    assert show("http_response.code_class", 5.0) == "5xx"
    assert show("severity_id", "6") == "fatal" and show("status_id", 2) == "failure"
    assert show("ctx.latency_z", 14.46) == "+14.5 x its usual spread"
    assert show("duration", None) == "missing"


def test_ratios_only_for_amounts_that_differ():
    assert ratio(2310.0, 180.0, "duration") == " (12.8x the usual)"
    assert ratio(90.0, 100.0, "duration") == ""
    assert ratio(10.0, 100.0, "duration") == " (10x below the usual)"
    assert ratio(0.5, 0.01, "ctx.service_failure_ratio_60s") == ""  # shares are shown, not divided
    assert ratio("x", 1.0) == ""


def test_subject_is_the_record_itself():
    row = Row(
        uid="u",
        signal="traces",
        time_unix_nano=1,
        service="checkout",
        class_uid=4002,
        activity_id=3,
        severity_id=4,
        status_id=2,
        fields={"message": "POST /pay", "http_response.code": 502, "duration": 2310.0},
    )
    assert subject(row, {"url_template": "/pay"}) == " ('POST /pay', HTTP 502, 2,310 ms)"
    bare = Row("v", "logs", 1, "s", 1007, 0, 1, 2, {})
    assert subject(bare, {}) == " (failed)"
