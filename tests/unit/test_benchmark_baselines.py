"""The benchmark's trivial baselines read what a trivial detector would: a log record's duration attribute
counts as its duration, as a span's duration does (issue 12's IsolationForest read the web app's durations)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from benchmarks.detection_lib import baselines
from model.schema import Row

pytestmark = pytest.mark.unit


def _log(i: int, ms: float, message: str = "GET /api/items read item") -> Row:
    return Row(
        uid=f"w{i}",
        signal="logs",
        time_unix_nano=1_700_000_000_000_000_000 + i * 1_000_000_000,
        service="webapp",
        class_uid=1007,
        activity_id=1,
        severity_id=1,
        status_id=1,
        fields={"message": message, "unmapped.duration_ms": ms, "http_response.code": 200},
    )


def test_a_log_records_duration_attribute_is_its_duration():
    rng = random.Random(1)
    train = [_log(i, rng.lognormvariate(3.3, 0.2)) for i in range(400)]
    test = [_log(400 + i, rng.lognormvariate(3.3, 0.2)) for i in range(50)] + [_log(450, 4_000.0)]
    assert baselines._duration(test[-1]) == 4_000.0

    z = baselines.op_latency_z(train, test)
    assert int(np.argmax(z)) == len(test) - 1 and z[-1] > 10.0

    tpl = baselines._Templates(train)
    tf_train, tf_test = baselines.template_freq(train, test, tpl)
    forest = baselines.iforest(train, test, tf_train, tf_test)
    assert (
        int(np.argmax(forest)) == len(test) - 1
    )  # same template, status, severity: only the duration differs


def test_a_span_keeps_its_own_duration_and_a_row_without_one_has_none():
    span = Row("s", "traces", 0, "api", 4001, 1, 1, 1, {"duration": 12.5, "unmapped.duration_ms": 99.0})
    assert baselines._duration(span) == 12.5
    assert baselines._duration(Row("l", "logs", 0, "api", 1007, 1, 1, 1, {"message": "hi"})) is None
