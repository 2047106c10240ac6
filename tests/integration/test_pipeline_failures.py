"""A batch that scoring fails on is kept: stored unscored in the backlog, counted, and its spool record commits.

Real Milvus Lite and a real model; the failing scorer is a stand-in that raises (a poison batch or a bug
cannot be produced on demand from real data).
"""

from __future__ import annotations

import threading

from model.train import TrainConfig
from model.version import fit_version
from receiver.emit import AnomalyEmitter
from receiver.metrics import Metrics
from receiver.pipeline import Pipeline
from receiver.settings import Settings
from storage import MilvusStore
from tests.helpers import T0, make_rows


class Broken:
    """Fails every batch, as a scorer with a bug would."""

    def __init__(self, mv):
        self.mv = mv
        self.calls = 0

    def score(self, rows, now_unix_nano=None):
        self.calls += 1
        raise ValueError("boom: a bug in featurization")


def test_rows_of_a_batch_that_scoring_fails_on_are_stored_unscored(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", score_process=False, batch_wait_ms=10)
    store = MilvusStore(str(tmp_path / "milvus.db"), timeout_s=30)
    mv = fit_version(make_rows(400), k=5, embed_dim=8, train_config=TrainConfig(epochs=1, batch_size=128))
    metrics = Metrics()
    pipe = Pipeline(settings, store, AnomalyEmitter(None, version="test"), metrics, "test", mv)
    broken = pipe._scorer = Broken(mv)
    stored = threading.Event()
    rows = make_rows(50, seed=5, start=T0 + 10**12)
    pipe.start()
    try:
        assert pipe.offer(rows, stored.set)
        assert stored.wait(30), "the spool callback never ran: the batch's rows were lost"
        assert broken.calls == 1
        assert store.count_backlog() == 50
        assert metrics.rows_unscored._value.get() == 50
    finally:
        pipe.stop(10)
        store.close()
