"""Storage faults in the pipeline, on real Milvus Lite: a row Milvus refuses goes to the dead-letter file and
never blocks the rows behind it; an outage is retried, not dead-lettered, and shows in /readyz; every row is
stored once across the backlog and the model's rows collection, also when training starts from rows an earlier
run staged."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from model.train import TrainConfig
from model.version import fit_version
from receiver.emit import AnomalyEmitter
from receiver.metrics import Metrics
from receiver.pipeline import Pipeline
from receiver.settings import Settings
from receiver.writer import backlog_records
from storage import MilvusStore
from tests.helpers import T0, make_rows, uid_counts

pytestmark = pytest.mark.integration


def _settings(tmp_path, **kw) -> Settings:
    base = dict(
        data_dir=tmp_path / "data",
        score_process=False,
        batch_wait_ms=10,
        knn_k=5,
        embed_dim=8,
        train_epochs=1,
        bootstrap_rows=100_000,
    )
    return Settings(**{**base, **kw})


def _wait(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture
def store(tmp_path):
    s = MilvusStore(str(tmp_path / "milvus.db"), timeout_s=30)
    yield s
    s.close()


def _poison(rows):
    """A row whose uid cannot fit the VARCHAR(64) key (the receiver bounds it at entry; this one bypasses that)."""
    return replace(rows[0], uid="p" * 100)


def test_a_row_milvus_refuses_is_dead_lettered_and_the_rest_are_stored(tmp_path, store):
    metrics = Metrics()
    pipe = Pipeline(_settings(tmp_path), store, AnomalyEmitter(None, version="t"), metrics, "t")
    rows = make_rows(300, seed=1)
    batch = rows[:150] + [_poison(rows)] + rows[150:]
    stored = threading.Event()
    pipe.start()
    try:
        assert pipe.offer(batch, stored.set)
        assert stored.wait(30), "the spool callback never ran: the batch was blocked by one bad row"
        assert store.count_backlog() == 300
        later = make_rows(100, seed=2, start=T0 + 10**12)
        done = threading.Event()
        assert pipe.offer(later, done.set) and done.wait(30)
        assert store.count_backlog() == 400
    finally:
        pipe.stop(10)
    letters = pipe.writer.dead_letters.read()
    assert [d["item"]["uid"] for d in letters] == ["p" * 100]
    assert letters[0]["stage"] == "backlog" and "length" in letters[0]["error"]
    assert letters[0]["item"]["time_unix_nano"] == rows[0].time_unix_nano  # the whole row is kept
    assert metrics.dead_lettered.labels("backlog", "ParamError")._value.get() == 1
    assert pipe.status()["dead_lettered_rows"] == 1


def test_a_refused_row_among_scored_rows_does_not_block_them(tmp_path, store):
    mv = fit_version(make_rows(400), k=5, embed_dim=8, train_config=TrainConfig(epochs=1, batch_size=128))
    pipe = Pipeline(_settings(tmp_path), store, AnomalyEmitter(None, version="t"), Metrics(), "t", mv)
    rows = make_rows(200, seed=3, start=T0 + 10**12)
    stored = threading.Event()
    pipe.start()
    try:
        assert pipe.offer([_poison(rows), *rows[1:]], stored.set)
        assert stored.wait(30)
        assert store.count_rows(mv.version) == 199
    finally:
        pipe.stop(10)
    assert [(d["stage"], d["item"]["uid"]) for d in pipe.writer.dead_letters.read()] == [("rows", "p" * 100)]


def test_an_outage_is_retried_not_dead_lettered_and_readyz_says_not_ready(tmp_path):
    store = MilvusStore(str(tmp_path / "milvus.db"), timeout_s=30)
    metrics = Metrics()
    pipe = Pipeline(
        _settings(tmp_path, pipeline_stall_s=1.0), store, AnomalyEmitter(None, version="t"), metrics, "t"
    )
    pipe.start()
    try:
        store.close()  # every call now fails as an outage would (retryable)
        assert pipe.offer(make_rows(120, seed=4))
        assert _wait(lambda: not pipe.status()["ready"], 10), pipe.status()
        status = pipe.status()
        assert status["stalled"] and status["queued_rows"] == 120
        assert metrics.queue_rows._value.get() == 120  # the batch being retried is counted as waiting
        assert metrics.errors.labels("storage")._value.get() >= 1
    finally:
        pipe.stop(0)
    assert pipe.writer.dead_letters.read() == [] and pipe.writer.dead_lettered == 0


def test_rows_staged_during_training_are_scored_and_each_row_is_stored_once(tmp_path, store):
    pipe = Pipeline(
        _settings(tmp_path, bootstrap_rows=300), store, AnomalyEmitter(None, version="t"), Metrics(), "t"
    )
    first, second = make_rows(300, seed=5), make_rows(200, seed=6, start=T0 + 10**12)
    pipe.start()
    try:
        assert pipe.offer(first)
        assert _wait(lambda: pipe.state == "training", 30)
        assert pipe.offer(second)  # staged while the model trains
        assert _wait(lambda: pipe.state == "scoring", 120), pipe.status()
        assert _wait(lambda: store.count_backlog() == 0, 60), store.count_backlog()
        assert pipe.wait_idle(30)
    finally:
        pipe.stop(10)
    counts = uid_counts(store, [r.uid for r in first + second])
    assert sorted(set(counts.values())) == [1], {
        c: sum(1 for v in counts.values() if v == c) for c in counts.values()
    }
    version = pipe._scorer.mv.version
    refs = store.query_rows(version, "is_reference == {r}", {"r": True}, output_fields=["uid"], limit=1000)
    assert {r.uid for r in first} <= {r["uid"] for r in refs}  # rows staged before training read the backlog


def test_training_starts_from_rows_an_earlier_run_staged_and_drops_an_unpromoted_version(tmp_path, store):
    settings = _settings(tmp_path, bootstrap_rows=300)
    rows = make_rows(320, seed=7)
    store.upsert_backlog(backlog_records(rows))  # what a run that crashed before training left
    # A version saved by a run that crashed before promoting it, with copies of the staged rows.
    stale = fit_version(rows[:200], k=5, embed_dim=8, train_config=TrainConfig(epochs=1, batch_size=128))
    stale.save(settings.models_dir, promote=False)
    store.ensure_rows_collection(stale.version, 8)
    store.upsert_rows(
        stale.version,
        [
            {
                "uid": r.uid,
                "signal": "logs",
                "service": r.service,
                "class_uid": 1,
                "time_ms": r.time_ms,
                "trace_id": "",
                "score": 0.0,
                "is_anomaly": False,
                "is_reference": True,
                "row": {},
                "embedding": [1.0] * 8,
            }
            for r in rows[:200]
        ],
    )
    pipe = Pipeline(settings, store, AnomalyEmitter(None, version="t"), Metrics(), "t")
    assert not (settings.models_dir / stale.version).exists()
    pipe.start()
    try:
        assert pipe.state == "training"  # at start, with no new row
        assert _wait(lambda: pipe.state == "scoring", 120), pipe.status()
        assert _wait(lambda: store.count_backlog() == 0, 60)
    finally:
        pipe.stop(10)
    counts = uid_counts(store, [r.uid for r in rows])
    assert set(counts.values()) == {1}
