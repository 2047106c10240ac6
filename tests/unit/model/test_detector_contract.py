"""The detector API contract, run over every ensemble member (model.detectors.REGISTRY)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.detectors import REGISTRY, Frame, member_class, new_member
from model.detectors.knn import detection_vectors
from model.encoder import Embedder
from model.train import TrainConfig
from model.version import fit_version
from tests.helpers import make_rows


@pytest.fixture(scope="module")
def frames() -> tuple[Frame, Frame]:
    """A small trained version's contract and encoder; the rows split in time into a fit and a score half."""
    rows = sorted(make_rows(3000, seed=3), key=lambda r: r.time_unix_nano)
    mv = fit_version(rows[:1500], detectors=("pattern",), train_config=TrainConfig(epochs=1))
    tracker, matcher = mv.contract.new_tracker(), mv.contract.matcher()
    derived = mv.contract.derive_online(rows, tracker, matcher)
    num, cat = mv.contract.encode(derived)
    emb = Embedder(mv.model).embed(num, cat)
    whole = Frame(rows, derived, num, cat, mv.contract, detection_vectors(mv.contract, emb, num, cat))
    return whole.take(np.arange(1500)), whole.take(np.arange(1500, 3000))


def _fresh(frame: Frame) -> Frame:
    return frame.take(np.arange(len(frame)))  # a copy without another member's cache


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_member_contract(name: str, frames: tuple[Frame, Frame]) -> None:
    fit_frame, later = frames
    member = new_member(name)
    assert member.fit(_fresh(fit_frame)) is member
    assert member.name == name and isinstance(member.global_novelty, bool)
    values, arrays = member.state()
    json.dumps(values, allow_nan=False)  # JSON-safe, never pickled
    assert all(not np.asarray(a).dtype.hasobject for a in arrays.values())

    twin = member_class(name).from_state(values, arrays)
    frame_a, frame_b = _fresh(later), _fresh(later)
    raw = member.score_samples(frame_a)
    assert raw.shape == (len(later),) and raw.dtype == np.float64
    p = member.pvalues(frame_a, raw)
    assert p.shape == (len(later),)
    assert ((p > 0) & (p <= 1)).all()
    assert (p[np.isnan(raw)] == 1.0).all()
    muted = member.muted(frame_a)  # rows already reported in an episode: None, or one flag per row
    assert muted is None or (muted.shape == (len(later),) and muted.dtype == np.bool_)
    # The reloaded member answers exactly as the original: state() holds everything that was fitted.
    np.testing.assert_allclose(twin.score_samples(frame_b), raw, equal_nan=True)

    # Ordinary rows are mostly ordinary: a calibrated p-value is rarely tiny on rows like the training ones.
    assert (p < 1e-3).mean() <= 0.02
    for i in np.flatnonzero(~np.isnan(raw))[:5]:
        clause = member.explain(frame_a, int(i), float(raw[i]), float(p[i]))
        assert isinstance(clause, str) and clause and "ctx." not in clause
    member.learn(frame_a, p > 1e-2)  # learning never fails on a scored frame
