"""k-NN detector and calibration: duplicate-aware, never its own neighbour, calibrated scores, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from model.calibration import Calibration, pvalue_to_score
from model.detector import KnnDetector


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pvalue_to_score_scale():
    assert pvalue_to_score(1e-3) == pytest.approx(50.0)
    assert pvalue_to_score(1e-6) == pytest.approx(100.0) and pvalue_to_score(1e-9) == pytest.approx(100.0)
    assert pvalue_to_score(1.0) == pytest.approx(0.0)


def test_calibration_tail_is_monotonic_and_inverts():
    rng = np.random.default_rng(0)
    cal = Calibration.fit(rng.exponential(1.0, 20_000))
    xs = np.linspace(0, 30, 200)
    p = cal.pvalue(xs)
    assert np.all(np.diff(p) <= 1e-12) and p[-1] < 1e-6
    assert cal.pvalue(np.array([cal.raw_at(1e-4)]))[0] == pytest.approx(1e-4, rel=0.05)


def test_fit_threshold_and_outliers():
    rng = np.random.default_rng(1)
    ref = unit(rng.normal(size=(3000, 8)) * 0.1 + np.array([1, 0, 0, 0, 0, 0, 0, 0]))
    det = KnnDetector(k=5, alert_pvalue=1e-3).fit(ref, [f"r{i}" for i in range(3000)])
    assert det.threshold_ == pytest.approx(50.0)
    normal = unit(rng.normal(size=(500, 8)) * 0.1 + np.array([1, 0, 0, 0, 0, 0, 0, 0]))
    far = unit(rng.normal(size=(20, 8)) * 0.1 + np.array([0, 1, 0, 0, 0, 0, 0, 0]))
    s_normal = det.score(det.decision_function(normal)[0])
    s_far = det.score(det.decision_function(far)[0])
    assert (s_normal >= det.threshold_).mean() < 0.02
    assert (s_far >= det.threshold_).all()


def test_duplicates_count_with_multiplicity_and_self_is_excluded():
    base = unit(np.eye(4, dtype=np.float32) + 0.01)
    # 30 copies of one vector, one copy each of three others.
    ref = np.concatenate([np.repeat(base[:1], 30, axis=0), base[1:]])
    det = KnnDetector(k=5).fit(ref, [f"u{i}" for i in range(len(ref))], clean=False)
    assert len(det.vectors_) == 4 and det.counts_.sum() == 33
    raw, _ = det.decision_function(ref, exclude_self=True)
    assert raw[0] == pytest.approx(0.0, abs=1e-6)  # 29 other copies remain
    assert raw[-1] > 0.5  # a singleton is never its own neighbour


def test_add_grows_history_and_state_round_trip():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(200, 6)).astype(np.float32)
    det = KnnDetector(k=3).fit(ref, [f"r{i}" for i in range(200)])
    new = rng.normal(size=(10, 6)).astype(np.float32) + 5
    before = det.decision_function(new)[0]
    added = det.add(np.concatenate([new, new[:2]]), [f"n{i}" for i in range(12)])
    assert added == list(range(10))  # the two repeats only raise counts
    after = det.decision_function(new)[0]
    assert (after < before).all()
    clone = KnnDetector.from_state(det.state(), k=3)
    assert np.allclose(clone.decision_function(new)[0], after)
    assert clone.threshold_raw_ == pytest.approx(det.threshold_raw_)


def test_bad_alert_pvalue():
    with pytest.raises(ValueError, match="alert_pvalue"):
        KnnDetector(alert_pvalue=0.9)


def test_an_incident_inside_the_training_window_is_cleaned_out_of_the_reference():
    """Training history holds an incident: 300 near-identical rows, all in one stretch of time. Scored
    against the other time blocks they stand out, so they leave the reference, and a later row of the same
    incident is still flagged. Without the times (leave-one-out cleaning) the incident hides itself."""
    rng = np.random.default_rng(3)
    centre, elsewhere = np.eye(8)[0], np.eye(8)[1]
    normal = unit(centre + 0.3 * rng.normal(size=(6000, 8)))
    incident = unit(elsewhere + 0.02 * rng.normal(size=(300, 8)))
    vectors = np.concatenate([normal[:3000], incident, normal[3000:]])
    times = np.arange(len(vectors))  # the incident sits inside the second time block
    uids = [str(i) for i in range(len(vectors))]
    later = unit(elsewhere + 0.02 * rng.normal(size=(1, 8)))
    cleaned = KnnDetector(k=10).fit(vectors, uids, times=times)
    assert not set(cleaned.uids_) & {str(i) for i in range(3000, 3300)}
    assert cleaned.score(cleaned.decision_function(later)[0])[0] >= cleaned.threshold_
    naive = KnnDetector(k=10).fit(vectors, uids)
    assert naive.score(naive.decision_function(later)[0])[0] < naive.threshold_
    # normal rows are not flagged by the cleaned detector
    fresh = unit(centre + 0.3 * rng.normal(size=(2000, 8)))
    assert (cleaned.score(cleaned.decision_function(fresh)[0]) >= cleaned.threshold_).mean() < 0.01


def test_each_signal_gets_its_own_calibration():
    """Two groups with distance scales 10x apart: one shared tail lets the noisy group alert far above the
    nominal rate and silences the tight one; per-group calibration brings both near nominal, and a row 5x
    further out than its group's usual spread alerts even in the tight group."""
    rng = np.random.default_rng(7)
    tight = 0.02 * rng.normal(size=(4000, 6))
    noisy = 0.2 * rng.normal(size=(4000, 6)) + 3.0
    ref = np.concatenate([tight, noisy]).astype(np.float32)
    groups = np.asarray(["logs"] * 4000 + ["metrics"] * 4000)
    uids = [f"r{i}" for i in range(8000)]
    shared = KnnDetector(k=5, alert_pvalue=1e-2).fit(ref, uids, clean=False)
    per = KnnDetector(k=5, alert_pvalue=1e-2).fit(ref, uids, clean=False, groups=groups)
    assert set(per.group_calibrations_) == {"logs", "metrics"}
    new_tight = (0.02 * rng.normal(size=(4000, 6))).astype(np.float32)
    new_noisy = (0.2 * rng.normal(size=(4000, 6)) + 3.0).astype(np.float32)
    out_tight = (0.02 * rng.normal(size=(50, 6)) + 0.1 * np.eye(6)[0]).astype(np.float32)
    raw = {
        name: shared.decision_function(x)[0]
        for name, x in (("tight", new_tight), ("noisy", new_noisy), ("out", out_tight))
    }

    def rate(det, name, group):
        return float((det.score(raw[name], [group] * len(raw[name])) >= det.threshold_).mean())

    assert rate(shared, "noisy", "metrics") > 0.015 and rate(shared, "out", "logs") < 0.2
    assert rate(per, "noisy", "metrics") < 0.03 and rate(per, "tight", "logs") < 0.03
    assert rate(per, "out", "logs") > 0.9
    clone = KnnDetector.from_state(per.state(), k=5, alert_pvalue=1e-2)
    assert np.allclose(clone.score(raw["out"], ["logs"] * 50), per.score(raw["out"], ["logs"] * 50))
    # A group the reference never saw is scored with the calibration of all rows.
    assert np.allclose(per.score(raw["out"], ["traces"] * 50), per.calibration_.score(raw["out"]))


def test_calibration_over_time_blocks_ignores_an_incident_in_history():
    """History with one incident: pooled, its distances fill the tail and a repeat of it scores as normal; over
    time blocks, the repeat stays beyond the threshold while ordinary rows keep the nominal alert rate."""
    rng = np.random.default_rng(3)
    n = 40_000
    times = np.arange(n)
    history = rng.gamma(4.0, 0.25, n)
    history[20_000:20_600] = rng.uniform(4.0, 6.0, 600)  # a 1.5 % incident, inside one time block
    pooled, blocks = Calibration.fit(history), Calibration.fit(history, times)
    repeat = rng.uniform(4.0, 6.0, 500)
    assert (pooled.pvalue(repeat) < 1e-3).mean() < 0.2
    assert (blocks.pvalue(repeat) < 1e-3).mean() > 0.9
    normal = rng.gamma(4.0, 0.25, 200_000)
    assert 2e-4 < (blocks.pvalue(normal) < 1e-3).mean() < 3e-3  # near the nominal 1e-3
    clean = rng.gamma(4.0, 0.25, n)  # without an incident the two agree, blocks a little more conservative
    a, b = Calibration.fit(clean), Calibration.fit(clean, times)
    assert a.raw_at(1e-3) <= b.raw_at(1e-3) < 1.15 * a.raw_at(1e-3)
    assert Calibration.fit(history[:5_000], times[:5_000]).sorted_scores.size == 5_000  # too few rows: pooled


def test_deviant_rows_never_become_reference_rows():
    """An incident spread thinly over the whole training window is not bursty, so cleaning keeps it, and a repeat
    finds it as its normal neighbours. Rows marked deviant (far from their own baseline) stay out of the
    reference, so the repeat is flagged; their distances still calibrate, so normal rows keep their rate."""
    rng = np.random.default_rng(5)
    centre, elsewhere = np.eye(8)[0], np.eye(8)[1]
    vectors = unit(centre + 0.3 * rng.normal(size=(6000, 8)))
    spread = np.arange(0, 6000, 100)  # 60 incident rows, one every 100 rows: in every time block
    vectors[spread] = unit(elsewhere + 0.05 * rng.normal(size=(len(spread), 8)))
    deviant = np.zeros(len(vectors), dtype=bool)
    deviant[spread] = True
    times, uids = np.arange(len(vectors)), [str(i) for i in range(len(vectors))]
    repeat = unit(elsewhere + 0.05 * rng.normal(size=(20, 8)))
    kept = KnnDetector(k=10).fit(vectors, uids, times=times)
    assert (
        kept.score(kept.decision_function(repeat)[0]) < kept.threshold_
    ).all()  # the incident looks normal
    marked = KnnDetector(k=10).fit(vectors, uids, times=times, deviant=deviant)
    assert not set(marked.uids_) & {str(i) for i in spread}
    assert (marked.score(marked.decision_function(repeat)[0]) >= marked.threshold_).all()
    fresh = unit(centre + 0.3 * rng.normal(size=(3000, 8)))
    assert (marked.score(marked.decision_function(fresh)[0]) >= marked.threshold_).mean() < 0.01


def test_rows_the_approximate_index_calls_far_are_searched_again_exactly():
    """Above `hnsw_above` reference vectors the search is HNSW, which on clustered data can miss a row's whole
    cluster and report its neighbours at another cluster's distance. Such a row would look novel because of
    the index. Here the index is made poor on purpose (efSearch 1, a stand-in for a graph that lost a
    cluster): every row it calls far is searched again exactly, so no row reaches the tail that the exact
    search keeps ordinary."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(60, 16)) * 3.0
    ref = (centers[rng.integers(0, 60, 6_000)] + rng.normal(scale=0.05, size=(6_000, 16))).astype(np.float32)
    det = KnnDetector(k=5, hnsw_above=1_000).fit(ref, [f"r{i}" for i in range(len(ref))], clean=False)
    exact = KnnDetector(k=5, hnsw_above=10**9).fit(ref, [f"r{i}" for i in range(len(ref))], clean=False)
    det.calibration_, det.group_calibrations_ = exact.calibration_, {}  # one calibration, so one tail level
    det.index_.hnsw.efSearch = 1
    queries = (centers[rng.integers(0, 60, 3_000)] + rng.normal(scale=0.05, size=(3_000, 16))).astype(
        np.float32
    )

    approximate = np.sqrt(np.maximum(det.index_.search(queries, 1)[0][:, 0], 0.0))
    nearest = np.sqrt(np.maximum(exact.index_.search(queries, 1)[0][:, 0], 0.0))
    assert (approximate > nearest + 1.0).sum() >= 10  # the poor index does miss clusters

    raw, _ = det.decision_function(queries)
    want, _ = exact.decision_function(queries)
    level = exact.calibration_.raw_at(0.01)
    tail = (raw >= level) | (want >= level)
    assert tail.any()
    np.testing.assert_allclose(raw[tail], want[tail], rtol=1e-5)
    assert np.all(raw >= want - 1e-5)  # elsewhere the approximate distances may only be longer
