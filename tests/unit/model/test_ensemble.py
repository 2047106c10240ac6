"""The ensemble: p-value combination, the false-alerts-per-hour threshold, new-source warm-up, state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model.detectors import Frame, ensemble_from_state
from model.detectors.ensemble import WARMUP_ROWS, WARMUP_S, Ensemble, combine
from model.detectors.isolation import IsolationMember
from model.detectors.latency import LatencyDetector
from model.detectors.operation import ErrorRateDetector
from model.detectors.pattern import PatternFrequency
from model.extract import derive
from model.features import FeatureContract
from tests.helpers import T0, make_rows


def test_combinations_are_valid_p_values_under_the_null() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(200_000, 3))
    applicable = np.ones_like(p, dtype=bool)
    for how in ("cauchy", "minp", "fisher"):
        c = combine(p, applicable, how)
        assert ((c > 0) & (c <= 1)).all()
        # Independent uniform members: each combination alerts at about its nominal rate or less.
        assert (c <= 1e-3).mean() <= 1.5e-3, how


def test_combination_ignores_members_without_an_opinion() -> None:
    p = np.asarray([[1e-6, 1.0, 1.0], [0.5, 0.5, 0.5]])
    only_first = np.asarray([[True, False, False], [False, False, False]])
    for how in ("cauchy", "minp", "fisher"):
        c = combine(p, only_first, how)
        assert c[0] == pytest.approx(1e-6, rel=0.05), how
        # no opinion is no evidence: the largest value a judged row can get (Cauchy caps its inputs at 0.5)
        assert c[1] == (0.5 if how == "cauchy" else 1.0)
        judged = combine(np.asarray([[0.9, 0.99, 1.0]]), np.ones((1, 3), dtype=bool), how)
        assert judged[0] <= c[1]


def test_cauchy_is_not_cancelled_by_a_member_that_finds_the_row_ordinary() -> None:
    p = np.asarray([[1e-6, 1.0 - 1e-12]])
    assert combine(p, np.ones_like(p, dtype=bool), "cauchy")[0] < 1e-5


def _frame(rows) -> Frame:
    contract, _ = FeatureContract.fit(rows)
    derived = [derive(r, None) for r in rows]
    n = len(rows)
    return Frame(rows, derived, np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64), contract)


def test_threshold_is_false_alerts_per_hour_over_the_stream_rate() -> None:
    rows = make_rows(2000)  # one row every 50 ms: 72,000 rows per hour over both services
    ens = Ensemble([PatternFrequency()], false_alerts_per_hour=0.5, alert_pvalue=1e-3).fit(_frame(rows))
    later = make_rows(400, seed=1, start=rows[-1].time_unix_nano + 50_000_000)
    result = ens.score(_frame(later))
    per_service_hour = 36_000  # the two services share the stream evenly
    expected = 0.5 / per_service_hour
    assert np.median(result.threshold) == pytest.approx(expected, rel=0.3)
    slow = Ensemble([PatternFrequency()], false_alerts_per_hour=1000.0, alert_pvalue=1e-3).fit(_frame(rows))
    assert (slow.score(_frame(later)).threshold == 1e-3).all()  # never above alert_pvalue


def test_new_service_warms_up_with_one_notice_then_is_judged() -> None:
    rows = make_rows(2000)
    ens = Ensemble([PatternFrequency(min_rows=1)], alert_pvalue=1e-2).fit(_frame(rows))
    start = rows[-1].time_unix_nano + 50_000_000
    new = [
        dataclasses.replace(r, service="new-svc") for r in make_rows(WARMUP_ROWS + 200, seed=2, start=start)
    ]
    notices, alerts, warm = [], 0, []
    for i in range(0, len(new), 100):
        result = ens.score(_frame(new[i : i + 100]))
        notices += result.notices
        alerts += int(result.alert.sum())
        warm.append(result.warm)
    warm_all = np.concatenate(warm)
    told = [n.text for n in notices if n.entity == "source"]
    assert len(told) == 1 and "new-svc" in told[0]
    assert alerts == 0
    assert warm_all[:WARMUP_ROWS].all()
    elapsed_s = (new[-1].time_unix_nano - new[0].time_unix_nano) / 1e9
    assert warm_all[-1] == (elapsed_s < WARMUP_S)  # both the row count and the time must pass
    # The pattern member learned the new service while it warmed up: its ordinary rows are ordinary now.
    assert ens.members[0].groups["new-svc\x1flogs"].total == len(new)


def test_ensemble_state_round_trip_continues_identically() -> None:
    rows = make_rows(3000)
    ens = Ensemble([PatternFrequency()]).fit(_frame(rows[:2000]))
    twin = ensemble_from_state(*ens.state())
    a = ens.score(_frame(rows[2000:]))
    b = twin.score(_frame(rows[2000:]))
    np.testing.assert_array_equal(a.combined, b.combined)
    np.testing.assert_array_equal(a.threshold, b.threshold)
    assert twin.entities == ens.entities


def test_each_members_recent_check_is_calibrated_at_its_own_block_quantile_across_a_restart() -> None:
    rows = make_rows(3000)
    ens = Ensemble([PatternFrequency(), ErrorRateDetector(), LatencyDetector()]).fit(_frame(rows[:2000]))
    wanted = {f"{j}/{s}": m.block_q for j, m in enumerate(ens.members) for s in ("logs", "traces")}
    assert {k: rc.block_q for k, rc in ens.recent.items()} == {k: wanted[k] for k in ens.recent}
    assert {rc.block_q for rc in ens.recent.values()} == {0.5, 0.9}  # errors and latency differ
    twin = ensemble_from_state(*ens.state())
    assert {k: rc.block_q for k, rc in twin.recent.items()} == {k: rc.block_q for k, rc in ens.recent.items()}


def test_an_incident_inside_the_training_window_is_reported_not_learned() -> None:
    from model.detectors.series import SeriesDetector
    from tests.unit.model.test_series_detector import frame_of

    values = np.random.default_rng(4).normal(100.0, 5.0, 600)
    values[400] = 400.0  # a spike among the rows the first model trains on
    ens = Ensemble([SeriesDetector()], false_alerts_per_hour=10.0, alert_pvalue=1e-3).fit(frame_of(values))
    judged = ens.fit_result_
    assert judged is not None
    assert 400 in np.flatnonzero(judged.alert).tolist()
    assert judged.alert.sum() <= 3  # the ordinary rows of the window are not reported
    assert not np.isnan(judged.raw[450:, 0]).any()  # every row after the warm-up has an out-of-sample score


def test_the_series_member_alerts_at_the_ensembles_alert_level() -> None:
    # a point that cannot alert ranks by its drift just above the series member's alert level, so that level
    # must be the ensemble's, whatever OTAD_ALERT_PVALUE says
    from model.detectors import build

    for level in (1e-3, 1e-2):
        ens = build(("series", "pattern"), alert_pvalue=level)
        assert ens.alert_pvalue == level
        assert [m.alert_p for m in ens.members if m.name == "series"] == [level]


def test_an_episodes_later_points_keep_their_evidence_but_alert_once_in_training_and_scoring() -> None:
    from model.detectors.series import SeriesDetector
    from tests.unit.model.test_series_detector import frame_of

    values = np.random.default_rng(5).normal(100.0, 5.0, 1000)
    values[400:404] = [400.0, 380.0, 390.0, 100.0]  # an outage of three points among the training rows
    ens = Ensemble([SeriesDetector()], false_alerts_per_hour=10.0, alert_pvalue=1e-3).fit(
        frame_of(values[:600])
    )
    judged = ens.fit_result_
    assert judged is not None
    assert judged.alert[400] and not judged.alert[401:404].any()  # reported once ...
    assert (
        judged.combined[401:403] < 1e-6
    ).all()  # ... while the points after it rank by their own deviation
    result = ens.score(frame_of(values[600:], t0=600))
    assert not result.alert.any()
    later = np.r_[np.random.default_rng(6).normal(100.0, 5.0, 20), [300.0, 320.0, 310.0]]
    result = ens.score(frame_of(later, t0=1000))
    assert result.alert[20] and not result.alert[21:].any() and (result.combined[21:] < 1e-6).all()


def _numeric_frame(x: np.ndarray, start: int) -> Frame:
    """Log rows whose only features are the numeric columns x (the isolation member reads nothing else)."""
    rows = make_rows(len(x), seed=start, start=T0 + start * 50_000_000)
    derived = [derive(r, None) for r in rows]
    return Frame(rows, derived, x.astype(np.float32), np.zeros((len(x), 0), np.int64), FeatureContract())


def test_an_incident_in_a_small_recent_window_does_not_hide_its_next_rows() -> None:
    """After a small cold start the recent-traffic window holds a thousand or two rows. An incident's first rows
    enter it; its next rows, a batch later, must still be rare against it: the window is calibrated over time
    blocks, so an incident filling one block does not set recent traffic's tail."""
    rng = np.random.default_rng(3)
    ens = Ensemble([IsolationMember()], false_alerts_per_hour=1e6, alert_pvalue=1e-3)
    ens.fit(_numeric_frame(rng.normal(size=(2000, 4)), 0))
    first = rng.normal(size=(500, 4))
    first[-40:] += 6.0  # the incident starts at the end of a batch
    assert ens.score(_numeric_frame(first, 2000)).alert[-40:].mean() > 0.9
    second = rng.normal(size=(500, 4))
    second[:40] += 6.0  # ... and goes on in the next
    judged = ens.score(_numeric_frame(second, 2500))
    # (calibrated without blocks, recent traffic put these at p >= 40 / 1,500 and none alerted)
    assert judged.alert[:40].mean() > 0.9
    assert judged.alert[40:].sum() <= 2


def test_a_copy_of_an_extreme_row_in_a_small_recent_window_still_alerts() -> None:
    """A recent window of a few hundred rows (a small cold start) is calibrated over 16 blocks too: pooled, one
    earlier copy of an extreme row (a client's retry) set recent traffic's tail and the copy got p = 1/800."""
    rng = np.random.default_rng(7)
    ens = Ensemble([IsolationMember()], false_alerts_per_hour=1e6, alert_pvalue=1e-3)
    ens.fit(_numeric_frame(rng.normal(size=(600, 4)), 0))
    first = rng.normal(size=(200, 4))
    first[-1] = 8.0
    assert ens.score(_numeric_frame(first, 600)).alert[-1]
    assert ens.recent["0/logs"].since_fit == 0  # refitted with the extreme row in the window
    later = rng.normal(size=(100, 4))
    later[-1] = 8.0
    assert ens.score(_numeric_frame(later, 800)).alert[-1]


def test_a_source_that_drifts_as_a_whole_is_judged_against_its_shifted_null() -> None:
    """Every row of a batch a little more novel than the training window (a deploy, a drifted source): the
    null is located on recent traffic, so the batch does not alert as a whole, and its ranking is kept; an
    incident in a tenth of a batch is judged as before."""
    rng = np.random.default_rng(5)
    ens = Ensemble([IsolationMember()], false_alerts_per_hour=1e6, alert_pvalue=1e-3)
    ens.fit(_numeric_frame(rng.normal(size=(2000, 4)), 0))
    frame = _numeric_frame(rng.normal(size=(1000, 4)) * 1.3 + 1.0, 2000)
    member = ens.members[0]
    own = member.pvalues(frame, member.score_samples(frame))
    assert (own <= 1e-3).mean() > 0.05  # against the training window alone, the batch alerts broadly
    judged = ens.score(frame, learn=False)
    assert judged.alert.mean() < 0.01
    assert np.argmin(judged.p[:, 0]) == np.argmin(own)
    assert ens.center["0/logs"].z.size == 0  # learn=False leaves the recent rows as they were
    calm = rng.normal(size=(1000, 4))
    calm[:100] += 6.0
    judged = ens.score(_numeric_frame(calm, 3000))
    assert judged.alert[:100].mean() > 0.9 and judged.alert[100:].sum() <= 2
    assert ens.center["0/logs"].z.size == 1000
    twin = ensemble_from_state(*ens.state())  # the recent rows survive a restart
    np.testing.assert_array_equal(twin.center["0/logs"].z, ens.center["0/logs"].z)
