"""Retraining from stored rows: the newest rows of the current version's rows collection (the rows it flagged
as anomalous left out) train a new version; its reference rows are embedded by its own encoder into its own
rows collection (vectors are never compared across versions). `otad train` without `--input` reads the same
rows.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.schema import Row, row_from_dict
from model.scorer import Scorer
from model.train import TrainConfig
from model.version import CURRENT, ModelVersion, fit_version
from receiver.settings import Settings
from receiver.writer import Writer, scored_columns
from storage import MilvusStore

logger = logging.getLogger(__name__)

MIN_ROWS = 50  # fit_version's minimum


def current_version(models_dir: Path) -> str | None:
    """The version the CURRENT pointer names, or None before the first one."""
    pointer = Path(models_dir) / CURRENT
    return pointer.read_text().strip() if pointer.exists() else None


def training_rows(store: MilvusStore, version: str, max_rows: int) -> list[Row]:
    """The newest `max_rows` rows stored for `version` that it did not flag as anomalous, oldest first."""
    return newest_rows(store, version, max_rows, "is_anomaly == false")


def newest_rows(
    store: MilvusStore, version: str, n: int, template: str, params: dict | None = None
) -> list[Row]:
    """The newest `n` rows of `version` matching the filter template, oldest first.

    One pass over the matches keeps the newest in a bounded heap (Milvus queries have no ORDER BY), so memory
    stays at `n` rows whatever the collection holds.
    """
    heap: list[tuple[int, str, dict]] = []
    for page in store.iter_rows(version, template, params, ["uid", "time_ms", "row"]):
        for d in page:
            item = (int(d["time_ms"]), str(d["uid"]), d["row"])
            if len(heap) < n:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
    rows = [row_from_dict(r) for _, _, r in heap]
    rows.sort(key=lambda r: r.time_unix_nano)
    return rows


def stored_training_rows(store: MilvusStore, settings: Settings, max_rows: int | None = None) -> list[Row]:
    """What a retrain reads: the current version's recent rows, or (before the first model) the backlog."""
    limit = max_rows or settings.train_max_rows
    version = current_version(settings.models_dir)
    if version is not None and store.has_rows_collection(version):
        return training_rows(store, version, limit)
    rows = [row_from_dict(d["row"]) for page in store.iter_backlog() for d in page]
    rows.sort(key=lambda r: r.time_unix_nano)
    return rows[-limit:]


def fit(
    settings: Settings, rows: list[Row], progress: Callable[[dict[str, float]], None] | None = None
) -> ModelVersion:
    """A new model version trained on `rows` with the service's settings."""
    s = settings
    return fit_version(
        rows,
        k=s.knn_k,
        alert_pvalue=s.alert_pvalue,
        detectors=s.detector_names,
        combiner=s.combiner,
        weighting=s.member_weights,
        false_alerts_per_hour=s.false_alerts_per_hour,
        embed_dim=s.embed_dim,
        max_rows=s.reference_max_rows,
        series_max=s.series_max,
        train_config=TrainConfig(epochs=s.train_epochs, seed=s.seed, threads=1),
        progress=progress,
    )


def store_reference(store: MilvusStore, writer: Writer, mv: ModelVersion, rows: list[Row]) -> np.ndarray:
    """Embed the training rows with `mv`'s encoder into its rows collection as reference rows (with the
    out-of-sample scores its ensemble gave them); returns their embeddings. Nothing is reported: these rows
    were scored when they arrived."""
    scorer = Scorer(mv, learn=False)
    judged, found = scorer.judged_anomalies()
    flagged = {a.row.uid for a in found}
    score_of = dict(zip([r.uid for r in mv.judged[0].rows], judged, strict=True)) if mv.judged else {}
    store.ensure_rows_collection(mv.version, mv.config.embed_dim)
    out = []
    for start in range(0, len(rows), 4096):
        part = rows[start : start + 4096]
        _, num, cat = scorer.featurize(part)
        emb = scorer.embedder.embed(num, cat)
        scores = np.asarray([score_of.get(r.uid, 0.0) for r in part])
        alerts = np.asarray([r.uid in flagged for r in part], dtype=np.float64)
        writer.scored(mv.version, part, scored_columns(part, scores, alerts, reference=True), emb)
        out.append(emb)
    mv.judged = None
    return np.concatenate(out) if out else np.zeros((0, mv.config.embed_dim), np.float32)
