"""Self-supervised training: SimCLR-style contrastive loss with column-aware augmentation, plus a denoising
reconstruction head so the embedding keeps every column's information (k-NN distance then sees numbers too).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.encoder import EncoderConfig, TabularResNet

logger = logging.getLogger(__name__)

# Columns whose value defines what a row *is*: augmentation never changes them (a failed login
# must not be taught to look like a successful one).
PROTECTED = frozenset(
    {
        "signal",
        "service",
        "class_uid",
        "activity_id",
        "severity_id",
        "status_id",
        "status_code",
        "template",
        "metric.name",
        "metric.type",
        "http_request.http_method",
        "error.type",
        "trace.span.kind",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    noise: float = 0.1  # numeric noise, in robust-scaled units
    mask_p: float = 0.15  # chance a non-protected categorical cell becomes out-of-vocabulary
    recon_weight: float = 1.0
    val_fraction: float = 0.1
    patience: int = 3
    seed: int = 7
    threads: int = 2


@dataclass
class TrainResult:
    model: TabularResNet
    history: list[dict[str, float]]  # one record per epoch: epoch, losses, seconds
    best_epoch: int
    seconds: float


class _Decoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(config.embed_dim, config.d_model), nn.GELU())
        self.num = nn.Linear(config.d_model, config.n_numeric) if config.n_numeric else None
        self.cats = nn.ModuleList(nn.Linear(config.d_model, c) for c in config.cardinalities)

    def loss(self, z: torch.Tensor, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        h = self.body(z)
        total = z.new_zeros(())
        if self.num is not None:
            total = total + nn.functional.smooth_l1_loss(self.num(h), num)
        if len(self.cats):
            ce = [nn.functional.cross_entropy(head(h), cat[:, i]) for i, head in enumerate(self.cats)]
            total = total + torch.stack(ce).mean()
        return total


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2B unit vectors: each view's positive is the other view of the same row."""
    z = torch.cat([z1, z2])
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return nn.functional.cross_entropy(sim, target)


def augment(
    num: torch.Tensor, cat: torch.Tensor, free_cols: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    num = num + cfg.noise * torch.randn(num.shape, generator=gen)
    if free_cols.numel():
        mask = torch.rand(cat.shape, generator=gen) < cfg.mask_p
        mask &= free_cols.unsqueeze(0)
        cat = torch.where(mask, torch.ones_like(cat), cat)  # 1 = out-of-vocabulary
    return num, cat


def train(
    num: np.ndarray,
    cat: np.ndarray,
    categorical_names: list[str],
    encoder_config: EncoderConfig,
    cfg: TrainConfig,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train on time-ordered rows; the newest `val_fraction` is the validation split for early stopping.

    long: one training loop (epochs, batches, early stopping, progress) whose parts share the model and optimiser state.
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(num)
    n_val = max(1, int(n * cfg.val_fraction)) if n >= 20 else 0
    tr_num, tr_cat = torch.from_numpy(num[: n - n_val]), torch.from_numpy(cat[: n - n_val])
    va_num, va_cat = torch.from_numpy(num[n - n_val :]), torch.from_numpy(cat[n - n_val :])
    free_cols = torch.tensor([c not in PROTECTED for c in categorical_names], dtype=torch.bool)
    model = TabularResNet(encoder_config)
    decoder = _Decoder(encoder_config)
    params = list(model.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch_size, max(8, len(tr_num)))
    steps_per_epoch = max(1, len(tr_num) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=cfg.epochs * steps_per_epoch, eta_min=cfg.lr / 20
    )

    def step_loss(bn: torch.Tensor, bc: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        n1, c1 = augment(bn, bc, free_cols, cfg, gen)
        n2, c2 = augment(bn, bc, free_cols, cfg, gen)
        z1, z2 = model(n1, c1), model(n2, c2)
        contrastive = nt_xent(z1, z2, cfg.temperature)
        recon = 0.5 * (decoder.loss(z1, bn, bc) + decoder.loss(z2, bn, bc))
        return contrastive + cfg.recon_weight * recon, float(contrastive.detach()), float(recon.detach())

    history: list[dict[str, float]] = []
    best, best_epoch, best_state, bad = math.inf, 0, None, 0
    start = time.monotonic()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        decoder.train()
        perm = torch.randperm(len(tr_num), generator=gen)
        totals = [0.0, 0.0, 0.0]
        for s in range(steps_per_epoch):
            idx = perm[s * batch : (s + 1) * batch]
            loss, c, r = step_loss(tr_num[idx], tr_cat[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            totals[0] += float(loss.detach())
            totals[1] += c
            totals[2] += r
        model.eval()
        decoder.eval()
        with torch.no_grad():
            val = _validate(step_loss, va_num, va_cat, batch) if n_val else totals[0] / steps_per_epoch
        record = {
            "epoch": epoch,
            "train_loss": totals[0] / steps_per_epoch,
            "contrastive": totals[1] / steps_per_epoch,
            "reconstruction": totals[2] / steps_per_epoch,
            "val_loss": val,
            "seconds": time.monotonic() - start,
        }
        history.append(record)
        if progress:
            progress(record)
        logger.info(
            "epoch %d/%d train %.4f val %.4f (%.1fs)",
            epoch,
            cfg.epochs,
            record["train_loss"],
            val,
            record["seconds"],
        )
        if val < best - 1e-4:
            best, best_epoch, bad = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, history, best_epoch, time.monotonic() - start)


def _validate(
    step_loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, float, float]],
    num: torch.Tensor,
    cat: torch.Tensor,
    batch: int,
) -> float:
    """Mean loss over the validation rows, in batches (batches of one row are skipped)."""
    total, count = 0.0, 0
    for s in range(0, len(num), batch):
        bn, bc = num[s : s + batch], cat[s : s + batch]
        if len(bn) < 2:
            continue
        loss, _, _ = step_loss(bn, bc)
        total += float(loss.detach()) * len(bn)
        count += len(bn)
    return total / max(count, 1)
