"""Context windows count a row's own last 60 s, also when its batch arrives after younger rows (each signal's
exporter batches on its own schedule, so batches are in time order inside, not across them)."""

from __future__ import annotations

import random

import pytest

from model.context import FAILURE_EXCESS, SERVICE_FAIL, TEMPLATE_RATE, ContextTracker
from model.windows import Windows

pytestmark = pytest.mark.unit

MIN = 60_000


def _traffic(burst_min: float, seed: int = 3) -> list[tuple[int, dict[str, object]]]:
    """Ten minutes of one service, a row every 100 ms, 1 % failures, half of them failing for 24 s."""
    rng = random.Random(seed)
    out = []
    for i in range(6_000):
        t = i * 100
        burst = burst_min * MIN <= t < (burst_min + 0.4) * MIN
        failed = rng.random() < (0.5 if burst else 0.01)
        out.append(
            (t, {"service": "api", "template_key": "GET /items" if i % 3 else "POST /cart", "failed": failed})
        )
    return out


def _features(
    rows: list[tuple[int, dict[str, object]]], tracker: ContextTracker
) -> dict[int, dict[str, float]]:
    return {t: tracker.update(values, t) for t, values in rows}


@pytest.mark.parametrize("burst_min", [9.0, 2.0], ids=["one window late", "a backlog, minutes late"])
def test_a_late_batch_is_counted_over_its_own_window(burst_min):
    rows = _traffic(burst_min)
    in_order = _features(rows, ContextTracker())
    # the last 30 s arrive first, then everything before them
    late = ContextTracker()
    _features([r for r in rows if r[0] >= 9.5 * MIN], late)
    out_of_order = _features([r for r in rows if r[0] < 9.5 * MIN], late)

    burst = [t for t, v in rows if burst_min * MIN <= t < (burst_min + 0.4) * MIN and v["failed"]]
    assert len(burst) > 100
    for t in burst:
        assert out_of_order[t][SERVICE_FAIL[0]] == in_order[t][SERVICE_FAIL[0]]
        assert out_of_order[t][TEMPLATE_RATE[0]] == pytest.approx(in_order[t][TEMPLATE_RATE[0]])
        # a burst of failures is an excess over the service's rate, however late its batch came (the size of
        # the excess also depends on the service's learned rate, which follows arrival order)
        assert out_of_order[t][FAILURE_EXCESS] > -1.0
        if t >= burst_min * MIN + 10_000:
            assert out_of_order[t][FAILURE_EXCESS] > 3.0


def test_windows_keep_late_events_for_one_window_and_drop_older_ones():
    w = Windows(window_ms=1_000, max_keys=10)
    for t in range(0, 5_000, 10):
        w.add_and_count("k", t)
    assert w.peek("k", 4_990) == 101  # [3990, 4990]
    assert w.add_and_count("k", 4_205) == 100  # a late event, counted over [3205, 4205], not up to 4990
    assert w.peek("k", 4_205) == 101
    assert w.events["k"] == sorted(w.events["k"]) and w.events["k"][0] >= 4_990 - 2 * 1_000 - 64 * 10
    assert w.peek("k", 1_000) <= 2  # more than one window late: only what is left of it
