"""Embed: TabularResNet, categorical embeddings + numeric projection -> residual MLP blocks -> unit vector."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    cardinalities: tuple[int, ...]
    n_numeric: int
    d_model: int = 96
    n_blocks: int = 2
    embed_dim: int = 32
    dropout: float = 0.1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderConfig:
        data = dict(data)
        data["cardinalities"] = tuple(data["cardinalities"])
        return cls(**data)


def _emb_dim(cardinality: int) -> int:
    return max(2, min(16, round(1.6 * cardinality**0.56)))


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block: x + Dropout(W2 GELU(W1 LN(x)))."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x)))))


class TabularResNet(nn.Module):
    """forward(num (B, n_numeric) float32, cat (B, n_categorical) int64) -> (B, embed_dim) L2-normalised."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.ModuleList(nn.Embedding(c, _emb_dim(c)) for c in config.cardinalities)
        cat_width = sum(_emb_dim(c) for c in config.cardinalities)
        num_width = max(8, config.d_model // 2) if config.n_numeric else 0
        self.numeric = nn.Linear(config.n_numeric, num_width) if config.n_numeric else None
        self.input = nn.Linear(cat_width + num_width, config.d_model)
        self.blocks = nn.ModuleList(
            ResidualBlock(config.d_model, config.dropout) for _ in range(config.n_blocks)
        )
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.embed_dim)

    def trunk(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        parts = [emb(cat[:, i]) for i, emb in enumerate(self.embeddings)]
        if self.numeric is not None:
            parts.append(self.numeric(num))
        h = self.input(torch.cat(parts, dim=1))
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(self.trunk(num, cat)), dim=1)


class Embedder:
    """Inference wrapper: eval mode, no grad, batched, fixed thread count."""

    def __init__(self, model: TabularResNet, batch_size: int = 4096):
        self.model = model.eval()
        self.batch_size = batch_size

    def embed(self, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        """(n, n_numeric) float32 + (n, n_categorical) int64 -> (n, embed_dim) float32 unit vectors."""
        out = np.empty((len(num), self.model.config.embed_dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(num), self.batch_size):
                end = start + self.batch_size
                z = self.model(torch.from_numpy(num[start:end]), torch.from_numpy(cat[start:end]))
                out[start:end] = z.numpy()
        return out
