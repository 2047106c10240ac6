"""Drift statistics (PSI, KS / chi-square with Benjamini-Hochberg, embedding ratio) and the hysteresis
switch."""

from __future__ import annotations

import numpy as np
import pytest

from model.drift import (
    Hysteresis,
    Window,
    benjamini_hochberg,
    chi2_pvalue,
    compare,
    embedding_drift,
    ks_pvalue,
    mmd,
    psi,
    psi_categorical,
)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert psi(ref, rng.normal(size=5000)) < 0.02
    small, large = psi(ref, rng.normal(0.3, 1, 5000)), psi(ref, rng.normal(1.5, 1, 5000))
    assert 0.05 < small < large and large > 1.0
    assert psi(np.zeros(100), np.zeros(100)) == pytest.approx(0.0)


def test_categorical_psi_and_chi_square():
    rng = np.random.default_rng(1)
    ref = rng.choice(4, 3000, p=[0.4, 0.3, 0.2, 0.1])
    same = rng.choice(4, 3000, p=[0.4, 0.3, 0.2, 0.1])
    moved = rng.choice(5, 3000, p=[0.1, 0.2, 0.2, 0.2, 0.3])  # a new category too
    assert psi_categorical(ref, same) < 0.02 and chi2_pvalue(ref, same) > 0.001
    assert psi_categorical(ref, moved) > 0.5 and chi2_pvalue(ref, moved) < 1e-10
    assert chi2_pvalue(np.ones(10), np.ones(10)) == 1.0


def test_ks_of_constant_columns():
    assert ks_pvalue(np.zeros(50), np.zeros(50)) == 1.0
    assert ks_pvalue(np.zeros(50), np.ones(50)) < 1e-6


def test_benjamini_hochberg_step_up():
    # The textbook example: with alpha 0.05 and m = 10, the first two are rejected (p_(2)=0.008 <= 0.01).
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True] + [False] * 8
    # Step-up: a p-value above its own line is rejected when a larger one passes its line.
    assert benjamini_hochberg(np.array([0.02, 0.03]), 0.05).tolist() == [True, True]
    assert benjamini_hochberg(np.array([]), 0.05).tolist() == []
    # Under the null the false-discovery rate is controlled: few rejections among 1000 uniform p-values.
    null = np.random.default_rng(2).uniform(size=1000)
    assert benjamini_hochberg(null, 0.05).sum() <= 5


def test_embedding_ratio_is_about_one_without_drift_and_larger_with_it():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(8, 16))
    ref = centres[rng.integers(0, 8, 2000)] + 0.1 * rng.normal(size=(2000, 16))
    same = centres[rng.integers(0, 8, 1000)] + 0.1 * rng.normal(size=(1000, 16))
    other = rng.normal(size=(4, 16))
    moved = other[rng.integers(0, 4, 1000)] + 0.1 * rng.normal(size=(1000, 16))
    assert 0.8 < embedding_drift(ref, same) < 1.25
    assert embedding_drift(ref, moved) > 3.0


def test_mmd_is_about_zero_for_one_distribution_and_sees_a_changed_mix():
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(4, 16))

    def sample(n, p):
        return centres[rng.choice(4, n, p=p)] + 0.2 * rng.normal(size=(n, 16))

    ref = sample(1000, [0.25] * 4)
    assert abs(mmd(ref, sample(1000, [0.25] * 4))) < 0.005
    # The same clusters in another mix: nearest-neighbour distances barely change, the MMD does.
    assert mmd(ref, sample(1000, [0.7, 0.1, 0.1, 0.1])) > 0.02


def _window(rng, n, shift=0.0, cats=(0.5, 0.5)):
    num = rng.normal(size=(n, 6)).astype(np.float32)
    num[:, :3] += shift  # half the numeric features move
    cat = np.stack([rng.choice(len(cats), n, p=cats), rng.integers(0, 3, n)], axis=1)
    return Window(num, cat, rng.normal(size=(n, 8)).astype(np.float32))


def test_compare_flags_the_moved_features_only():
    rng = np.random.default_rng(4)
    ref = _window(rng, 3000)
    names = [f"x{i}" for i in range(6)]
    flat = compare(ref, _window(rng, 3000), names, ["c0", "c1"])
    assert flat.feature_share == 0.0 and flat.drifted == []
    moved = compare(ref, _window(rng, 3000, shift=1.0, cats=(0.1, 0.9)), names, ["c0", "c1"])
    assert set(moved.drifted) == {"x0", "x1", "x2", "c0"}
    assert moved.feature_share == pytest.approx(4 / 8) and moved.score == moved.feature_share


def test_hysteresis_needs_consecutive_checks_to_turn_on_and_a_low_value_to_turn_off():
    h = Hysteresis(high=0.3, low=0.1, checks=3)
    assert [h.update(v) for v in (0.5, 0.5, 0.0, 0.5, 0.5)] == [False] * 5  # the streak broke
    assert not h.active
    assert h.update(0.5) and h.active  # third in a row
    assert not h.update(0.5)  # turns on once
    assert [h.update(v) for v in (0.2, 0.15, 0.12)] == [
        False
    ] * 3 and h.active  # between low and high: stays on
    h.update(0.05)
    assert not h.active
    with pytest.raises(ValueError):
        Hysteresis(high=0.1, low=0.3)
