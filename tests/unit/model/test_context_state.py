"""ContextTracker state: a tracker restored from a snapshot continues exactly as the one it was taken from."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from model.context import ContextTracker
from model.context_state import decode_key, encode_key
from model.extract import derive
from model.schema import Row
from model.statefile import StateFileError, load_state, save_state
from model.templates import TemplateMatcher, mine
from tests.helpers import T0, make_rows


def stream(n: int, seed: int = 0) -> list[Row]:
    """A seeded mix of access logs (make_rows), failing spans with source IPs, and metric series, in time order.

    Enough services, users, IPs and series that a small max_keys evicts: LRU order then shows in the output.
    """
    rng = random.Random(seed)
    rows = make_rows(n, seed=seed)
    for i, row in enumerate(rows):
        kind = rng.random()
        service = f"svc{rng.randint(0, 7)}"
        if kind < 0.3:
            row.signal, row.service = "traces", service
            row.status_id = 2 if rng.random() < 0.2 else 1
            row.fields = {
                "trace.span.operation": rng.choice(["GET /cart", "POST /pay", "db.query"]),
                "duration": rng.lognormvariate(3 + (rng.random() < 0.05) * 3, 0.4),
                "src_endpoint.ip": f"10.0.{rng.randint(0, 3)}.{rng.randint(1, 60)}",
                "http_request.user_agent": rng.choice(["curl/8.1", "Mozilla/5.0 Chrome/120.0"]),
                "http_request.http_method": rng.choice(["GET", None, 7]),
                "actor.user.name": f"user{rng.randint(1, 80)}",
                "src_endpoint.location.country": rng.choice(["DE", "US", "FR"]),
            }
        elif kind < 0.5:
            row.signal, row.service, row.class_uid = "metrics", service, 999001
            series = rng.randint(0, 6)
            value: float = float(rng.randint(0, 5)) if series % 2 else rng.gauss(100, 10)
            row.fields = {"metric.series": f"{service}/m{series}", "metric.value": value}
        else:
            row.service = service
            row.severity_id = 4 if rng.random() < 0.05 else 1
        row.time_unix_nano = T0 + i * 40_000_000 + rng.randint(0, 5_000_000)
    return rows


def outputs(tracker: ContextTracker, rows: list[Row], matcher: TemplateMatcher) -> list[dict[str, float]]:
    return [tracker.update(derive(r, matcher), r.time_ms) for r in rows]


def assert_same(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys(), i
        for k in x:
            assert x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])), (i, k, x[k], y[k])


def assert_same_state(a: ContextTracker, b: ContextTracker) -> None:
    (va, aa), (vb, ab) = a.state(), b.state()
    assert va == vb
    assert aa.keys() == ab.keys()
    for name in aa:
        assert aa[name].dtype == ab[name].dtype, name
        assert np.array_equal(aa[name], ab[name], equal_nan=aa[name].dtype.kind == "f"), name


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return stream(6000, seed=3)


@pytest.fixture(scope="module")
def matcher(rows: list[Row]) -> TemplateMatcher:
    return TemplateMatcher(mine([str(r.fields["message"]) for r in rows[:2000] if "message" in r.fields]))


@pytest.mark.parametrize("max_keys", [40, 200_000])
def test_restored_tracker_continues_identically(rows, matcher, max_keys, tmp_path):
    """Snapshot half-way, restore (through a state file, so JSON round trips the keys), feed both the rest."""
    half = len(rows) // 2
    live = ContextTracker(max_keys=max_keys, pair_counts={"ctx.seen_user_country|user1|DE": 5})
    outputs(live, rows[:half], matcher)
    save_state(tmp_path / "state", {"context": live.state()})
    loaded = load_state(tmp_path / "state")
    assert loaded is not None
    restored = ContextTracker.from_state(*loaded["context"])
    assert_same_state(live, restored)
    assert restored.latency and all(isinstance(k, tuple) for k in restored.latency)  # keys keep their types
    assert restored.latency.keys() == live.latency.keys() and list(restored.latency) == list(live.latency)
    assert_same(outputs(live, rows[half:], matcher), outputs(restored, rows[half:], matcher))
    assert_same_state(live, restored)
    if max_keys == 40:  # the small table evicted: the LRU order decided which keys survived
        assert len(live.series) == 40 and len(live.latency) == 40 and len(live.source_fail.events) == 40


def test_state_in_memory_round_trip_and_json_safe(rows, matcher):
    live = ContextTracker(max_keys=25)
    outputs(live, rows[:1500], matcher)
    values, arrays = live.state()
    json.dumps(values, allow_nan=False)  # JSON-safe as it is
    assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in arrays.values())
    restored = ContextTracker.from_state(json.loads(json.dumps(values)), arrays)
    assert_same_state(live, restored)
    assert_same(outputs(live, rows[1500:2500], matcher), outputs(restored, rows[1500:2500], matcher))


def test_empty_tracker_round_trip():
    restored = ContextTracker.from_state(*ContextTracker(max_keys=7, warmup=3).state())
    assert restored.max_keys == 7 and restored.warmup == 3 and not restored.pair_counts
    assert_same_state(ContextTracker(max_keys=7, warmup=3), restored)


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "svc",
        0,
        -12,
        2**70,
        1.5,
        -0.0,
        1.0,
        True,
        False,
        float("inf"),
        ("a", None),
        ("svc", ("GET /cart", "/cart/{id}", "GET")),
        ("svc", (4002, None, 7)),
        (),
        ("t", "f", "nan"),
    ],
)
def test_key_encoding_round_trips_through_json(key):
    back = decode_key(json.loads(json.dumps(encode_key(key), allow_nan=False)))
    assert back == key and type(back) is type(key)
    if isinstance(key, tuple):
        assert [type(v) for v in back] == [type(v) for v in key]


def test_nan_key_and_unsupported_key():
    assert math.isnan(decode_key(json.loads(json.dumps(encode_key(float("nan")), allow_nan=False))))
    with pytest.raises(TypeError, match="frozenset"):
        encode_key(frozenset({1}))
    with pytest.raises(StateFileError):
        decode_key({"x": 1})


def test_bad_state_raises_state_file_error(rows, matcher):
    live = ContextTracker()
    outputs(live, rows[:300], matcher)
    values, arrays = live.state()
    with pytest.raises(StateFileError, match="version"):
        ContextTracker.from_state({**values, "version": 99}, arrays)
    with pytest.raises(StateFileError, match="missing"):
        ContextTracker.from_state(values, {k: v for k, v in arrays.items() if k != "windows.template.times"})
    with pytest.raises(StateFileError, match="disagree"):
        ContextTracker.from_state({**values, "windows.template": values["windows.template"][1:]}, arrays)
    with pytest.raises(StateFileError, match="dtype"):
        ContextTracker.from_state(
            values, {**arrays, "baselines.series.n": arrays["baselines.series.n"] * 1.0}
        )
    with pytest.raises(StateFileError, match="malformed"):
        ContextTracker.from_state({k: v for k, v in values.items() if k != "pairs"}, arrays)


def test_a_state_from_before_the_slow_baseline_restores_with_it_empty(rows, matcher):
    """A state file written before the slow-share baseline existed still loads (a restart after an upgrade keeps
    the windows and the other baselines); the slow baseline starts empty and fills as rows arrive."""
    live = ContextTracker()
    outputs(live, rows[:1500], matcher)
    assert live.slow_rate
    values, arrays = live.state()
    old_values = {k: v for k, v in values.items() if k != "baselines.slow_rate"}
    old_arrays = {k: v for k, v in arrays.items() if not k.startswith("baselines.slow_rate.")}
    restored = ContextTracker.from_state(old_values, old_arrays)
    assert not restored.slow_rate and restored.latency.keys() == live.latency.keys()
    outputs(restored, rows[1500:2000], matcher)
    assert restored.slow_rate
