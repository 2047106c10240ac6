"""TabularResNet shapes, training, model version save/load (safetensors + JSON + NPZ), scoring + explanation."""

from __future__ import annotations

import numpy as np
import torch

from model.detectors.series import SeriesDetector
from model.encoder import Embedder, EncoderConfig, TabularResNet
from model.schema import Row
from model.scorer import Scorer
from model.train import TrainConfig, nt_xent
from model.version import ModelVersion, fit_version
from tests.helpers import T0, make_rows


def test_encoder_output_is_unit_norm_with_right_shape():
    config = EncoderConfig(cardinalities=(5, 7), n_numeric=3, d_model=16, n_blocks=2, embed_dim=8)
    model = TabularResNet(config).eval()
    z = model(torch.randn(4, 3), torch.randint(0, 5, (4, 2)))
    assert z.shape == (4, 8)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    emb = Embedder(model, batch_size=3).embed(
        np.random.randn(7, 3).astype(np.float32), np.zeros((7, 2), np.int64)
    )
    assert emb.shape == (7, 8) and emb.dtype == np.float32


def test_nt_xent_prefers_matching_views():
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    aligned = nt_xent(z, z, 0.1)
    shuffled = nt_xent(z, z[torch.randperm(16)], 0.1)
    assert aligned < shuffled


def test_fit_save_load_score_and_explain(tmp_path):
    rows = make_rows(900)
    mv = fit_version(rows, k=5, embed_dim=8, train_config=TrainConfig(epochs=3, batch_size=128))
    assert mv.meta["rows"] == 900 and len(mv.meta["history"]) >= 1
    path = mv.save(tmp_path)
    assert (path / "weights.safetensors").exists() and (path / "model.json").exists()
    loaded = ModelVersion.load_current(tmp_path)
    assert loaded is not None and loaded.version == mv.version
    test = make_rows(200, seed=5, start=T0 + 10**12)
    odd = Row(
        uid="odd",
        signal="logs",
        time_unix_nano=T0 + 10**12 + 5,
        service="a",
        class_uid=4002,
        activity_id=3,
        severity_id=4,
        status_id=2,
        fields={
            "message": "GET /items/3 served in 40000 ms",
            "duration": 40_000.0,
            "http_request.url.path": "/items/3",
            "http_request.http_method": "GET",
            "actor.user.name": "user3",
            "src_endpoint.location.country": "KP",
        },
    )
    a = Scorer(mv, learn=False).score(test + [odd])
    b = Scorer(loaded, learn=False).score(test + [odd])
    assert np.allclose(a.raw, b.raw, atol=1e-5)  # the saved version scores exactly like the trained one
    assert a.scores[-1] >= mv.detector.threshold_ > np.median(a.scores[:-1])
    anomaly = next(x for x in a.anomalies if x.row.uid == "odd")
    features = {f for f, _, _ in anomaly.evidence}
    assert features & {"duration", "severity", "status", "src_endpoint.location.country"}
    # one sentence in the user's words first: the record itself, what fired; never an internal feature name
    text = anomaly.explanation
    assert (
        text.startswith("Unusual log record from a ('GET /items/3 served in 40000 ms'") and anomaly.neighbors
    )
    assert "ctx." not in text and "40,000 ms" in text
    if "knn" in anomaly.detector:  # the nearest normal records as content (their message pattern), not uids
        assert "Nearest normal records: '" in text and not any(n in text for n in anomaly.neighbors)
    assert (a.is_anomaly[:-1]).mean() < 0.05

    # OTAD_SERIES_MAX: the series member's capacity is fixed at training and can be changed at load
    def cap(m: ModelVersion | None) -> int:
        assert m is not None
        return next(d.max_series for d in m.ensemble.members if isinstance(d, SeriesDetector))

    assert cap(mv) == cap(loaded) == 10_000
    assert cap(ModelVersion.load_current(tmp_path, series_max=7)) == 7


def test_deviant_rows_are_those_far_from_their_own_baseline():
    from model.detectors.knn import DEVIANT_UNITS, deviant_rows
    from model.features import FeatureContract

    contract, derived = FeatureContract.fit(make_rows(400))
    num, _ = contract.encode(derived)
    names = contract.numeric_names()
    cols = [names.index(n) for n in ("ctx.latency_z", "ctx.failure_excess_60s") if n in names]
    assert cols, names
    num = np.zeros_like(num)
    num[3, cols[0]] = DEVIANT_UNITS  # ten units away: deviant
    num[4, cols[0]] = -DEVIANT_UNITS  # either direction
    num[5, cols[0]] = DEVIANT_UNITS - 0.5
    num[6, names.index("duration") if "duration" in names else 0] = 50.0  # not a deviation feature
    assert np.flatnonzero(deviant_rows(contract, num)).tolist() == [3, 4]
