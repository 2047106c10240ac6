"""Embed rows outside the scoring path: a saved version's feature contract and encoder, nothing else.

otad's API embeds an example row (SimilarEvents) and re-embeds a feedback entry's source row when the model
version changes. It must not touch the scorer's online state, so it loads the version's encoder on its own
(a few MB; not the detectors or their reference) and derives each call's rows with a fresh context tracker:
context features (rates, baselines) are those of a row seen without history.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from model.encoder import Embedder, EncoderConfig, TabularResNet
from model.features import FeatureContract
from model.schema import Row

__all__ = ["RowEmbedder"]


class RowEmbedder:
    """The embedding of rows under one saved model version (thread-safe)."""

    def __init__(self, version_dir: Path, threads: int = 1):
        doc = json.loads((Path(version_dir) / "model.json").read_text())
        self.version = str(doc["version"])
        self.contract = FeatureContract.from_json(doc["contract"])
        model = TabularResNet(EncoderConfig.from_json(doc["encoder"]))
        model.load_state_dict(load_file(str(Path(version_dir) / "weights.safetensors")))
        model.eval()
        self._embedder = Embedder(model)
        self._threads = threads
        self._lock = threading.Lock()

    def embed(self, rows: list[Row]) -> np.ndarray:
        """(n, embed_dim) float32, one embedding per row, in order."""
        with self._lock:
            torch.set_num_threads(self._threads)
            derived = self.contract.derive_online(rows, self.contract.new_tracker(), self.contract.matcher())
            num, cat = self.contract.encode(derived)
            return self._embedder.embed(num, cat)
