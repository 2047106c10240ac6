"""Contamination-robust calibration: a trimmed generalised Pareto tail read from the bulk of the exceedances."""

from __future__ import annotations

import numpy as np
import pytest

from model.calibration import Calibration, gpd_fit, gpd_fit_trimmed


def test_the_trimmed_fit_recovers_a_clean_tail():
    rng = np.random.default_rng(1)
    y = rng.pareto(1.0 / 0.25, 4_000) * 2.0 / 0.25 * 0.25  # GPD with shape 0.25, scale 0.5
    beta, xi = gpd_fit_trimmed(y, trimmed=400)
    assert xi == pytest.approx(0.25, abs=0.1)
    assert beta == pytest.approx(0.5, rel=0.2)


def test_a_recurring_incident_at_the_top_does_not_set_the_tail():
    """2 % of the calibration rows are one recurring fault far beyond the ordinary scores: without trimming its
    repeats are calibrated as one row in fifty; with it, as the tail of the ordinary rows says they are."""
    rng = np.random.default_rng(2)
    ordinary = rng.exponential(1.0, 9_800)
    fault = rng.normal(14.0, 0.5, 200)
    scores = np.concatenate([ordinary, fault])
    plain = Calibration.fit(scores)
    robust = Calibration.fit(scores, trim=0.02)
    assert plain.pvalue(np.array([14.0]))[0] > 5e-3
    assert robust.pvalue(np.array([14.0]))[0] < 1e-4
    # the ordinary rows stay calibrated: fresh ones reach p <= 0.01 about one time in a hundred
    fresh = rng.exponential(1.0, 200_000)
    share = float(np.mean(robust.pvalue(fresh) <= 0.01))
    assert 0.005 <= share <= 0.02


def test_trimming_nothing_matches_the_plain_fit_and_blocks_trim_too():
    rng = np.random.default_rng(3)
    y = np.sort(rng.exponential(2.0, 2_000))
    b0, x0 = gpd_fit_trimmed(y, trimmed=0)
    assert b0 == pytest.approx(gpd_fit(y)[0], rel=0.15) and x0 < 0.1
    times = np.arange(20_000, dtype=np.int64)
    scores = rng.exponential(1.0, 20_000)
    scores[::50] = 14.0  # 2 % in every time block: blocks alone cannot keep it out
    blocks = Calibration.fit(scores, times)
    robust = Calibration.fit(scores, times, trim=0.02)
    assert blocks.pvalue(np.array([14.0]))[0] > 5e-3 > 1e-3 > robust.pvalue(np.array([14.0]))[0]
