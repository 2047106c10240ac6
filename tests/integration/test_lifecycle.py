"""The model life cycle on a running pipeline, with real Milvus Lite and real training: a retrained version
scores in shadow, is promoted and rolled back under load with no row lost or stored twice and no pause in
scoring (in-process and with scoring processes); a challenger is judged by its rules; retention deletes old
rows and events and prunes old versions."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from model.schema import row_to_dict
from model.scorer import Scorer
from receiver.challenger import feedback_verdict
from receiver.emit import AnomalyEmitter
from receiver.lifecycle import ModelLifecycle
from receiver.metrics import Metrics
from receiver.pipeline import Pipeline
from receiver.settings import Settings
from storage import MilvusStore
from storage import collection as col
from tests.helpers import T0, make_rows

pytestmark = pytest.mark.integration

STEP_NS = 50_000_000  # make_rows spaces rows 50 ms apart
LOAD_T0 = T0 + 10**12  # the load's rows come after the cold-start rows


def _wait(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


class Load:
    """Offers 40 new rows every 20 ms from a thread; records every uid and when each part was stored."""

    def __init__(self, pipe: Pipeline):
        self.pipe, self.uids, self.stored_at = pipe, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.part = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = make_rows(40, seed=1000 + self.part, start=LOAD_T0 + self.part * 40 * STEP_NS)
            if self.pipe.offer(rows, lambda: self.stored_at.append(time.monotonic())):
                self.uids.extend(r.uid for r in rows)
                self.part += 1
            time.sleep(0.02)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def max_gap_s(self) -> float:
        times = sorted(self.stored_at)
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def _scored_counts(store: MilvusStore, versions: list[str], uids: list[str]) -> dict[str, dict[str, int]]:
    """Per version, how many times each uid is stored as a scored (not reference) row."""
    out = {}
    for v in versions:
        counts = dict.fromkeys(uids, 0)
        for start in range(0, len(uids), 1000):
            part = uids[start : start + 1000]
            found = store.query_rows(
                v, "is_reference == false and uid in {uids}", {"uids": part}, ["uid"], limit=len(part)
            )
            for row in found:
                counts[str(row["uid"])] += 1
        out[v] = counts
    return out


@pytest.fixture
def running(tmp_path):
    """A pipeline past its cold start (its first model trained on 300 rows) with its life cycle."""

    def start(**kw):
        settings = Settings(
            **{
                "data_dir": tmp_path / "data",
                "score_process": False,
                "batch_wait_ms": 10,
                "batch_rows": 200,
                "knn_k": 5,
                "embed_dim": 8,
                "train_epochs": 2,
                "bootstrap_rows": 300,
                "challenger_rows": 10**6,  # judged by hand unless a test lowers it
                "drift_check_s": 3600,
                **kw,
            }
        )
        store = MilvusStore(str(tmp_path / "milvus.db"), timeout_s=30)
        metrics = Metrics()
        pipe = Pipeline(settings, store, AnomalyEmitter(None, version="t"), metrics, "t")
        lc = ModelLifecycle(settings, store, pipe, metrics)
        started.append((store, pipe, lc))
        pipe.start()
        lc.start()
        assert pipe.offer(make_rows(400, seed=1))
        assert _wait(lambda: pipe.state == "scoring" and pipe.wait_idle(0.5), 180), pipe.status()
        return store, pipe, lc, metrics

    started: list = []
    yield start
    for store, pipe, lc in started:
        lc.stop()
        pipe.stop(10)
        store.close()


def _challenger(lc: ModelLifecycle, timeout_s: float = 180) -> str:
    assert _wait(lambda: lc.status()["challenger"] is not None, timeout_s), lc.status()
    return lc.status()["challenger"]["version"]


@pytest.mark.parametrize("score_process", [False, True], ids=["in-process", "scoring-process"])
def test_promotion_and_rollback_under_load_lose_and_duplicate_no_row(running, score_process):
    store, pipe, lc, _ = running(score_process=score_process)
    v1 = lc.status()["current"]
    with Load(pipe) as load:
        time.sleep(1.0)
        job = lc.retrain("test")
        assert job.startswith("retrain-")
        with pytest.raises(RuntimeError):
            lc.retrain("again")  # one at a time
        v2 = _challenger(lc)
        time.sleep(1.0)  # the challenger scores in shadow
        lc.promote(v2)
        promote_switch_s, drain_s = lc.last_switch_s, lc.last_drain_s
        assert lc.status()["current"] == v2
        states = {m["version"]: m["state"] for m in lc.list_models()}
        assert states == {v1: "retired", v2: "current"}
        time.sleep(1.5)
        assert lc.rollback() == v1
        rollback_switch_s = lc.last_switch_s
        time.sleep(1.0)
    assert pipe.wait_idle(60)
    assert lc.status()["current"] == v1 and (pipe.settings.models_dir / "CURRENT").read_text() == v1
    assert {m["version"]: m["state"] for m in lc.list_models()} == {v1: "current", v2: "retired"}

    counts = _scored_counts(store, [v1, v2], load.uids)
    total = {u: counts[v1][u] + counts[v2][u] for u in load.uids}
    lost = [u for u, n in total.items() if n == 0]
    twice = [u for u, n in total.items() if n > 1]
    assert not lost and not twice, (len(lost), len(twice))
    by_v2 = [i for i, u in enumerate(load.uids) if counts[v2][u]]
    assert by_v2, "the promoted version scored no row"
    # One contiguous run of rows went to the new version: the switch happened between batches, both ways.
    assert by_v2 == list(range(by_v2[0], by_v2[-1] + 1))
    assert by_v2[0] > 0 and by_v2[-1] < len(load.uids) - 1
    gap = load.max_gap_s()
    print(
        f"\n{len(load.uids)} rows under load; {len(by_v2)} scored by {v2}; "
        f"switch {promote_switch_s * 1000:.1f} ms"
        f" (promotion, after {drain_s * 1000:.0f} ms finishing its shadow batches), "
        f"{rollback_switch_s * 1000:.1f} ms (rollback); longest pause between stored parts {gap:.2f}s"
    )
    assert promote_switch_s < 0.5 and rollback_switch_s < 0.5
    assert gap < 3.0  # no scoring gap: parts kept being stored through both switches

    with pytest.raises(LookupError):
        lc.rollback("v-no-such-version")
    with pytest.raises(RuntimeError):
        lc.promote(v1)  # already current


def test_a_challenger_is_judged_by_its_rules(running):
    store, pipe, lc, metrics = running(challenger_rows=400)
    v1 = lc.status()["current"]
    with Load(pipe):
        lc.retrain("rules")
        v2 = _challenger(lc)
        assert _wait(lambda: lc.status()["last_retrain"]["state"] in {"promoted", "discarded"}, 120)
    job = lc.status()["last_retrain"]
    verdict = [e for e in lc.registry.read()["events"] if e["version"] == v2]
    if job["state"] == "promoted":
        assert lc.status()["current"] == v2
        shadow = {m["version"]: m for m in lc.list_models()}[v2]["quality"]["shadow"]
        assert shadow["promote"] and shadow["rows"] >= 400
        assert metrics.registry.get_sample_value("otad_model_retrains_total", {"outcome": "promoted"}) == 1
    else:  # discarded with its reason; nothing of it is left
        assert lc.status()["current"] == v1 and job["why"]
        assert not (pipe.settings.models_dir / v2).exists() and not store.has_rows_collection(v2)
        assert metrics.registry.get_sample_value("otad_model_retrains_total", {"outcome": "discarded"}) == 1
    assert verdict and verdict[-1]["kind"] == job["state"]
    print(f"\nchallenger {v2}: {job['state']} ({job.get('why', '')})")


def _anomaly(uid: str, time_ms: int, version: str) -> dict:
    return {
        "uid": uid,
        "signal": "logs",
        "service": "a",
        "class_uid": 2004,
        "time_ms": time_ms,
        "source_uid": uid,
        "detected_ms": time_ms,
        "score": 90.0,
        "threshold": 50.0,
        "model_version": version,
        "explanation": "x",
        "event": {"uid": uid},
    }


def test_retention_deletes_old_rows_and_events_and_prunes_old_versions(running):
    store, pipe, lc, metrics = running(models_keep=2)  # retention set below: the ticker uses the real clock
    v1 = lc.status()["current"]
    versions = [v1]
    for i in range(2):  # v1 -> v2 -> v3: v1 is beyond OTAD_MODELS_KEEP=2
        assert pipe.offer(make_rows(300, seed=50 + i, start=LOAD_T0 + i * 10**12))
        assert pipe.wait_idle(60)
        lc.retrain(f"round {i}")
        versions.append(_challenger(lc))
        lc.promote(versions[-1])
    v1, v2, v3 = versions
    assert not (pipe.settings.models_dir / v1).exists() and not store.has_rows_collection(v1)
    assert {m["version"]: m["state"] for m in lc.list_models()} == {v2: "retired", v3: "current"}
    with pytest.raises(LookupError):
        lc.rollback(v1)  # pruned: no longer possible

    # v3 scores rows from long ago (a replay) and from now; a day later only the recent ones remain.
    late = LOAD_T0 + 2 * 10**12
    assert pipe.offer(make_rows(200, seed=70, start=T0 + 10**9) + make_rows(200, seed=71, start=late))
    assert pipe.wait_idle(60)
    now_ms = late // 1_000_000 + 86_400_000 - 60_000  # the cut falls a minute before the recent rows
    old = _anomaly("old-event", T0 // 1_000_000, v3)
    new = _anomaly("new-event", now_ms - 1000, v3)
    store.upsert_anomalies([old, new])
    before = {v: store.count_rows(v) for v in (v2, v3)}
    lc.settings.retention_days = 1
    deleted = lc.apply_retention(now_ms=now_ms)
    assert deleted["anomalies"] >= 1 and deleted["rows"] > 0
    assert store.existing_anomaly_uids(["old-event", "new-event"]) == {"new-event"}
    kept = store.query_rows(v3, "is_reference == false", output_fields=["time_ms"], limit=10_000)
    assert len(kept) == 200 and min(r["time_ms"] for r in kept) >= now_ms - 86_400_000
    assert store.count_rows(v2) < before[v2]  # v2's scored rows (round 1) are older than a day too
    assert store.count_rows(v3) < before[v3]
    refs = store.query_rows(v3, "is_reference == true", output_fields=["uid"], limit=10)
    assert refs, "reference rows stay with their version"
    assert (
        metrics.registry.get_sample_value("otad_retention_deleted_total", {"kind": "rows"}) == deleted["rows"]
    )
    assert col.rows_collection_name(v2) in store._call("list", lambda c: c.list_collections())


class MarkedNormal:
    """The part of receiver/feedback.py's Feedback the life cycle reads: active MarkNormal entries."""

    def __init__(self, rows):
        self.rows = rows

    def entries(self, *, kind: str = "", **_):
        return (
            [{"kind": "normal", "record": {"row": row_to_dict(r)}} for r in self.rows]
            if kind == "normal"
            else []
        )


def test_rows_marked_normal_train_a_retrain_and_judge_its_challenger(running):
    store, pipe, lc, _ = running()
    odd = [
        replace(
            r, uid=f"odd-{i}", fields={**r.fields, "message": "kernel panic at 0xdeadbeef", "duration": 9e5}
        )
        for i, r in enumerate(make_rows(20, seed=9, start=LOAD_T0))
    ]
    v1 = lc.registry.current()
    # v1 never saw such rows: it alerts on them; a version that does so more than the current one is refused.
    assert int(Scorer(lc._load(v1), learn=False).score(odd).is_anomaly.sum()) >= 10
    loud = feedback_verdict(lambda: lc._load(v1), lambda: _quiet(lc._load(v1)), odd)
    assert loud is not None and not loud[0] and "marked normal" in loud[1]
    assert feedback_verdict(lambda: lc._load(v1), lambda: lc._load(v1), []) is None
    assert pipe.offer(make_rows(300, seed=60, start=LOAD_T0 + 10**9)) and pipe.wait_idle(60)
    lc.feedback = MarkedNormal(odd)  # an operator said these are normal
    lc.retrain("feedback")
    v2 = _challenger(lc)
    refs = store.query_rows(v2, "is_reference == true and uid in {u}", {"u": [r.uid for r in odd]}, ["uid"])
    assert len(refs) == len(odd)  # trained on
    verdict = lc.feedback_check(lc._challenger.mv)
    assert verdict is not None and verdict[0], verdict  # no louder on them than v1
    print(f"\nfeedback rule: {verdict[1]}")


def _quiet(mv):
    """A version that alerts on nothing (every p-value threshold at 0)."""
    mv.ensemble.alert_pvalue = 1e-300
    mv.ensemble.false_alerts_per_hour = 1e-300
    return mv


def test_drift_turns_on_and_starts_a_retrain_with_auto_retrain(running):
    store, pipe, lc, metrics = running(auto_retrain=True, drift_window_rows=200, drift_checks=1)
    assert pipe.offer(make_rows(200, seed=80, start=LOAD_T0)) and pipe.wait_idle(60)
    flat = lc.check_drift()
    assert flat is not None and flat["score"] < 0.2 and lc.status()["last_retrain"] is None, flat
    changed = [
        replace(r, service="c", fields={**r.fields, "message": f"cache miss for key {i}", "duration": 400.0})
        for i, r in enumerate(make_rows(200, seed=81, start=LOAD_T0 + 10**10))
    ]
    assert pipe.offer(changed) and pipe.wait_idle(60)
    moved = lc.check_drift()
    assert moved is not None and moved["score"] > 0.2, moved
    assert lc.status()["drift"]["active"] and metrics.registry.get_sample_value("otad_drift_active") == 1
    job = lc.status()["last_retrain"]
    assert job is not None and job["reason"].startswith("drift:"), job
    print(f"\ndrift check: {flat['score']:.2f} -> {moved['score']:.2f}; {job['reason']}")
