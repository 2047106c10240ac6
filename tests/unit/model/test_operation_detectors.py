"""Per-operation latency and error-rate members on synthetic rows: spikes, recurring incidents, failure bursts
against each operation's own rate, new operations' warm-up, state round-trip and the key cap."""

from __future__ import annotations

import math

import numpy as np

from model.detectors.base import Frame
from model.detectors.latency import LatencyDetector
from model.detectors.operation import ErrorRateDetector
from model.features import FeatureContract
from model.schema import Row

T0 = 1_800_000_000 * 10**9
SEC = 10**9


def rows_frame(events: list[tuple[float, str, str, float, bool]]) -> Frame:
    """A frame of (seconds, service, operation, latency ms, failed) span rows, sorted by time."""
    events = sorted(events, key=lambda e: e[0])
    rows, derived = [], []
    for j, (t, service, op, ms, failed) in enumerate(events):
        rows.append(Row(f"u{j}", "traces", T0 + int(t * SEC), service, 4002, 1, 1, 2 if failed else 1))
        route = f"/{op.lower()}"
        derived.append(
            {
                "signal": "traces",
                "service": service,
                "latency_ms": ms,
                "operation_key": (f"GET {route}", route, "GET"),
                "trace.span.operation": f"GET {route}",
                "url_template": route,
                "http_request.http_method": "GET",
                "failed": failed,
            }
        )
    n = len(rows)
    return Frame(rows, derived, np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64), FeatureContract())


def traffic(
    rng: np.random.Generator, t0: float, t1: float, service: str, op: str, ms: float, fail: float = 0.0
) -> list[tuple[float, str, str, float, bool]]:
    """About 2 requests a second of lognormal latency around `ms` (sd 25 %) failing at rate `fail`."""
    ts = np.sort(rng.uniform(t0, t1, int(2 * (t1 - t0))))
    lat = ms * np.exp(rng.normal(0.0, 0.25, len(ts)))
    return [
        (float(t), service, op, float(x), bool(rng.random() < fail)) for t, x in zip(ts, lat, strict=True)
    ]


def score(det: LatencyDetector | ErrorRateDetector, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    raw = det.score_samples(frame)
    return raw, det.pvalues(frame, raw)


def ops_of(frame: Frame) -> np.ndarray:
    return np.asarray([d["operation_key"][1] for d in frame.derived])


def test_latency_spike_on_one_operation_and_not_another_slower_one() -> None:
    rng = np.random.default_rng(0)
    train = traffic(rng, 0, 3600, "shop", "Fast", 20.0) + traffic(rng, 0, 3600, "shop", "Slow", 400.0)
    det = LatencyDetector().fit(rows_frame(train))
    later = traffic(rng, 3600, 4200, "shop", "Fast", 20.0) + traffic(rng, 3600, 4200, "shop", "Slow", 400.0)
    later += [(3900 + k, "shop", "Fast", 300.0, False) for k in range(5)]
    frame = rows_frame(later)
    raw, p = score(det, frame)
    spike = np.asarray([d["latency_ms"] == 300.0 for d in frame.derived])
    assert (p[spike] < 1e-4).all()
    assert (p[ops_of(frame) == "/slow"] < 1e-3).mean() < 0.005
    clause = det.explain(frame, int(np.flatnonzero(spike)[0]), float(raw[spike][0]), float(p[spike][0]))
    assert "latency 300 ms" in clause and "x the usual" in clause and "GET /fast in shop" in clause


def test_recurring_incidents_in_training_do_not_become_normal() -> None:
    rng = np.random.default_rng(1)
    train = traffic(rng, 0, 7200, "shop", "Api", 50.0)
    train = [(t, s, o, ms * 10 if t % 1800 < 300 else ms, f) for t, s, o, ms, f in train]  # 5 min in 30 slow
    det = LatencyDetector().fit(rows_frame(train))
    later = traffic(rng, 7200, 7800, "shop", "Api", 50.0)
    _, p = score(det, rows_frame([(t, s, o, ms * 10, f) for t, s, o, ms, f in later if t < 7500]))
    assert (p < 1e-3).mean() > 0.9


def test_a_sustained_slowdown_alerts_more_than_the_same_slowness_in_lone_requests() -> None:
    """Two minutes of every request 2x slower (about 2.8 robust SDs), against single requests as slow scattered
    through the rest: the sustained test flags more of the period and fewer of the lone requests than the
    request's own test alone would."""
    rng = np.random.default_rng(7)
    det = LatencyDetector().fit(rows_frame(traffic(rng, 0, 7200, "shop", "Api", 50.0)))
    later = traffic(rng, 7200, 8400, "shop", "Api", 50.0)
    lone = set(sorted(e[0] for e in later)[::60])
    later = [
        (t, s, o, 2.0 * ms if 7800 <= t < 7920 or (t in lone and not 7790 < t < 7950) else ms, f)
        for t, s, o, ms, f in later
    ]
    frame = rows_frame(later)
    raw, p = score(det, frame)
    t = np.asarray([e[0] for e in sorted(later)])
    alone = det.own.sf(frame.cache["latency"][0])  # the request's own test without the sustained one
    period = (t >= 7815) & (t < 7920)  # after the first few requests of the slow period
    scattered = np.isin(t, list(lone)) & ((t < 7790) | (t > 7950))
    assert (p[period] < 1e-3).mean() > max(0.3, 1.5 * (alone[period] < 1e-3).mean())
    assert (p[scattered] < 1e-3).mean() < min(0.1, 0.5 * (alone[scattered] < 1e-3).mean())
    i = int(np.flatnonzero(period & (p < 1e-3) & (alone > 2e-3))[0])
    assert "its latest requests have been slow too" in det.explain(frame, i, raw[i], p[i])


def test_failure_burst_against_each_operations_own_rate() -> None:
    rng = np.random.default_rng(2)
    train = traffic(rng, 0, 3600, "auth", "Login", 30.0, fail=0.10)
    train += traffic(rng, 0, 3600, "checkout", "Pay", 80.0, fail=0.002)
    det = ErrorRateDetector().fit(rows_frame(train))
    later = traffic(rng, 3600, 4200, "auth", "Login", 30.0, fail=0.10)
    later += traffic(rng, 3600, 4200, "checkout", "Pay", 80.0, fail=0.10)
    frame = rows_frame(later)
    raw, p = score(det, frame)
    failed = np.asarray([d["failed"] for d in frame.derived])
    assert (p[~failed] == 1.0).all()
    pay, login = failed & (ops_of(frame) == "/pay"), failed & (ops_of(frame) == "/login")
    assert (p[pay] < 1e-3).mean() > 0.5
    assert (p[login] < 1e-3).mean() < 0.01
    i = int(np.flatnonzero(pay & (p < 1e-3))[0])
    clause = det.explain(frame, i, float(raw[i]), float(p[i]))
    assert "requests of GET /pay in checkout failed within" in clause and "it usually fails 0." in clause


def _burst_after(
    younger_first: bool, younger: tuple[float, float], burst_at: float
) -> tuple[np.ndarray, list[str]]:
    """Fit on an hour of steady traffic, then score a burst of 20 failures 0.5 s apart from `burst_at`, after (or
    without) first scoring ordinary traffic in the `younger` span of seconds: (burst p-values, their clauses)."""
    rng = np.random.default_rng(4)
    det = ErrorRateDetector().fit(rows_frame(traffic(rng, 0, 3600, "checkout", "Pay", 80.0, fail=0.002)))
    later = rows_frame(traffic(rng, *younger, "checkout", "Pay", 80.0))
    burst = rows_frame([(burst_at + 0.5 * j, "checkout", "Pay", 80.0, True) for j in range(20)])
    if younger_first:
        score(det, later)
    raw, p = score(det, burst)
    return p, [det.explain(burst, i, float(raw[i]), float(p[i])) for i in range(len(p))]


def _counts(clause: str) -> tuple[str, float]:
    """("20 of the last 100 requests of ...", seconds spanned) from an error clause."""
    head, tail = clause.split(" failed within ")
    return head, float(tail.split(" s;")[0])


def test_a_burst_delivered_after_later_records_is_judged_on_its_own_window() -> None:
    # Batches are time-ordered inside, not across: a slow exporter's failures arrive after later records. Their
    # window is the minute before each of them, as in time order, not the younger records already seen.
    in_order, expected = _burst_after(False, (3720.0, 3740.0), 3700.0)
    p, clauses = _burst_after(True, (3720.0, 3740.0), 3700.0)
    assert (p[5:] < 1e-3).all()
    np.testing.assert_allclose(np.log10(p), np.log10(in_order), atol=0.5)
    for clause, want in zip(clauses, expected, strict=True):
        assert _counts(clause) == _counts(want), clause  # "k of the last k requests ... within 0.5 (k-1) s"


def test_a_backlog_drained_minutes_after_newer_records_keeps_its_windows() -> None:
    # The rows staged while the first model trains are scored in time order after live rows minutes younger
    # (many of them on a busy operation): each backlog row still finds the minute before it.
    in_order, expected = _burst_after(False, (3900.0, 4200.0), 3700.0)
    p, clauses = _burst_after(True, (3900.0, 4200.0), 3700.0)
    assert (p[5:] < 1e-3).all()
    for clause, want in zip(clauses, expected, strict=True):
        assert _counts(clause) == _counts(want), clause


def test_error_pvalues_are_calibrated_on_steady_failures() -> None:
    rng = np.random.default_rng(3)
    events = traffic(rng, 0, 7200, "a", "X", 10.0, fail=0.02) + traffic(
        rng, 0, 7200, "b", "Y", 10.0, fail=0.2
    )
    det = ErrorRateDetector().fit(rows_frame([e for e in events if e[0] < 3600]))
    _, p = score(det, rows_frame([e for e in events if e[0] >= 3600]))
    assert (p <= 1e-2).mean() <= 1e-2 and (p <= 1e-3).mean() <= 2e-3


def test_failure_incidents_in_a_fifth_of_training_do_not_calibrate_a_repeat_as_ordinary() -> None:
    """Two busy bursts (twenty failed logins a second for a minute each) are a seventh of the training rows and
    fill about a fifth of the calibration's time blocks: calibrated at the typical block, the member still
    calls a later failure burst rare (at the 90th-percentile block it called it ordinary, p ~ 0.5), and
    ordinary failures stay ordinary."""
    rng = np.random.default_rng(4)
    train = traffic(rng, 0, 3600, "shop", "Api", 10.0, fail=0.01)
    train += traffic(rng, 0, 3600, "auth", "Login", 10.0, fail=0.02)
    for start in (600, 2400):
        train += [(start + k / 20, "auth", "Login", 10.0, True) for k in range(1200)]
    det = ErrorRateDetector().fit(rows_frame(train))
    later = traffic(rng, 3600, 7200, "shop", "Api", 10.0, fail=0.01)
    later = [(t, s, o, ms, f or 5000 < t < 5300 and rng.random() < 0.5) for t, s, o, ms, f in later]
    frame = rows_frame(later)
    _, p = score(det, frame)
    t = np.asarray([e[0] for e in sorted(later)])
    failed = np.asarray([d["failed"] for d in frame.derived])
    burst = failed & (t > 5030) & (t < 5300)
    assert (p[burst] < 1e-3).mean() > 0.5
    ordinary = failed & ((t < 5000) | (t > 5400))
    assert (p[ordinary] < 1e-3).mean() < 0.02


def test_new_operation_is_silent_in_warm_up_but_an_extreme_latency_alerts() -> None:
    rng = np.random.default_rng(4)
    det = LatencyDetector().fit(rows_frame(traffic(rng, 0, 3600, "shop", "Home", 20.0)))
    later = traffic(rng, 3600, 3612, "shop", "Report", 100.0)  # 5x the service's usual, ordinary for itself
    later.append((3613.0, "shop", "Export", 60_000.0, False))  # 3000x: beyond anything of the service
    later.append((3614.0, "other", "New", 40.0, False))  # a new service: measured against all services
    frame = rows_frame(later)
    raw, p = score(det, frame)
    ops = ops_of(frame)
    assert len(later) > 20 and (p[ops == "/report"] > 1e-2).all()
    assert p[ops == "/export"][0] < 1e-4 and p[ops == "/new"][0] > 1e-2
    i = int(np.flatnonzero(ops == "/export")[0])
    assert "the usual 20 ms of shop's operations (GET /export is new)" in det.explain(frame, i, raw[i], p[i])
    ordinary = np.asarray([-1.0, 0.0, 2.0, 5.0, 10.0])
    assert np.all(np.diff(det.pvalues(frame, ordinary)) <= 0)  # higher raw, smaller p


def test_state_round_trip_continues_exactly() -> None:
    rng = np.random.default_rng(5)
    events = traffic(rng, 0, 1200, "shop", "A", 20.0, 0.05) + traffic(rng, 0, 1200, "shop", "B", 90.0, 0.01)
    train, rest = rows_frame([e for e in events if e[0] < 600]), sorted(e for e in events if e[0] >= 600)
    half = len(rest) // 2
    for cls in (LatencyDetector, ErrorRateDetector):
        one = cls().fit(train)
        whole = one.score_samples(rows_frame(rest))
        two = cls().fit(train)
        first = two.score_samples(rows_frame(rest[:half]))
        values, arrays = two.state()
        twin = cls.from_state(values, arrays)
        second = twin.score_samples(rows_frame(rest[half:]))
        np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    # A latency state saved before the sustained test loads, and judges with the request test's calibration.
    values, arrays = LatencyDetector().fit(train).state()
    for key in ("sustained_qs", "recent_mean"):
        del arrays[key]
    older = LatencyDetector.from_state(values, arrays)
    assert np.isfinite(older.score_samples(rows_frame(rest))).any() and len(older.recent) > 0
    # An error state saved before the windows carried their failure counts: (time, failed) pairs, in arrival
    # order (sorted when loaded), judges as the state it was.
    values, arrays = ErrorRateDetector().fit(train).state()
    expected = ErrorRateDetector.from_state(values, arrays).score_samples(rows_frame(rest))
    older_arrays = {k: v[:, :2].copy() if k.endswith("seq") else v for k, v in arrays.items()}
    np.testing.assert_array_equal(
        ErrorRateDetector.from_state(values, older_arrays).score_samples(rows_frame(rest)), expected
    )
    assert ErrorRateDetector._sequence(np.array([[5, 1], [3, 0], [4, 1]])) == [
        (3, 0, 0),
        (4, 1, 1),
        (5, 1, 2),
    ]


def test_key_cap_keeps_the_most_recent_operations() -> None:
    events = [(float(k), "shop", f"Op{k}", 10.0, k % 3 == 0) for k in range(50)]
    for cls in (LatencyDetector, ErrorRateDetector):
        det = cls(max_keys=8).fit(rows_frame(events))
        assert len(det.ops) == 8 and next(reversed(det.ops)).endswith("/op49\x1fGET")
        values, arrays = det.state()
        assert len(cls.from_state(values, arrays).ops) == 8
        assert math.isfinite(float(det.pvalues(rows_frame(events[:1]), np.asarray([1.0]))[0]))
