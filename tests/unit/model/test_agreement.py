"""Member weights from agreement: measured on recent member evidence, used by the ensemble's combination."""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import average_precision_score

from model.detectors import Frame, build, ensemble_from_state
from model.detectors.agreement import AGREE_FLOOR, AGREE_MIN_ROWS, AGREE_REFRESH, AgreementWeights, agreement
from model.detectors.ensemble import Ensemble, combine
from model.detectors.isolation import IsolationMember
from model.detectors.latency import LatencyDetector
from model.extract import derive
from model.features import FeatureContract
from tests.helpers import make_rows


def _stream(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(p-values (n, 3), labels). Members 0 and 1 read overlapping evidence (a shared latent factor, as two
    detectors reading the same features do) and both see the anomalies (0.5 % of rows); member 2 is calibrated
    noise of its own: one row in a thousand at p <= 1e-3, none of them anomalous."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.005
    shared = rng.normal(size=n) + 4.0 * y
    z = np.stack([shared + rng.normal(size=n), shared + rng.normal(size=n), rng.normal(size=n)], axis=1)
    z[:, :2] /= np.sqrt(2.0)
    return ndtr(-z), y


def test_a_member_that_only_adds_noise_is_weighted_down_and_the_ranking_improves() -> None:
    p, y = _stream()
    applicable = np.ones_like(p, dtype=bool)
    w = agreement(-np.log10(p))
    assert w[2] == AGREE_FLOOR and min(w[0], w[1]) > 0.2
    ap_equal = average_precision_score(y, -np.log10(combine(p, applicable, "cauchy")))
    ap_agree = average_precision_score(y, -np.log10(combine(p, applicable, "cauchy", w)))
    assert ap_agree > ap_equal + 0.03  # equal weights let the noise member's extremes outrank anomalies


def test_a_weighted_down_member_still_alerts_on_extreme_evidence_alone() -> None:
    p, _ = _stream()
    w = agreement(-np.log10(p))
    row = np.array([[0.5, 0.5, 1e-12]])
    for how in ("minp", "cauchy"):
        assert combine(row, np.ones_like(row, dtype=bool), how, w)[0] < 1e-6


def test_members_without_enough_rows_or_variation_keep_weight_one() -> None:
    rng = np.random.default_rng(1)
    ev = -np.log10(rng.random((1000, 4)))
    ev[:, 1] = 0.0  # never anything but ordinary (an error member on a stream without failures)
    ev[AGREE_MIN_ROWS - 10 :, 2] = np.nan  # judged too few rows
    w = agreement(ev)
    assert w[1] == 1.0 and w[2] == 1.0
    assert w[0] == w[3] == AGREE_FLOOR  # independent noise agrees with nothing


def _labelled(seed: int, n: int = 20_000) -> tuple[np.random.Generator, np.ndarray]:
    """A generator for the members' evidence and the labels of n rows, 0.5 % anomalous."""
    rng = np.random.default_rng(seed)
    return rng, rng.random(n) < 0.005


def test_members_reading_the_same_inputs_are_not_witnesses_for_each_other() -> None:
    # Members 0 and 1 read the same features and share their noise; only 1 also sees the anomalies, as does
    # member 2, which reads something else. Declared as one view, 0's shared noise no longer counts for it.
    rng, y = _labelled(0)
    n = len(y)
    shared = rng.normal(size=n)
    z = np.stack(
        [
            (shared + rng.normal(size=n)) / np.sqrt(2.0),
            (shared + rng.normal(size=n)) / np.sqrt(2.0) + 4.0 * y,
            rng.normal(size=n) + 4.0 * y,
        ],
        axis=1,
    )
    p = ndtr(-z)
    alone, views = agreement(-np.log10(p)), agreement(-np.log10(p), ["features", "features", "pattern"])
    assert alone[0] > 2 * AGREE_FLOOR and views[0] == AGREE_FLOOR
    assert views[2] == alone[2]  # member 2's witnesses are the same either way
    ones = np.ones_like(p, dtype=bool)
    for how in ("cauchy", "minp"):
        ap_alone = average_precision_score(y, -np.log10(combine(p, ones, how, alone)))
        assert average_precision_score(y, -np.log10(combine(p, ones, how, views))) > ap_alone


def test_the_default_ensemble_declares_k_nn_and_isolation_one_view() -> None:
    ens = build()
    views = dict(zip(ens.names, ens.views, strict=True))
    assert views["knn"] == views["isolation"]
    assert len(set(views.values())) == len(views) - 1  # every other member is a witness for the rest
    assert ens.combiner == "minp"


def test_a_member_whose_findings_are_its_own_weighs_less_than_its_rank_correlation() -> None:
    # Member 0 follows member 2's ordinary variation (rank correlation 0.4) but its extremes are heavy-tailed
    # noise of its own: few of its p <= 0.01 rows are findings of another member. It is calibrated (its
    # p-values are ranks of its own statistic), so its findings come at the nominal rate: no excess either.
    rng, y = _labelled(1)
    n = len(y)
    base = rng.normal(size=n)
    z = np.stack(
        [0.8 * base + 0.6 * rng.standard_t(3, size=n), rng.normal(size=n) + 4.0 * y, base + 4.0 * y], axis=1
    )
    ev = -np.log10(ndtr(-z))
    ev[:, 0] = -np.log10(1.0 - rankdata(z[:, 0]) / (n + 1.0))
    rho = spearmanr(ev[:, 0], ev[:, 1:].max(axis=1)).statistic
    w = agreement(ev)
    assert rho > 0.3 and w[0] < rho / 2 and w[0] < min(w[1], w[2])


def test_a_member_alone_in_finding_far_more_than_its_calibrated_rate_keeps_its_weight() -> None:
    # Member 0 alone sees the anomalies (5 % of rows), the others are calibrated noise: its findings are
    # nobody else's, but there are five times as many as a calibrated member makes by chance, so most of them
    # are not chance. Calibrated members finding as many rows as chance alone stay near the floor.
    rng = np.random.default_rng(7)
    n = 5_000
    y = rng.random(n) < 0.05
    z = np.stack([rng.normal(size=n) + 5.0 * y, rng.normal(size=n), rng.normal(size=n)], axis=1)
    ev = -np.log10(ndtr(-z))
    w = agreement(ev)
    found = ev[:, 0] >= 2.0
    assert found.mean() > 0.04 and not (ev[found, 1:] >= 2.0).any(axis=1).mean() > 0.05
    assert w[0] > 0.7 and max(w[1], w[2]) < 0.15
    evidence_without = ev.copy()
    evidence_without[y, 0] = -np.log10(ndtr(-rng.normal(size=int(y.sum()))))  # the same member, blind
    assert agreement(evidence_without)[0] < 0.15


def test_weights_are_measured_again_every_refresh_rows_and_survive_a_restart() -> None:
    p, _ = _stream(4000)
    aw = AgreementWeights(3)
    ones = np.ones_like(p, dtype=bool)
    assert (aw.update(p[: AGREE_REFRESH - 1], ones[: AGREE_REFRESH - 1]) == 1.0).all()  # not yet measured
    w = aw.update(p[AGREE_REFRESH - 1 : 2000], ones[AGREE_REFRESH - 1 : 2000])
    assert w[2] == AGREE_FLOOR and min(w[0], w[1]) > 0.2
    values, arrays = aw.state("x.")
    twin = AgreementWeights.from_state(values, arrays, "x.")
    np.testing.assert_array_equal(twin.weights, aw.weights)
    np.testing.assert_array_equal(twin.update(p[2000:], ones[2000:]), aw.update(p[2000:], ones[2000:]))


def _frame(rows, x: np.ndarray) -> Frame:
    n = len(rows)
    derived = [derive(r, None) for r in rows]
    return Frame(rows, derived, x.astype(np.float32), np.zeros((n, 0), np.int64), FeatureContract())


def _ensemble(rows, x: np.ndarray, weighting: str = "agreement") -> Ensemble:
    ens = Ensemble([IsolationMember(), LatencyDetector()], weighting=weighting).fit(
        _frame(rows[:3000], x[:3000])
    )
    for a in range(3000, 5000, 500):
        ens.score(_frame(rows[a : a + 500], x[a : a + 500]))
    return ens


def test_the_ensemble_measures_weights_per_signal_and_keeps_them_across_a_restart() -> None:
    rows = make_rows(6000)
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(6000, 3))
    # The isolation member reads the requests' latencies: its evidence follows the latency member's (loosely:
    # isolation finds both tails, the latency member only slowness). Reading noise, it follows nothing, and
    # neither does the latency member.
    latency = np.log([r.fields["duration"] for r in rows])[:, None]
    both = _ensemble(rows, latency)
    apart = _ensemble(rows, noise)
    assert set(both.agree) == {"logs"}
    assert (both.agree["logs"].weights > 2 * AGREE_FLOOR).all()
    assert (apart.agree["logs"].weights == AGREE_FLOOR).all()
    assert not _ensemble(rows, noise, "equal").agree
    assert both.weights_by_signal() == {
        "logs": {"isolation": both.agree["logs"].weights[0], "latency": both.agree["logs"].weights[1]}
    }
    assert _ensemble(rows, noise, "equal").weights_by_signal() == {}
    twin = ensemble_from_state(*both.state())
    x = latency[5000:]
    a, b = both.score(_frame(rows[5000:], x)), twin.score(_frame(rows[5000:], x))
    np.testing.assert_array_equal(a.combined, b.combined)
    assert twin.weighting == "agreement"
