"""Pattern frequency on messages no trained template fits: a new kind of message with a variable word in it is
one pattern (`NewTemplates`), so it stops looking new once it is common; its template survives a restart."""

from __future__ import annotations

import random

import numpy as np

from model.detectors.pattern import PatternFrequency
from model.templates import NewTemplates
from tests.helpers import log_frame as frame

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike oscar papa romeo".split()
)


def report(rng: random.Random) -> str:
    return f"exported report {rng.choice(WORDS)}-{rng.choice(WORDS)} for team {rng.choice(WORDS)}"


def test_a_new_kind_of_message_with_a_variable_word_is_one_template() -> None:
    rng = random.Random(1)
    new = NewTemplates()
    keys = {new.key(report(rng)) for _ in range(200)}
    assert len(keys) == 1
    assert new.templates[keys.pop()] == ["exported", "report", "<*>", "for", "team", "<*>"]
    other = new.key("disk full on volume root")
    assert other != new.key(report(rng)) and new.key("disk full on volume data") == other
    # the same messages in the same order give the same keys (no set or hash order decides a tie)
    mixed = [
        report(random.Random(k)) if k % 3 else f"job {WORDS[k % 7]} done on node {WORDS[k % 5]}"
        for k in range(60)
    ]
    first, second = NewTemplates(), NewTemplates()
    assert [first.key(m) for m in mixed] == [second.key(m) for m in mixed]
    # bounded: the least recently matched template is forgotten first
    small = NewTemplates(max_templates=2)
    a, b = small.key("alpha one two"), small.key("bravo three four five")
    small.key("alpha one two")
    small.key("charlie six seven eight nine")
    assert a in small.templates and b not in small.templates and len(small.templates) == 2
    assert NewTemplates.from_state(new.state()).templates == new.templates


def test_a_recurring_new_kind_stops_being_new_and_the_pattern_survives_a_restart() -> None:
    rng = random.Random(2)
    det = PatternFrequency().fit(frame([None] * 2000))
    stream = [report(rng) if rng.random() < 0.1 else None for _ in range(3000)]
    p = np.ones(len(stream))
    for a in range(0, len(stream), 100):
        batch = frame(stream[a : a + 100], start=2000 + a)
        p[a : a + 100] = det.pvalues(batch, det.score_samples(batch))
        det.learn(batch, np.ones(len(batch), dtype=bool))
    new = np.asarray([m is not None for m in stream])
    assert p[new][0] <= 1e-3  # the first of its kind is new
    # later it is one pattern at a tenth of traffic, not a never-seen message each time (each report differs)
    assert (p[new][-100:] > 0.05).all()
    last = frame(stream[-100:], start=4900)
    i = next(j for j, m in enumerate(stream[-100:]) if m is not None)
    clause = det.explain(last, i, float(det.score_samples(last)[i]), 0.5)
    assert clause.startswith('a message like "exported report <*> for team <*>" is rare for shop: '), clause
    values, arrays = det.state()
    restarted = PatternFrequency.from_state(values, arrays)
    batch = frame([report(rng) for _ in range(20)], start=5000)
    np.testing.assert_allclose(restarted.score_samples(batch), det.score_samples(batch))
    assert (restarted.pvalues(batch, restarted.score_samples(batch)) > 0.05).all()
