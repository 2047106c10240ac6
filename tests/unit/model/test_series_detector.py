"""The series detector: changes flagged promptly with small p, calibrated quiet on normal series, warm-up,
non-metric rows, episodes, adaptation to a new normal, exact state round trip and memory caps."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest

from model.detectors import series
from model.detectors.base import Frame
from model.detectors.series import N_STATS, SeriesDetector
from model.detectors.series_stats import resolution, window_novelty
from model.schema import METRIC_OBSERVATION, Row, Signal, Value

ALERT = 1e-3


def frame_of(values: np.ndarray, key: str | None = "s", signal: Signal = "metrics", t0: int = 0) -> Frame:
    unit: dict[str, Value] = {"metric.unit": "ms"}
    rows = [
        Row(f"u{i}", signal, i * 60_000_000_000, "svc", METRIC_OBSERVATION, 0, 1, 0, unit)
        for i in range(t0, t0 + len(values))
    ]
    derived = [{"series": key, "series_value": float(v)} for v in values]
    n = len(values)
    return Frame(rows, derived, np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64), None)  # type: ignore[arg-type]


def pvalues(det: SeriesDetector, values: np.ndarray, **kw: Any) -> np.ndarray:
    fr = frame_of(values, **kw)
    return det.pvalues(fr, det.score_samples(fr))


def noise(n: int, seed: int, sd: float = 5.0, level: float = 100.0) -> np.ndarray:
    return level + sd * np.random.default_rng(seed).normal(size=n)


def scored(det: SeriesDetector, values: np.ndarray, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """p-values and alerts: p below the alert level and not muted (an episode's later points)."""
    fr = frame_of(values, **kw)
    p = det.pvalues(fr, det.score_samples(fr))
    muted = det.muted(fr)
    assert muted is not None and muted.shape == p.shape
    return p, (p < ALERT) & ~muted


def first_alert(alerts: np.ndarray) -> int:
    hits = np.flatnonzero(alerts)
    return int(hits[0]) if len(hits) else 10**9


def test_level_shift_flagged_promptly_then_becomes_normal() -> None:
    det = SeriesDetector()
    pvalues(det, noise(800, 0))
    after = noise(400, 1) + 25.0  # +5 SDs, kept: a new normal
    _, a = scored(det, after)
    assert first_alert(a) <= 3
    assert a[:60].sum() <= 2  # one episode, not a flood
    assert a[-150:].sum() == 0  # the new level has become normal


def test_spike_flagged_at_the_point() -> None:
    det = SeriesDetector()
    pvalues(det, noise(800, 2))
    x = noise(20, 3)
    x[5] += 60.0  # +12 SDs, one point
    p, a = scored(det, x)
    assert p[5] < 1e-5 and a[5] and np.delete(a, 5).sum() <= 1


def test_variance_change_flagged_promptly() -> None:
    det = SeriesDetector()
    pvalues(det, noise(800, 4))
    _, a = scored(det, noise(100, 5, sd=25.0))
    assert first_alert(a) <= 10


def test_trend_change_flagged_promptly() -> None:
    det = SeriesDetector()
    pvalues(det, noise(800, 6))
    _, a = scored(det, noise(100, 7) + 2.5 * np.arange(100))  # half an SD per point
    assert first_alert(a) <= 20


def test_stationary_series_rarely_flags() -> None:
    det = SeriesDetector()
    rng = np.random.default_rng(8)
    gaussian = scored(det, noise(6000, 9), key="g")
    heavy = scored(det, 50.0 + 3.0 * rng.standard_t(3, size=6000), key="t")
    for p, a in (gaussian, heavy):
        assert a[500:].sum() <= 15  # about 5.5 expected at a calibrated 1e-3
        assert 0.05 < (p[500:] < 0.1).mean() < 0.15


def test_seasonal_series_learns_its_period() -> None:
    det = SeriesDetector()
    t = np.arange(4000)
    x = 100.0 + 40.0 * np.sin(2 * np.pi * t / 48) + np.random.default_rng(10).normal(size=len(t))
    x[3500] += 12.0  # within the series' overall range, but 12 SDs off its seasonal value
    p, a = scored(det, x)
    assert det.series["s"].period == 48
    assert np.delete(a[1000:], 2500).sum() <= 8
    assert p[3500] < 1e-4


def test_new_series_is_silent_during_warm_up() -> None:
    det = SeriesDetector()
    det.fit(frame_of(noise(500, 11), key="old"))
    wild = np.random.default_rng(12).lognormal(0.0, 3.0, size=det.min_points)
    p = pvalues(det, wild, key="new")
    assert (p == 1.0).all()
    later = pvalues(det, np.concatenate([noise(300, 13), [1e6]]), key="new")
    assert later[-1] < ALERT  # once warmed up, it judges on its own baseline


def test_non_metric_and_valueless_rows_get_nan() -> None:
    det = SeriesDetector()
    kws: list[dict[str, Any]] = [{"signal": "logs"}, {"key": None}]
    for kw in kws:
        fr = frame_of(noise(300, 14), **kw)
        raw = det.score_samples(fr)
        assert np.isnan(raw).all() and (det.pvalues(fr, raw) == 1.0).all()
    fr = frame_of(noise(3, 15))
    fr.derived[1]["series_value"] = None
    assert np.isnan(det.score_samples(fr)[1])


def test_state_round_trip_continues_identically() -> None:
    x = np.concatenate([noise(1500, 16), noise(500, 17) + 30.0])
    keys = ["a", "b"]
    whole = SeriesDetector()
    ref = [whole.score_samples(frame_of(x, key=k)) for k in keys]
    first, later = SeriesDetector(), SeriesDetector
    for k in keys:
        first.score_samples(frame_of(x[:1100], key=k))
    values, arrays = first.state()
    values = json.loads(json.dumps(values, allow_nan=False))
    twin = later.from_state(values, {k: np.array(v) for k, v in arrays.items()})
    for k, r in zip(keys, ref, strict=True):
        np.testing.assert_array_equal(twin.score_samples(frame_of(x[1100:], key=k, t0=1100)), r[1100:])


def test_memory_caps_hold(caplog: pytest.LogCaptureFixture) -> None:
    det = SeriesDetector(max_series=5, history=128, calib=64)
    with caplog.at_level(logging.WARNING, logger="model.detectors.series"):
        for j in range(10):
            pvalues(det, noise(400, 20 + j), key=f"k{j}")
    assert list(det.series) == [f"k{j}" for j in range(5, 10)]  # the least recently seen were dropped
    # ... and not silently: a stream with more live series than the cap would never judge any
    assert det.dropped == 5 and "capacity of 5 series" in caplog.text and len(caplog.records) == 1
    for st in det.series.values():
        assert st.vals.shape == (128,) and st.cal.shape == (N_STATS, 64) and len(st.pending) <= 64


def test_explain_names_the_change_with_units() -> None:
    det = SeriesDetector()
    pvalues(det, noise(800, 30))
    x = noise(5, 31)
    x[2] = 400.0
    fr = frame_of(x)
    raw = det.score_samples(fr)
    clause = det.explain(fr, 2, float(raw[2]), float(det.pvalues(fr, raw)[2]))
    assert "400 ms" in clause and "robust SDs above" in clause


def test_flat_series_alerts_only_on_its_change() -> None:
    _, a = scored(SeriesDetector(), np.r_[np.full(500, 5.0), 6.0, np.full(50, 5.0)])
    assert list(np.flatnonzero(a)) == [500]


def test_points_muted_inside_an_episode_still_rank_by_their_own_deviation() -> None:
    det = SeriesDetector()
    pvalues(det, noise(800, 4))
    x = noise(40, 5)
    x[10:14] += np.array([200.0, 150.0, 60.0, 100.0])  # four far-off points in a row: one episode
    p, a = scored(det, x)
    assert a[10] and not a[11:14].any()  # the repeats cannot alert ...
    assert (p[11:14] < ALERT).all()  # ... but keep their own evidence: they outrank a fresh marginal alert
    ordinary = np.delete(p, range(10, 14))
    assert p[11:14].max() < ordinary.min()  # ... and every ordinary point of the series
    assert p[12] > p[13] > p[11]  # in the order of their own deviation
    # the ordinary points right after the burst are not lifted by the tests that still carry it
    assert (p[14:20] > 10 * ALERT).all()


def test_a_shift_the_level_has_absorbed_still_ranks_above_ordinary_points_without_alerting() -> None:
    det = SeriesDetector()
    before = pvalues(det, noise(900, 40))
    p, a = scored(det, noise(300, 41) + 25.0)  # +5 SDs, kept
    assert first_alert(a) <= 3 and (p[40:] >= ALERT).all()  # one alert, then the short baseline absorbs it
    # ... but the points still far from the series' long-run level rank above its ordinary ones (they were
    # at p = 1 once the episode's spike test saw nothing)
    assert np.median(p[40:100]) < 0.1 < np.median(before[-300:])
    # once most of the kept history is at the new level, it is ordinary on every count
    late = pvalues(det, noise(900, 42) + 25.0)
    assert np.median(late[-200:]) > 0.1


@pytest.mark.parametrize("rows", [3, 4])
def test_a_state_saved_before_the_drift_or_shape_statistic_loads_and_alerts_alike(rows: int) -> None:
    """A state of three statistics per series (before "drift") or four (before "shape"): it loads, and its
    alerts are those of the full state. Drift only ranks; the shape test of a loaded series waits until its
    calibration row holds its own values, so an upgrade does not alert on a row of zeros."""
    x = np.concatenate([noise(1200, 43), noise(300, 44) + 30.0, noise(300, 45)])
    det = SeriesDetector()
    det.score_samples(frame_of(x[:1000]))
    values, arrays = det.state()
    old = dict(arrays)
    old["cal"], old["tails"], old["grid"] = (
        arrays["cal"][:, :rows],
        arrays["tails"][:, :rows],
        arrays["grid"][:, :rows],
    )
    old["floats"] = arrays["floats"][:, :5]
    old["ints"] = arrays["ints"][:, :9]  # before `shape_from`
    full, legacy = SeriesDetector.from_state(values, arrays), SeriesDetector.from_state(values, old)
    assert legacy.series["s"].shape_from == legacy.series["s"].n and not full.series["s"].shape_from
    (_, a_full), (p_legacy, a_legacy) = (scored(full, x[1000:], t0=1000), scored(legacy, x[1000:], t0=1000))
    assert np.isfinite(p_legacy).all()
    np.testing.assert_array_equal(a_legacy, a_full)
    assert a_full.any()


def test_a_sparse_counter_is_judged_by_its_steps_and_still_alerts_on_a_burst() -> None:
    """A request counter of a quiet route (Poisson 0.02 a point: mostly 0, now and then 1). Its robust scale is
    0, so its step sets the least it varies, and its test statistics, mostly tied at 0, get a tail fitted to what
    lies above the tie. Before, a lone 1 could get p = 1e-300 and ordinary 1s alerted at 5x the nominal rate."""
    alerts, bursts = 0, []
    for seed in range(8):
        x = np.random.default_rng(seed).poisson(0.02, 2000).astype(float)
        x[[10, 30]] = 1.0  # a step inside the warm-up
        det = SeriesDetector()
        p, a = scored(det, x)
        alerts += int(a[300:].sum())
        assert p[300:].min() > 1e-12
        bursts.append(pvalues(det, np.r_[np.zeros(5), 12.0])[-1])
    assert alerts <= 2 * 8 * 1700 * ALERT  # measured 14 (before: 65)
    assert max(bursts) < 1e-5  # twelve requests in one interval (before: up to 1e-3)


def test_a_quiet_counters_first_moves_after_a_calibration_of_zeros_are_not_alarms() -> None:
    """Its steps were seen in the warm-up only, so every calibration value of its tests is exactly 0: a tail
    fitted there used to call the first 1 p = 1e-17 and, capped at that tail, never learn the next ones."""
    x = np.zeros(700)
    x[[10, 30, 400, 550]] = 1.0
    x[650] = 12.0
    p, a = scored(SeriesDetector(), x)
    assert p[400] > ALERT and p[550] > ALERT  # (before: 8e-18 and 7e-16)
    assert a[650] and p[650] < 1e-6  # twelve at once still alerts
    # (its first judged point, 128, may alert: a series whose first window moved and then went flat)
    assert list(np.flatnonzero(a[200:]) + 200) == [650]


def test_resolution_is_the_smallest_step_of_a_series() -> None:
    assert resolution(np.array([0.0, 0.0, 1.0, 0.0, 3.0])) == 1.0
    assert resolution(np.array([5.0, 5.0, 5.0])) == 0.0
    assert resolution(np.array([0.25, 0.5, 0.5, 1.25])) == 0.25


def test_window_novelty_is_the_distance_to_the_nearest_earlier_window() -> None:
    """The sliding-dot-product form equals the brute-force nearest-window distance, also far from 0, and is 0
    while the history holds fewer than 32 earlier windows."""
    rng = np.random.default_rng(60)

    def brute(hist: np.ndarray, x: float, m: int, scale: float) -> float:
        past = np.lib.stride_tricks.sliding_window_view(hist, m)[: len(hist) - 2 * m + 2]
        now = np.append(hist[len(hist) - m + 1 :], x)
        return float(np.sqrt(np.min(np.sum((past - now) ** 2, axis=1)))) / (scale * np.sqrt(m))

    for offset in (0.0, 1e9):
        hist = offset + rng.normal(size=700)
        recent = hist[-256:]
        scale = 1.4826 * float(np.median(np.abs(recent - np.median(recent))))
        assert window_novelty(hist, offset + 0.5, 32, 0.0) == pytest.approx(
            brute(hist, offset + 0.5, 32, scale), rel=1e-6
        )
    assert window_novelty(rng.normal(size=90), 0.0, 32, 1.0) == 0.0
    repeated = np.tile(np.sin(np.arange(50) / 3.0), 12)
    assert (
        window_novelty(repeated[:-1], float(repeated[-1]), 32, 1e-3) < 1e-6
    )  # its window has occurred before


def test_a_shape_never_seen_before_alerts_where_the_other_tests_see_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sawtooth too long for the period search, then 40 points oscillating around it (no new level, no
    lasting spread): the shape test alerts and says so; without it nothing in the stretch alerts."""
    t = np.arange(3000)
    base = (t % 400) / 4.0
    x = base + np.random.default_rng(50).normal(scale=0.3, size=len(t))
    x[2650:2690] = base[2650:2690] + np.where(np.arange(40) % 2 == 0, 40.0, -40.0)
    det = SeriesDetector()
    fr = frame_of(x)
    raw = det.score_samples(fr)
    p = det.pvalues(fr, raw)
    alerts = [i for i in range(2640, 2720) if p[i] < ALERT]
    assert alerts and det.explain(fr, alerts[0], raw[alerts[0]], p[alerts[0]]).startswith(
        "the last 32 points"
    )
    monkeypatch.setattr(series, "TEST_WEIGHTS", {0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
    assert not (pvalues(SeriesDetector(), x)[2640:2720] < ALERT).any()


def test_an_outage_alerts_once_though_the_window_tests_grow_with_every_point_of_it() -> None:
    """The shape test's window holds the outage's own earlier points: its distance grows with each further
    point, which is the same episode, not a worse one. Only a point's own deviation can alert again."""
    det = SeriesDetector()
    pvalues(det, noise(1500, 8))  # past a full calibration row: the shape test is active
    x = noise(60, 9)
    x[20:26] = 400.0 + noise(6, 10)  # six points of an outage at 60 SDs
    x[40] = 100.0 + 5.0 * 2000  # far further out than anything in the outage: alerts again
    p, a = scored(det, x)
    assert a[20] and not a[21:26].any()
    assert (p[21:26] < ALERT).all()  # the outage's later points keep their evidence
    assert a[40]
