"""A new kind of record (a message no trained template fits, an operation training never saw) warms up: one
notice; its first row is judged like any row (a new kind of message can be the incident), the rest of its
warm-up rank but do not alert on their novelty until it has history of its own; a failed row alerts at once;
the counts survive a restart."""

from __future__ import annotations

import random

import numpy as np

from model.detectors import ensemble_from_state
from model.detectors.base import Frame
from model.detectors.ensemble import Ensemble
from model.detectors.kinds import NOTICES_PER_BATCH, NOTICES_PER_SOURCE, WARMUP_ROWS
from model.detectors.pattern import PatternFrequency
from model.features import OOV, FeatureContract
from model.schema import Row
from tests.helpers import log_frame as frame

T0 = 1_800_000_000 * 10**9
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike oscar".split()


def report(rng: random.Random) -> str:
    return f"exported report {rng.choice(WORDS)}-{rng.choice(WORDS)} for team {rng.choice(WORDS)}"


def trained() -> Ensemble:
    # p < 1e-2 alerts (a slow stream's cap), so a never-seen pattern's novelty alone would alert
    return Ensemble([PatternFrequency()], alert_pvalue=1e-2, false_alerts_per_hour=1e6).fit(
        frame([None] * 2000)
    )


def stream(seed: int, n: int, share: float = 0.1) -> list[str | None]:
    rng = random.Random(seed)
    return [report(rng) if rng.random() < share else None for _ in range(n)]


def test_a_new_kind_of_message_warms_up_with_one_notice_then_is_judged() -> None:
    ens, msgs = trained(), stream(1, 3000)
    new = np.asarray([m is not None for m in msgs])
    notices, alert, warm, p = [], [], [], []
    for a in range(0, len(msgs), 100):
        result = ens.score(frame(msgs[a : a + 100], start=2000 + a))
        notices += result.notices
        alert.append(result.alert)
        warm.append(result.warm)
        p.append(result.combined)
    alert_all, warm_all, p_all = np.concatenate(alert), np.concatenate(warm), np.concatenate(p)
    assert [n.entity for n in notices] == ["kind"]
    assert notices[0].text.startswith("new message in logs of 'shop': 'exported report ")
    # its first rows are as novel as ever (they rank at the top); only the very first alerts: one event
    assert (p_all[new][:5] <= 1e-2).all()
    assert np.flatnonzero(alert_all).tolist() == [np.flatnonzero(new)[0]]
    # the rest warm while fewer than WARMUP_ROWS rows were seen before the batch; then judged as any row
    seen_before = np.cumsum(new) - new
    batch_start = np.repeat(seen_before[::100], 100)[: len(msgs)]
    expected = (batch_start < WARMUP_ROWS) & (seen_before > 0)
    np.testing.assert_array_equal(warm_all[new], expected[new])
    assert warm_all[new].sum() >= WARMUP_ROWS and not warm_all[new][-50:].any()
    # it was learned while it warmed up: a tenth of traffic is ordinary now
    assert (p_all[new][-50:] > 0.05).all()


def test_the_same_kind_alerts_without_the_warm_up() -> None:
    ens, msgs = trained(), stream(1, 300)
    ens.kinds.warmup_rows = 0
    alerts = sum(int(ens.score(frame(msgs[a : a + 100], start=2000 + a)).alert.sum()) for a in (0, 100, 200))
    assert alerts >= 5  # what the warm-up spares a user (it lets one of them through)


def test_a_new_kind_of_failure_alerts_at_once() -> None:
    ens = trained()
    msgs = [None] * 95 + ["disk controller reset on volume data"] * 5
    result = ens.score(frame(msgs, start=2000, severity=4))
    assert result.alert[95:].all() and not result.warm[95:].any()
    assert not result.notices


def test_a_kind_the_training_rows_hold_is_not_new() -> None:
    rare = [
        "job nightly done on node kilo",
        "job weekly done on node lima",
    ]  # too rare for a trained template
    ens = Ensemble([PatternFrequency()], alert_pvalue=1e-2).fit(frame([None] * 1998 + rare))
    result = ens.score(frame([None] * 99 + ["job hourly done on node mike"], start=2000))
    assert not result.notices
    assert result.warm[-1] == (
        len(rare) < WARMUP_ROWS
    )  # known, but still warming up: two rows are no history


def test_a_new_span_operation_is_a_kind_too() -> None:
    contract = FeatureContract(categorical=["trace.span.operation"])
    n = 100
    rows = [Row(f"s{i}", "traces", T0 + i * 10**9, "api", 6003, 1, 1, 1) for i in range(n)]
    derived = [
        {"signal": "traces", "trace.span.operation": "GET /new" if i >= 90 else "GET /"} for i in range(n)
    ]
    cat = np.where(np.arange(n) >= 90, OOV, 2).reshape(n, 1)
    ens = Ensemble([PatternFrequency()], alert_pvalue=1e-2)
    warm, notices = ens.kinds.warm(Frame(rows, derived, np.zeros((n, 0), np.float32), cat, contract))
    assert warm[91:].all() and not warm[:91].any()  # its first span is judged as any span
    assert [n.text.split(":")[0] for n in notices] == ["new span operation in traces of 'api'"]


def test_warm_up_counts_survive_a_restart_and_notices_are_bounded() -> None:
    ens, msgs = trained(), stream(3, 200)
    ens.score(frame(msgs[:100], start=2000))
    twin = ensemble_from_state(*ens.state())
    assert twin.kinds.seen == ens.kinds.seen
    # one grouping of unseen messages, the pattern member's, before and after the restart
    assert ens.kinds.templates is ens.members[0].new_templates
    assert twin.kinds.templates is twin.members[0].new_templates
    later = frame(msgs[100:], start=2100)
    a, b = ens.score(later), twin.score(later)
    np.testing.assert_array_equal(a.warm, b.warm)
    assert not b.notices  # the kind was told before the restart
    # many new kinds in one batch: a line each up to a bound, then one line for the rest
    many = [" ".join(WORDS[:k]) for k in range(1, len(WORDS) + 1)]  # each length its own kind
    result = twin.score(frame(many, start=2300))
    assert len(result.notices) == NOTICES_PER_BATCH + 1
    assert result.notices[-1].text.startswith(f"... and {len(many) - NOTICES_PER_BATCH} more")


def test_a_source_with_endless_new_kinds_is_counted_not_logged_past_its_budget() -> None:
    contract = FeatureContract(categorical=["trace.span.operation"])
    ens, notices = Ensemble([PatternFrequency()]), []
    for b in range(6):  # span names with an id in each: every span a new operation
        rows = [
            Row(f"s{b}-{i}", "traces", T0 + (b * 30 + i) * 10**9, "api", 6003, 1, 1, 1) for i in range(30)
        ]
        derived = [
            {"signal": "traces", "trace.span.operation": f"GET /users/{b * 30 + i}"} for i in range(30)
        ]
        cat = np.full((30, 1), OOV)
        notices += ens.kinds.warm(Frame(rows, derived, np.zeros((30, 0), np.float32), cat, contract))[1]
    lines = [n.text for n in notices if n.text]
    assert sum(n.n for n in notices) == 180  # otad_new_kinds_total counts every one
    assert len(lines) <= NOTICES_PER_SOURCE + 6  # one line each up to the budget (a summary line per batch)
    assert "later ones are counted in otad_new_kinds_total, not logged" in lines[-1]
    twin = ensemble_from_state(*ens.state())
    assert twin.kinds.told == ens.kinds.told  # the budget is not reset by a restart
