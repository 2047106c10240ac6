"""The challenger's label-free promotion rules (receiver/challenger.py `judge`)."""

from __future__ import annotations

import numpy as np

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
