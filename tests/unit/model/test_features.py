"""Feature contract: templating, vocabularies, transforms, label exclusion, JSON round trip."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from model.context import PAIR_SATURATION, ContextTracker
from model.extract import message_duration_ms, subnet, ua_family, url_template
from model.features import MISSING, OOV, FeatureContract
from model.templates import TemplateMatcher, mine
from tests.helpers import make_rows


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/users/123", "/api/users/{id}"),
        ("/api/users/123/orders?x=1", "/api/users/{id}/orders"),
        ("/o/3f2a9c1e-aaaa-bbbb-cccc-111122223333", "/o/{id}"),
        ("/products/sku-88a1", "/products/{id}"),
        ("/health", "/health"),
    ],
)
def test_url_template(path, expected):
    assert url_template(path) == expected


def test_ua_family_and_subnet():
    assert ua_family("Mozilla/5.0 Chrome/120.0.1") == ua_family("Mozilla/5.0 Chrome/121.3.9")
    assert subnet("10.1.2.3") == "10.1.2.0/24" and subnet("bad") == "invalid"


def test_templates_mined_and_matched():
    msgs = [f"user u{i} logged in from 10.0.0.{i}" for i in range(20)] + [
        f"order {i} placed" for i in range(20)
    ]
    templates = mine(msgs)
    matcher = TemplateMatcher(templates)
    assert matcher.match("user bob logged in from 1.2.3.4") >= 0
    assert matcher.match("user bob logged in from 1.2.3.4") != matcher.match("order 7 placed")
    assert matcher.match("kernel panic: attempted to kill init") == -1


def test_contract_fit_encode_and_label_exclusion():
    rows = make_rows(600)
    contract, derived = FeatureContract.fit(rows)
    names = contract.categorical + contract.numeric_names()
    assert not any("anomal" in n for n in names), names  # label-like fields never become features
    assert "unmapped.region" in contract.categorical and "unmapped.cache.hit" in contract.numeric_names()
    assert "url_template" in contract.categorical and contract.vocab["url_template"] == ["/items/{id}"]
    num, cat = contract.encode(derived)
    assert num.dtype == np.float32 and cat.dtype == np.int64
    assert num.shape == (600, contract.n_numeric) and cat.shape == (600, len(contract.categorical))
    assert np.isfinite(num).all() and np.abs(num).max() <= 20
    spec = next(s for s in contract.numeric if s.name == "http_response.length")
    assert spec.log  # heavy-tailed -> log1p before robust scaling


def test_missing_is_not_unknown():
    contract, _ = FeatureContract.fit(make_rows(300))
    j = contract.categorical.index("src_endpoint.location.country")
    _, cat = contract.encode([{"src_endpoint.location.country": "XX"}, {}])
    assert cat[0, j] == OOV and cat[1, j] == MISSING
    rarity = contract.rarity_matrix(cat)
    assert rarity[0, j] > rarity[1, j] or contract.rarity["src_endpoint.location.country"][MISSING] > 0


def test_contract_json_round_trip_gives_identical_features():
    rows = make_rows(400)
    contract, _ = FeatureContract.fit(rows[:300])
    loaded = FeatureContract.from_json(json.loads(json.dumps(contract.to_json())))
    loaded.context = contract.context  # saved beside the JSON (context.npz; tests/unit/model/test_model.py)
    a = contract.encode(contract.derive_online(rows[300:], contract.new_tracker(), contract.matcher()))
    b = loaded.encode(loaded.derive_online(rows[300:], loaded.new_tracker(), loaded.matcher()))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_scoring_starts_from_the_training_windows_context():
    """The first scored row of a known operation has its latency baseline, as its training neighbours had;
    a tracker with only the pair history (what scoring started from before) has none yet."""
    rows = make_rows(400)
    contract, derived = FeatureContract.fit(rows[:300])
    assert np.isfinite(derived[-1]["ctx.latency_z"])
    first = [rows[300]]
    warm = contract.derive_online(first, contract.new_tracker(), contract.matcher())[0]
    cold = contract.derive_online(
        first, ContextTracker(pair_counts=contract.pair_counts), contract.matcher()
    )[0]
    assert np.isfinite(warm["ctx.latency_z"]) and math.isnan(cold["ctx.latency_z"])
    # Each scorer gets its own copy: one scorer's updates never reach another's start.
    tracker = contract.new_tracker()
    contract.derive_online(rows[300:], tracker, contract.matcher())
    assert contract.new_tracker().state()[0] == ContextTracker.from_state(*contract.context).state()[0]


def test_contract_version_mismatch_is_refused():
    data = FeatureContract.fit(make_rows(100))[0].to_json()
    data["version"] = 999
    with pytest.raises(ValueError, match="retrain"):
        FeatureContract.from_json(data)


def test_context_first_seen_pair_and_source_failures():
    tracker = ContextTracker()
    base = {
        "service": "auth",
        "actor.user.name": "ann",
        "src_endpoint.location.country": "DE",
        "failed": False,
    }
    first = tracker.update(dict(base), 0)
    for t in range(1, 40):
        later = tracker.update(dict(base), t * 1000)
    assert first["ctx.seen_user_country"] == 0.0
    assert later["ctx.seen_user_country"] == pytest.approx(math.log1p(PAIR_SATURATION))
    fails = [
        tracker.update({"service": "auth", "src_endpoint.ip": "203.0.113.9", "failed": True}, 50_000 + i)
        for i in range(30)
    ]
    assert fails[-1]["ctx.source_failures_300s"] > fails[0]["ctx.source_failures_300s"]
    assert fails[-1]["ctx.service_failure_ratio_60s"] > 0.3


def test_series_baseline_flags_a_trend():
    tracker = ContextTracker()
    rng = random.Random(0)
    for i in range(60):
        f = tracker.update(
            {"service": "p", "series": "mem", "series_value": 100 + rng.gauss(0, 1)}, i * 10_000
        )
    assert abs(f["ctx.series_z"]) < 5
    leak = tracker.update({"service": "p", "series": "mem", "series_value": 300.0}, 700_000)
    assert leak["ctx.series_z"] > 20 and leak["ctx.series_log_ratio"] > 0.9


def test_failure_burst_context_is_set_on_failures_only():
    tracker = ContextTracker()
    for i in range(40):  # a burst: every other request of the service fails
        failed = tracker.update({"service": "inv", "failed": True}, i * 100)
        ok = tracker.update({"service": "inv", "failed": False}, i * 100 + 50)
    assert failed["ctx.service_failure_ratio_60s"] > 0.3
    assert ok["ctx.service_failure_ratio_60s"] == 0.0 and ok["ctx.service_failures_60s"] == 0.0


def test_failure_excess_is_measured_against_the_services_own_failure_rate():
    """A login service that always fails ~1 in 10 is normal; a checkout that suddenly fails half its requests is
    not, although the absolute share alone cannot tell the two apart once both run hot."""
    tracker, rng = ContextTracker(), random.Random(1)
    steady = [
        tracker.update({"service": "auth", "failed": rng.random() < 0.1}, i * 50) for i in range(40_000)
    ]
    steady_fails = [f["ctx.failure_excess_60s"] for f in steady[10_000:] if f["ctx.service_failures_60s"] > 0]
    assert float(np.percentile(steady_fails, 99)) < 4  # Poisson noise around its own rate
    for i in range(5_000):  # checkout: 1 % failures for a while, then a burst of 50 %
        tracker.update({"service": "checkout", "failed": rng.random() < 0.01}, i * 50)
    burst = [
        tracker.update({"service": "checkout", "failed": rng.random() < 0.5}, 250_000 + i * 50)
        for i in range(1_200)
    ]
    burst_fails = [f["ctx.failure_excess_60s"] for f in burst[600:] if f["ctx.service_failures_60s"] > 0]
    assert min(burst_fails) > 10  # still far above the baseline a minute into the burst: it learns slowly
    assert all(f["ctx.failure_excess_60s"] == 0.0 for f in burst if f["ctx.service_failures_60s"] == 0)


def test_latency_z_against_the_operations_own_baseline():
    tracker = ContextTracker()
    rng = random.Random(1)
    row = {"service": "inv", "operation_key": "GetProduct"}
    zs = [
        tracker.update({**row, "latency_ms": rng.lognormvariate(math.log(5), 0.3)}, i * 100)["ctx.latency_z"]
        for i in range(300)
    ]
    assert all(math.isnan(z) for z in zs[:20])  # warm-up: no baseline yet
    assert max(abs(z) for z in zs[50:]) < 5
    spike = [tracker.update({**row, "latency_ms": 5 * 20.0}, 40_000 + i)["ctx.latency_z"] for i in range(30)]
    assert min(spike) > 6  # a 20x spike stays visible: outliers barely move the baseline
    other = tracker.update({"service": "inv", "operation_key": "Scan", "latency_ms": 100.0}, 50_000)
    assert math.isnan(other["ctx.latency_z"])  # another operation has its own baseline


def test_slow_excess_is_measured_against_the_services_own_slow_share():
    """A lone slow call in a quiet minute is not a latency burst (its raw share, 1 of 1, was 100 %); thirty
    slow calls in a minute of a service that is rarely slow are, and ordinary rows carry 0."""
    tracker, rng = ContextTracker(), random.Random(3)
    row = {"service": "inv", "operation_key": "GetProduct"}
    t, lone = 0, []
    for i in range(3_000):  # one call every 30 s; now and then a slow one
        ms = 200.0 if i % 97 == 0 and i > 100 else rng.lognormvariate(math.log(5), 0.3)
        f = tracker.update({**row, "latency_ms": ms}, t)
        if ms == 200.0:
            lone.append(f["ctx.slow_excess_60s"])
        else:
            assert f["ctx.slow_excess_60s"] == 0.0 or f["ctx.latency_z"] >= 3
        t += 30_000
    assert lone and max(lone) < 2  # one slow call against an expected ~0: about one Poisson unit
    burst = [
        tracker.update({**row, "latency_ms": 200.0}, t + i * 2_000)["ctx.slow_excess_60s"] for i in range(30)
    ]
    assert burst[-1] > 10


def test_a_busy_operations_latency_incident_does_not_become_its_baseline():
    """Ten calls a second for an hour, then a ten-minute incident at 10x (a 3x-10x level, as an overloaded
    dependency gives): baselines forget by time, so the incident's last minute is still far out, and an
    operation that is called once an hour still learns from each call."""
    tracker = ContextTracker()
    rng = random.Random(2)
    row = {"service": "inv", "operation_key": "GetProduct"}
    t = 0
    for _ in range(36_000):
        tracker.update({**row, "latency_ms": rng.lognormvariate(math.log(5), 0.3)}, t)
        t += 100
    zs = []
    for _ in range(6_000):
        zs.append(
            tracker.update({**row, "latency_ms": rng.lognormvariate(math.log(50), 0.3)}, t)["ctx.latency_z"]
        )
        t += 100
    assert min(zs[-600:]) > 4 and sum(zs[-600:]) / 600 > 6
    rare = {"service": "inv", "operation_key": "Rebuild"}
    for i in range(30):
        tracker.update({**rare, "latency_ms": 1000.0 + 10 * (i % 3)}, i * 3_600_000)
    assert tracker.update({**rare, "latency_ms": 1010.0}, 31 * 3_600_000)["ctx.latency_z"] < 3


@pytest.mark.parametrize(
    ("message", "ms"),
    [
        ('10.0.0.1 - bob "GET /cart HTTP/1.1" 200 512 5.0ms', 5.0),
        ("charge call timed out after 3000 ms, retrying", 3000.0),
        ("request took 1.5s", 1500.0),
        ("starting inventory v2.8.1 (pid 30)", None),
        ("no duration here", None),
    ],
)
def test_message_duration(message, ms):
    assert message_duration_ms(message) == ms


def test_template_mining_does_not_explode_on_access_logs():
    rng = random.Random(2)
    users = [f"user{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + ["-"]
    routes = ["/", "/cart", "/api/search?q=desk+lamp", "/api/search?q=shoes", "/products/12", "/checkout"]
    msgs = [
        f"10.{rng.randrange(256)}.0.{rng.randrange(256)} - {rng.choice(users).replace('user', '')} "
        f'"{rng.choice(["GET", "POST"])} {rng.choice(routes)} HTTP/1.1" 200 {rng.randrange(9999)} '
        f"{rng.uniform(1, 50):.1f}ms"
        for _ in range(3000)
    ]
    msgs += [
        f"search '{rng.choice(['yoga mat', 'lamp', 'usb-c cable'])}' returned {rng.randrange(60)} products"
        for _ in range(500)
    ]
    msgs += ["kernel: one-off message"]  # seen once: not kept as a template
    templates = mine(msgs)
    assert 2 <= len(templates) <= 12, templates
    matcher = TemplateMatcher(templates)
    assert matcher.match('10.1.1.1 - zed "GET /wishlist HTTP/1.1" 200 10 1.0ms') >= 0
    assert matcher.match("search 'tent' returned 3 products") >= 0
    assert matcher.match("kernel: one-off message") == -1


def test_a_sparse_count_series_is_not_flagged_for_poisson_noise():
    tracker = ContextTracker()
    rng = np.random.default_rng(4)
    for i, x in enumerate(rng.poisson(0.3, 200)):
        tracker.update({"service": "fe", "series": "errors{code=500}", "series_value": float(x)}, i * 10_000)
    noise = tracker.update({"service": "fe", "series": "errors{code=500}", "series_value": 3.0}, 2_000_000)
    burst = tracker.update({"service": "fe", "series": "errors{code=500}", "series_value": 40.0}, 2_010_000)
    assert noise["ctx.series_z"] < 4 < burst["ctx.series_z"]


@pytest.mark.parametrize(
    ("fields", "ms"),
    [
        ({"unmapped.duration_ms": 12.5}, 12.5),
        ({"unmapped.http.server.request.duration": 0.25}, 250.0),
        ({"unmapped.latency_us": 1500}, 1.5),
        ({"unmapped.response_time": 40}, 40.0),
        ({"unmapped.retries": 3}, None),
        ({"unmapped.duration_ms": True}, None),
    ],
)
def test_attribute_latency(fields, ms):
    from model.extract import attribute_latency_ms

    assert attribute_latency_ms(fields) == ms


def test_context_features_keep_fixed_units_and_sparse_columns_get_a_sane_scale():
    """Fitted robust scales collapse on mostly-zero columns; context features use fixed units instead, and a
    sparse generic column is scaled by the spread of its values, so a routine non-zero value stays moderate."""
    n = 2_000
    derived = [
        {
            "ctx.slow_excess_60s": 3.0 if i % 400 == 0 else 0.0,
            "unmapped.retries": 2 if i % 50 == 0 else 0,
            "signal": "logs",
            "service": "a",
        }
        for i in range(n)
    ]
    contract = FeatureContract()
    contract._fit_columns(derived, n, min_count=2, max_vocab=256)
    specs = {s.name: s for s in contract.numeric}
    assert (specs["ctx.slow_excess_60s"].center, specs["ctx.slow_excess_60s"].scale) == (0.0, 1.0)
    assert specs["unmapped.retries"].scale > 0.2
    num, _ = contract.encode([{"ctx.slow_excess_60s": 6.0, "unmapped.retries": 2}])
    names = contract.numeric_names()
    assert num[0, names.index("ctx.slow_excess_60s")] == pytest.approx(6.0)
    assert num[0, names.index("unmapped.retries")] < 10
