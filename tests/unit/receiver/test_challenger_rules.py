"""The challenger's label-free promotion rules (receiver/challenger.py `judge`), and a stuck challenger."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np

from receiver import challenger
from receiver.challenger import judge


def test_challenger_rules():
    rng = np.random.default_rng(5)
    champ = rng.uniform(0, 30, 4000)
    good = judge(
        champ,
        rng.uniform(0, 30, 4000),
        20,
        25,
        factor=3.0,
        champion_separation=1.4,
        challenger_separation=1.0,
    )
    assert good.promote, good.summary
    noisy = judge(
        champ,
        rng.uniform(0, 30, 4000),
        4,
        200,
        factor=3.0,
        champion_separation=1.0,
        challenger_separation=1.0,
    )
    assert not noisy.promote and "alerts" in noisy.reasons[0]
    wandering = np.concatenate([rng.uniform(0, 10, 2000), rng.uniform(20, 30, 2000)])
    unstable = judge(champ, wandering, 4, 4, factor=3.0, champion_separation=1.0, challenger_separation=1.0)
    assert not unstable.promote and "unstable" in unstable.reasons[0]
    far = judge(champ, champ, 4, 4, factor=3.0, champion_separation=1.0, challenger_separation=2.0)
    assert not far.promote and "reference" in far.reasons[0]


class _SlowScorer:
    """A challenger's scorer that hangs (a stuck scoring process)."""

    def __init__(self):
        self.release = threading.Event()

    def score(self, rows):
        self.release.wait(10)
        raise RuntimeError("released")


def test_a_stuck_challenger_is_given_up_and_never_stalls_the_pipeline(monkeypatch):
    monkeypatch.setattr(challenger, "SHADOW_WAIT_S", 0.2)
    monkeypatch.setattr(challenger, "close_scorer", lambda s: None)
    decided = threading.Event()
    scorer = _SlowScorer()
    ch = challenger.Challenger(
        SimpleNamespace(version="v2"), scorer, np.zeros((0, 4)), 10**6, lambda c: decided.set()
    )
    batch = SimpleNamespace(scores=np.zeros(2), is_anomaly=np.zeros(2, bool), embeddings=np.zeros((2, 4)))
    t0 = time.monotonic()
    for _ in range(4):
        ch.shadow([object(), object()], batch)
    assert time.monotonic() - t0 < 2.0  # the pipeline waited SHADOW_WAIT_S once, not for the stuck scorer
    assert decided.wait(2) and ch.closed and "shadow" in (ch.error or "")
    scorer.release.set()
    ch.close()
