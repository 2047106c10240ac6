"""Model versions: fit one (feature contract + TabularResNet + k-NN detector) and save/load it as safetensors,
JSON and NPZ (never pickle). `model.scorer.Scorer` scores rows with a version."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from model.detector import KnnDetector
from model.encoder import Embedder, EncoderConfig, TabularResNet
from model.features import FeatureContract
from model.schema import Row
from model.train import TrainConfig, train

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
# The detection vector is the learned embedding plus the weighted numeric features and categorical rarity:
# the embedding is trained to ignore magnitudes and never-seen values, the two explicit parts keep them
# visible to the k-NN distance (docs/detection.md §3, and §6 for the measurements).
NUMERIC_WEIGHT = 0.15
RARITY_WEIGHT = 0.1
# Deviations from an entity's own baseline (a latency z, a first-seen pair) are evidence in themselves.
DEVIATION_WEIGHT = 0.5
DEVIATION_FEATURES = (
    "ctx.latency_z",
    "ctx.series_z",
    "ctx.slow_ratio_60s",
    "ctx.failure_excess_60s",
    "ctx.seen_user_country",
    "ctx.seen_user_agent",
    "ctx.seen_user_route",
    "ctx.seen_user_source",
)
# Rows this far (in feature units) from their own entity's baseline are incidents by their own history: they
# never become reference rows, at training nor by online learning, so a repeat of the incident cannot find
# them as its normal neighbours.
DEVIANT_FEATURES = ("ctx.latency_z", "ctx.series_z", "ctx.failure_excess_60s")
DEVIANT_UNITS = 10.0


def deviant_rows(contract: FeatureContract, num: np.ndarray) -> np.ndarray:
    """(n,) bool: rows with |deviation| >= DEVIANT_UNITS in any of DEVIANT_FEATURES."""
    names = contract.numeric_names()
    cols = [j for j, n in enumerate(names) if n in DEVIANT_FEATURES]
    if not cols:
        return np.zeros(len(num), dtype=bool)
    return (np.abs(num[:, cols]) >= DEVIANT_UNITS).any(axis=1)


def numeric_weights(contract: FeatureContract) -> np.ndarray:
    """(n_numeric,) float32: the weight of each numeric feature in the detection vector."""
    names = contract.numeric_names()
    return np.asarray(
        [DEVIATION_WEIGHT if n in DEVIATION_FEATURES else NUMERIC_WEIGHT for n in names], dtype=np.float32
    )


def detection_vectors(
    contract: FeatureContract, emb: np.ndarray, num: np.ndarray, cat: np.ndarray
) -> np.ndarray:
    """(n, embed_dim + n_numeric + n_categorical) float32: what the k-NN detector measures distances on."""
    return np.ascontiguousarray(
        np.concatenate(
            [emb, numeric_weights(contract) * num, RARITY_WEIGHT * contract.rarity_matrix(cat)], axis=1
        ),
        dtype=np.float32,
    )


@dataclass
class ModelVersion:
    """A trained model version: contract, encoder, detector, and what explanations compare against."""

    version: str
    contract: FeatureContract
    config: EncoderConfig
    model: TabularResNet
    detector: KnnDetector
    ref_num: np.ndarray  # features of the detector's unique reference vectors, for explanations
    ref_cat: np.ndarray
    meta: dict[str, Any]  # training figures, saved in model.json

    # ----- persistence -----
    def save(self, models_dir: Path, *, promote: bool = True) -> Path:
        """Write the version's files under `models_dir`; with `promote`, also make it the current version."""
        path = Path(models_dir) / self.version
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path / "weights.safetensors")
        )
        det = self.detector.state()
        np.savez_compressed(
            path / "reference.npz", allow_pickle=False, ref_num=self.ref_num, ref_cat=self.ref_cat, **det
        )
        doc = {
            "version": self.version,
            "encoder": self.config.to_json(),
            "contract": self.contract.to_json(),
            "detector": {
                "name": self.detector.name,
                "k": self.detector.k,
                "alert_pvalue": self.detector.alert_pvalue,
            },
            "meta": self.meta,
        }
        (path / "model.json").write_text(json.dumps(doc, indent=1))
        if promote:
            promote_version(models_dir, self.version)
        return path

    @classmethod
    def load(
        cls, path: Path, *, k: int | None = None, alert_pvalue: float | None = None, max_rows: int = 100_000
    ) -> ModelVersion:
        """Load a saved version; `k` and `alert_pvalue` override the saved ones, `max_rows` caps learning."""
        path = Path(path)
        doc = json.loads((path / "model.json").read_text())
        config = EncoderConfig.from_json(doc["encoder"])
        model = TabularResNet(config)
        model.load_state_dict(load_file(str(path / "weights.safetensors")))
        model.eval()
        with np.load(path / "reference.npz", allow_pickle=False) as z:
            state = {key: z[key] for key in z.files}
        det = KnnDetector.from_state(
            state,
            k=k or doc["detector"]["k"],
            alert_pvalue=alert_pvalue or doc["detector"]["alert_pvalue"],
            max_rows=max_rows,
        )
        return cls(
            doc["version"],
            FeatureContract.from_json(doc["contract"]),
            config,
            model,
            det,
            state["ref_num"],
            state["ref_cat"],
            doc["meta"],
        )

    @staticmethod
    def load_current(
        models_dir: Path, *, k: int | None = None, alert_pvalue: float | None = None, max_rows: int = 100_000
    ) -> ModelVersion | None:
        """The version the CURRENT pointer names (see `load`), or None before the first one is promoted."""
        pointer = Path(models_dir) / CURRENT
        if not pointer.exists():
            return None
        return ModelVersion.load(
            Path(models_dir) / pointer.read_text().strip(), k=k, alert_pvalue=alert_pvalue, max_rows=max_rows
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
    embed_dim: int = 32,
    train_config: TrainConfig | None = None,
    max_rows: int = 100_000,
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
    uids = [r.uid for r in rows]
    vectors = detection_vectors(contract, emb, num, cat)
    times = np.asarray([r.time_unix_nano for r in rows], dtype=np.int64)
    signals = np.asarray([r.signal for r in rows], dtype=np.str_)
    detector = KnnDetector(k=k, alert_pvalue=alert_pvalue, max_rows=max_rows).fit(
        vectors, uids, times=times, groups=signals, deviant=deviant_rows(contract, num)
    )
    digest = hashlib.blake2b(emb.tobytes(), digest_size=3).hexdigest()
    version = time.strftime("v%Y%m%d%H%M%S", time.gmtime()) + "-" + digest
    meta = {
        "trained_at": time.time(),
        "rows": len(rows),
        "train_start_unix_nano": rows[0].time_unix_nano,
        "train_end_unix_nano": rows[-1].time_unix_nano,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "train_seconds": result.seconds,
        "reference_rows": int(len(detector.vectors_)),
        "threshold": detector.threshold_,
        "signals": dict(Counter(r.signal for r in rows)),
    }
    rep = detector.rep_rows_
    return ModelVersion(version, contract, config, result.model, detector, num[rep], cat[rep], meta)
