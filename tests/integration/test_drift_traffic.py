"""Drift on simulated traffic, with a real model and real Milvus Lite: the figures and the Prometheus gauges stay
flat while the simulator's traffic mix stays the same, and move (and, after OTAD_DRIFT_CHECKS checks, turn the
drift switch on) when the mix changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.train import TrainConfig
from model.version import fit_version
from receiver.jsonfiles import read_rows
from receiver.metrics import Metrics
from receiver.monitor import DriftMonitor
from receiver.retrain import store_reference
from receiver.settings import Settings
from receiver.writer import Writer
from sim.simulate import FileSink, SimulateConfig, simulate
from storage import MilvusStore

pytestmark = pytest.mark.integration

WINDOW = 1500


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> tuple[list, list, list, object, Path]:
    """A model trained on the first part of steady simulated traffic; later windows with the same mix and with
    the mix changed (the busiest service, frontend, goes quiet)."""
    work = tmp_path_factory.mktemp("drift")
    sink = FileSink(work / "otlp.jsonl")
    simulate(SimulateConfig(duration_s=900, rate=4.0, seed=7, anomaly_rate=0.0, speedup=0), [sink], None)
    sink.close()
    rows = read_rows([work / "otlp.jsonl"])
    train = rows[:4000]
    mv = fit_version(train, embed_dim=8, train_config=TrainConfig(epochs=2))
    same = rows[6000 : 6000 + WINDOW]
    changed = [r for r in rows[7500:] if r.service != "frontend"][:WINDOW]
    assert len(changed) == WINDOW
    return train, same, changed, mv, work


def _monitor(work: Path, store: MilvusStore, metrics: Metrics) -> DriftMonitor:
    settings = Settings(data_dir=work / "data", drift_window_rows=WINDOW, drift_checks=2)
    return DriftMonitor(settings, store, metrics)


def test_drift_stays_flat_with_the_same_mix_and_moves_when_it_changes(traffic, tmp_path):
    train, same, changed, mv, _ = traffic
    store = MilvusStore(str(tmp_path / "milvus.db"), timeout_s=30)
    try:
        metrics = Metrics()
        writer = Writer(
            store, metrics, tmp_path / "dead-letter", dead_letter_max_bytes=1 << 20, otad_version="t"
        )
        store_reference(store, writer, mv, train)  # the version's reference rows, as a retrain stores them
        monitor = _monitor(tmp_path, store, metrics)

        monitor.observe(same)
        flat, on = monitor.check(mv)
        assert flat is not None and not on
        gauge = metrics.registry.get_sample_value
        assert gauge("otad_drift_feature_share") == flat.feature_share
        monitor.observe(same)  # a second quiet check keeps the switch off
        again, on = monitor.check(mv)
        assert again is not None and not on and not monitor.hysteresis.active

        monitor.observe(changed)
        moved, on = monitor.check(mv)
        assert moved is not None and not on  # one check above the threshold is not enough
        monitor.observe(changed)
        moved2, on = monitor.check(mv)
        assert on and monitor.hysteresis.active and gauge("otad_drift_active") == 1
    finally:
        store.close()
    print(
        f"\ndrift same mix: share {flat.feature_share:.3f} emb {flat.embedding:.4f} cov {flat.coverage:.2f} "
        f"new-templates {flat.new_template_rate:.3f}; changed mix: share {moved.feature_share:.3f} "
        f"emb {moved.embedding:.4f} cov {moved.coverage:.2f} drifted {moved.drifted[:6]}"
    )
    assert flat.feature_share < 0.1 and again.feature_share < 0.1
    assert moved.feature_share > 0.2 and moved.feature_share > 3 * max(flat.feature_share, 0.02)
    assert flat.embedding < 0.01 < moved.embedding  # MMD^2 of the embeddings
    assert gauge("otad_drift_feature_share") == moved2.feature_share
