"""Model versions: fit one (feature contract + TabularResNet + k-NN detector) and save/load it as safetensors,
JSON and NPZ (never pickle). `model.scorer.Scorer` scores rows with a version."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from model.detector import KnnDetector
from model.detectors import DEFAULT_MEMBERS, Ensemble, Frame, build, ensemble_from_state
from model.detectors.ensemble import EnsembleResult
from model.detectors.knn import KnnMember, detection_vectors
from model.detectors.series import SeriesDetector
from model.encoder import Embedder, EncoderConfig, TabularResNet
from model.features import ContractVersionError, FeatureContract
from model.schema import Row
from model.train import TrainConfig, train

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
ONLINE_STATE = "online"  # the scoring process's learned state, under the version's directory


@dataclass
class ModelVersion:
    """A trained model version: contract, encoder, detector, and what explanations compare against."""

    version: str
    contract: FeatureContract
    config: EncoderConfig
    model: TabularResNet
    ensemble: Ensemble
    ref_num: np.ndarray  # features of the k-NN member's unique reference vectors, for explanations
    ref_cat: np.ndarray
    meta: dict[str, Any]  # training figures, saved in model.json
    # The training rows as the ensemble saw them, and its judgement of them (out-of-sample member scores):
    # the service reports the anomalies among its cold-start rows from these, then drops them. Not saved.
    judged: tuple[Frame, EnsembleResult] | None = field(default=None, repr=False)

    @property
    def detector(self) -> KnnDetector | None:
        """The k-NN member's detector (its reference rows explain anomalies), when the ensemble has one."""
        for m in self.ensemble.members:
            if isinstance(m, KnnMember):
                return m.detector
        return None

    # ----- persistence -----
    def save(self, models_dir: Path, *, promote: bool = True) -> Path:
        """Write the version's files under `models_dir`; with `promote`, also make it the current version."""
        path = Path(models_dir) / self.version
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path / "weights.safetensors")
        )
        values, arrays = self.ensemble.state()
        np.savez_compressed(path / "ensemble.npz", allow_pickle=False, **arrays)
        np.savez_compressed(
            path / "reference.npz", allow_pickle=False, ref_num=self.ref_num, ref_cat=self.ref_cat
        )
        context = self.contract.context
        if context is not None:
            np.savez_compressed(path / "context.npz", allow_pickle=False, **context[1])
        doc = {
            "version": self.version,
            "encoder": self.config.to_json(),
            "contract": self.contract.to_json(),
            "ensemble": values,
            "context": context[0] if context is not None else None,
            "meta": self.meta,
        }
        (path / "model.json").write_text(json.dumps(doc, indent=1))
        if promote:
            promote_version(models_dir, self.version)
        return path

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        k: int | None = None,
        alert_pvalue: float | None = None,
        max_rows: int = 100_000,
        false_alerts_per_hour: float | None = None,
        series_max: int | None = None,
    ) -> ModelVersion:
        """Load a saved version; `k`, `alert_pvalue` and `false_alerts_per_hour` override the saved ones,
        `max_rows` caps the k-NN member's learning and `series_max` the series member's series."""
        path = Path(path)
        doc = json.loads((path / "model.json").read_text())
        if "ensemble" not in doc:
            raise ContractVersionError(
                f"model {path.name} predates the detector ensemble: train a new version"
            )
        config = EncoderConfig.from_json(doc["encoder"])
        model = TabularResNet(config)
        model.load_state_dict(load_file(str(path / "weights.safetensors")))
        model.eval()
        with np.load(path / "reference.npz", allow_pickle=False) as z:
            ref = {key: z[key] for key in z.files}
        with np.load(path / "ensemble.npz", allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
        ens = ensemble_from_state(doc["ensemble"], arrays)
        ens.alert_pvalue = alert_pvalue or ens.alert_pvalue
        ens.false_alerts_per_hour = false_alerts_per_hour or ens.false_alerts_per_hour
        for m in ens.members:
            if isinstance(m, KnnMember):
                m.detector.k = m.k = k or m.k
                m.detector.max_rows = m.max_rows = max_rows
            if isinstance(m, SeriesDetector):
                m.max_series = series_max or m.max_series
        contract = FeatureContract.from_json(doc["contract"])
        if doc.get("context") is not None:  # a version saved before context.npz starts from its pair history
            with np.load(path / "context.npz", allow_pickle=False) as z:
                contract.context = (doc["context"], {key: z[key] for key in z.files})
        return cls(doc["version"], contract, config, model, ens, ref["ref_num"], ref["ref_cat"], doc["meta"])

    @staticmethod
    def load_current(
        models_dir: Path,
        *,
        k: int | None = None,
        alert_pvalue: float | None = None,
        max_rows: int = 100_000,
        false_alerts_per_hour: float | None = None,
        series_max: int | None = None,
    ) -> ModelVersion | None:
        """The version the CURRENT pointer names (see `load`), or None before the first one is promoted."""
        pointer = Path(models_dir) / CURRENT
        if not pointer.exists():
            return None
        return ModelVersion.load(
            Path(models_dir) / pointer.read_text().strip(),
            k=k,
            alert_pvalue=alert_pvalue,
            max_rows=max_rows,
            false_alerts_per_hour=false_alerts_per_hour,
            series_max=series_max,
        )


def promote_version(models_dir: Path, version: str) -> None:
    """Make a saved version the current one (an atomic rename: a crash leaves the old or the new pointer)."""
    tmp = Path(models_dir) / (CURRENT + ".tmp")
    tmp.write_text(version)
    tmp.replace(Path(models_dir) / CURRENT)


def fit_version(
    rows: list[Row],
    *,
    k: int = 10,
    alert_pvalue: float = 1e-3,
    detectors: tuple[str, ...] | list[str] = DEFAULT_MEMBERS,
    combiner: str = "minp",
    weighting: str = "agreement",
    false_alerts_per_hour: float = 10.0,
    embed_dim: int = 32,
    train_config: TrainConfig | None = None,
    max_rows: int = 100_000,
    series_max: int = 10_000,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> ModelVersion:
    """Train a new model version on rows (any order; sorted by time here)."""
    if len(rows) < 50:
        raise ValueError(f"need at least 50 rows to train, got {len(rows)}")
    rows = sorted(rows, key=lambda r: r.time_unix_nano)
    t0 = time.monotonic()
    contract, derived = FeatureContract.fit(rows)
    num, cat = contract.encode(derived)
    logger.info(
        "feature contract: %d categorical, %d numeric columns, %d templates (%.1fs)",
        len(contract.categorical),
        contract.n_numeric,
        len(contract.templates),
        time.monotonic() - t0,
    )
    config = EncoderConfig(tuple(contract.cardinalities), contract.n_numeric, embed_dim=embed_dim)
    cfg = train_config or TrainConfig()
    result = train(num, cat, contract.categorical, config, cfg, progress)
    emb = Embedder(result.model).embed(num, cat)
    frame = Frame(rows, derived, num, cat, contract, detection_vectors(contract, emb, num, cat))
    t1 = time.monotonic()
    ensemble = build(
        detectors,
        combiner=combiner,
        false_alerts_per_hour=false_alerts_per_hour,
        alert_pvalue=alert_pvalue,
        k=k,
        max_rows=max_rows,
        series_max=series_max,
        weighting=weighting,
    ).fit(frame)
    logger.info("detectors %s fitted (%.1fs)", ", ".join(ensemble.names), time.monotonic() - t1)
    digest = hashlib.blake2b(emb.tobytes(), digest_size=3).hexdigest()
    version = time.strftime("v%Y%m%d%H%M%S", time.gmtime()) + "-" + digest
    knn = next((m.detector for m in ensemble.members if isinstance(m, KnnMember)), None)
    meta = {
        "trained_at": time.time(),
        "rows": len(rows),
        "train_start_unix_nano": rows[0].time_unix_nano,
        "train_end_unix_nano": rows[-1].time_unix_nano,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "train_seconds": result.seconds,
        "detectors": ensemble.names,
        "combiner": combiner,
        "member_weights": weighting,
        "reference_rows": int(len(knn.vectors_)) if knn is not None else 0,
        "alert_pvalue": alert_pvalue,
        "false_alerts_per_hour": false_alerts_per_hour,
        "signals": dict(Counter(r.signal for r in rows)),
    }
    rep = knn.rep_rows_ if knn is not None else np.zeros(0, dtype=np.int64)
    judged = (frame, ensemble.fit_result_) if ensemble.fit_result_ is not None else None
    return ModelVersion(version, contract, config, result.model, ensemble, num[rep], cat[rep], meta, judged)
