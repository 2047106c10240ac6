"""The scoring child process: same results as in-process scoring, errors when it dies, clean shutdown."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from model.schema import Row
from model.scorer import Scorer
from model.train import TrainConfig
from model.version import ModelVersion, fit_version
from model.worker import ScoringProcess, ScoringProcessError
from tests.helpers import T0, make_rows

ODD = Row(
    uid="odd",
    signal="logs",
    time_unix_nano=T0 + 10**12 + 5,
    service="a",
    class_uid=4002,
    activity_id=3,
    severity_id=4,
    status_id=2,
    resource={"service.name": "a", "k8s.pod.name": "a-1"},
    fields={
        "message": "GET /items/3 served in 40000 ms",
        "duration": 40_000.0,
        "http_request.url.path": "/items/3",
        "http_request.http_method": "GET",
        "actor.user.name": "user3",
        "src_endpoint.location.country": "KP",
    },
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    mv = fit_version(make_rows(900), k=5, embed_dim=8, train_config=TrainConfig(epochs=2, batch_size=128))
    return mv, mv.save(models)


def start(mv, path, **kw) -> ScoringProcess:
    return ScoringProcess(mv, path, k=5, alert_pvalue=mv.detector.alert_pvalue, max_rows=100_000, **kw)


def test_child_scores_exactly_like_the_in_process_scorer(saved):
    mv, path = saved
    local = Scorer(ModelVersion.load(path, k=5, alert_pvalue=mv.detector.alert_pvalue))
    remote = start(mv, path)
    try:
        # Several batches in a row: the online state (context tracker, learned reference rows) must evolve alike.
        for b in range(3):
            batch = make_rows(300, seed=10 + b, start=T0 + 10**12 + b * 10**11) + ([ODD] if b == 1 else [])
            now = T0 + 2 * 10**12 + b
            a, r = local.score(batch, now), remote.score(batch, now)
            np.testing.assert_allclose(r.raw, a.raw, rtol=0, atol=1e-9)
            np.testing.assert_array_equal(r.scores, a.scores)
            np.testing.assert_array_equal(r.is_anomaly, a.is_anomaly)
            np.testing.assert_array_equal(r.embeddings, a.embeddings)
            assert r.rows is batch
            assert r.weights == a.weights and set(a.weights) == {"logs"}  # the members' agreement weights
            assert [
                (x.score, x.raw_score, x.explanation, x.neighbors, x.evidence, x.detected_unix_nano)
                for x in r.anomalies
            ] == [
                (x.score, x.raw_score, x.explanation, x.neighbors, x.evidence, x.detected_unix_nano)
                for x in a.anomalies
            ]
            # the anomalies carry this process's rows, resource attributes included (the event needs them)
            assert all(x.row is y.row for x, y in zip(r.anomalies, a.anomalies, strict=True))
            if b == 1:
                assert any(x.row is ODD for x in r.anomalies)
        assert len(local.mv.detector.vectors_) > len(
            mv.detector.vectors_
        )  # it did learn; the child too, alike
    finally:
        remote.close()
    assert not remote.alive and remote._proc.exitcode == 0
    remote.close()  # twice is fine


def test_child_ignores_sigterm_and_sigint_and_exits_on_close(saved):
    mv, path = saved
    remote = start(mv, path)
    try:
        os.kill(remote.pid, signal.SIGTERM)
        os.kill(remote.pid, signal.SIGINT)
        time.sleep(0.3)
        assert remote.alive  # the service drains first, then closes it
        assert len(remote.score(make_rows(50, seed=3, start=T0 + 10**12)).scores) == 50
    finally:
        remote.close(10)
    assert remote._proc.exitcode == 0


def test_a_dead_child_is_an_error_not_a_hang(saved):
    mv, path = saved
    remote = start(mv, path)
    try:
        os.kill(remote.pid, signal.SIGKILL)
        remote._proc.join(10)
        with pytest.raises(ScoringProcessError, match="exited|gone"):
            remote.score(make_rows(10, seed=4))
    finally:
        remote.close(1)


def test_a_child_of_another_boundary_version_refuses_to_start(saved, monkeypatch):
    """The handshake: a service that speaks another BOUNDARY_VERSION gets a clear error, not shifted fields."""
    import model.worker
    from model.schema import BOUNDARY_VERSION

    mv, path = saved
    monkeypatch.setattr(model.worker, "BOUNDARY_VERSION", BOUNDARY_VERSION + 1)  # what the service sends
    with pytest.raises(ScoringProcessError, match="boundary version mismatch"):
        start(mv, path)


def test_a_model_the_child_cannot_load_is_an_error(saved, tmp_path):
    mv, _ = saved
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ScoringProcessError, match="could not load model"):
        start(mv, tmp_path)


def test_service_scores_in_the_child_and_stop_drains_then_closes_it(saved, tmp_path):
    """SIGTERM path (Service.stop): the batch in hand is scored and stored, the spool committed, the child gone."""
    from receiver.service import Service
    from receiver.settings import Settings
    from storage import MilvusStore
    from tests.integration.test_service import T0 as T_LOGS
    from tests.integration.test_service import logs_request, normal_records, stubs

    mv, _ = saved
    data = tmp_path / "data"
    mv.save(data / "models")
    svc = Service(
        Settings(
            data_dir=data,
            grpc_endpoint="localhost:0",
            http_endpoint="localhost:0",
            metrics_endpoint="localhost:0",
            knn_k=5,
            batch_wait_ms=3000,
            batch_rows=100_000,
        )
    )
    svc.start()
    child = svc.pipeline._scorer
    try:
        assert isinstance(child, ScoringProcess) and child.alive and svc.pipeline.state == "scoring"
        _, logs, _ = stubs(svc)
        for part in range(5):
            logs.Export(logs_request(normal_records(40, T_LOGS + part * 10**12, seed=part)), timeout=5)
    finally:
        svc.stop(20)  # the 200 rows wait for their batch to fill (3 s): stop must finish it
    assert not child.alive and child._proc.exitcode == 0
    assert svc.pipeline.processed == 200
    assert (data / "spool" / "checkpoint").read_text().strip() == "5"
    store = MilvusStore(str(data / "milvus.db"))
    try:
        assert store.count_rows(mv.version) == 200  # every scored row stored once
    finally:
        store.close()


def test_child_runs_at_the_niceness_it_was_given(saved):
    """Batch work yields the CPU to the receiver: the child adds `nice` to the niceness it inherited."""
    mv, path = saved
    child = start(mv, path, nice=5)
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, child._proc.pid) == min(own + 5, 19)
        assert len(child.score(make_rows(50, seed=3, start=T0 + 10**12), T0 + 2 * 10**12).scores) == 50
    finally:
        child.close()
