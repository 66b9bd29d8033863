"""Gated-attention MIL (ABMIL, CLAM settings) for slide labels from frozen patch features."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["AbmilParams", "GatedAttentionMIL", "fit_abmil", "predict_abmil"]


@dataclass(frozen=True, kw_only=True)
class AbmilParams:
    """ABMIL training settings (config key ``evaluate.abmil``).

    Defaults are CLAM's reference settings quoted by UNI: in -> 512 -> 256 gated attention,
    dropout 0.25, Adam lr 1e-4, weight decay 1e-5, one bag per step, early stopping on the
    validation loss (CLAM: patience 20 epochs, not before epoch 50, at most 200 epochs).

    Attributes:
        hidden_dim: width of the patch embedding layer.
        attn_dim: width of the attention branches.
        dropout: dropout after the embedding layer and inside the attention branches.
        lr: Adam learning rate (UNI's later runs sweep 1e-5, 5e-5, 1e-4 on validation).
        weight_decay: Adam L2 weight decay.
        max_epochs: upper bound on passes over the training bags.
        patience: epochs without a lower validation loss before stopping.
        min_epochs: epochs always run before early stopping may trigger.
        num_threads: torch CPU threads while fitting; one bag per step is made of small ops
            that run ~50x slower with 2 threads than 1 on a loaded 2-core machine.
    """

    hidden_dim: int = 512
    attn_dim: int = 256
    dropout: float = 0.25
    lr: float = 1e-4
    weight_decay: float = 1e-5
    max_epochs: int = 200
    patience: int = 20
    min_epochs: int = 50
    num_threads: int = 1

    def __post_init__(self) -> None:
        if min(self.hidden_dim, self.attn_dim, self.max_epochs, self.num_threads) < 1:
            raise ConfigError(
                "evaluate.abmil.hidden_dim/attn_dim/max_epochs/num_threads must be >= 1"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"evaluate.abmil.dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.weight_decay < 0 or self.patience < 1 or self.min_epochs < 0:
            raise ConfigError("evaluate.abmil: lr > 0, weight_decay >= 0, patience >= 1 needed")


class GatedAttentionMIL(nn.Module):
    """Ilse et al.'s gated attention pooling with CLAM's layer sizes, one bag at a time."""

    def __init__(self, in_dim: int, n_classes: int, params: AbmilParams) -> None:
        super().__init__()
        h, a, p = params.hidden_dim, params.attn_dim, params.dropout
        self.embed = nn.Sequential(nn.Linear(in_dim, h), nn.ReLU(), nn.Dropout(p))
        self.attn_tanh = nn.Sequential(nn.Linear(h, a), nn.Tanh(), nn.Dropout(p))
        self.attn_gate = nn.Sequential(nn.Linear(h, a), nn.Sigmoid(), nn.Dropout(p))
        self.attn_score = nn.Linear(a, 1)
        self.classifier = nn.Linear(h, n_classes)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) patch features -> (logits (K,), attention (N,) summing to 1)."""
        hidden = self.embed(bag)  # (N, h)
        scores = self.attn_score(self.attn_tanh(hidden) * self.attn_gate(hidden))  # (N, 1)
        attention = torch.softmax(scores.squeeze(1), dim=0)  # (N,)
        slide = attention @ hidden  # (h,)
        return self.classifier(slide), attention


@dataclass(kw_only=True)
class FitHistory:
    """Per-epoch mean losses and the epoch whose weights were kept."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mean_loss(model: nn.Module, bags: Sequence[torch.Tensor], labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(model(b)[0][None], labels[i : i + 1])
                  for i, b in enumerate(bags)]  # fmt: skip
    return float(torch.stack(losses).mean())


def fit_abmil(
    train_bags: Sequence[np.ndarray],
    train_labels: np.ndarray,
    val_bags: Sequence[np.ndarray],
    val_labels: np.ndarray,
    *,
    n_classes: int,
    params: AbmilParams,
    seed: int,
) -> tuple[GatedAttentionMIL, FitHistory]:
    """Train on one bag per step (shuffled each epoch, seeded); keep the best-val weights.

    Args:
        train_bags: (N_i, D) float32 patch features per training slide.
        train_labels: (S,) class indices.
        val_bags: validation slides (early stopping and model selection only).
        val_labels: their class indices.
        n_classes: K.
        params: settings.
        seed: seeds initialisation, dropout and the bag order.
    """
    if not len(train_bags) or not len(val_bags):
        raise ConfigError("ABMIL needs at least one training and one validation slide")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(), _threads(params.num_threads):
        torch.manual_seed(seed)
        model = GatedAttentionMIL(int(train_bags[0].shape[1]), n_classes, params)
        tr = [torch.from_numpy(np.asarray(b, dtype=np.float32)) for b in train_bags]
        va = [torch.from_numpy(np.asarray(b, dtype=np.float32)) for b in val_bags]
        ytr, yva = torch.as_tensor(train_labels).long(), torch.as_tensor(val_labels).long()
        opt = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        history, best_state, best_val, stale = FitHistory(), None, float("inf"), 0
        for epoch in range(params.max_epochs):
            model.train()
            losses = []
            for i in torch.randperm(len(tr), generator=generator).tolist():
                loss = nn.functional.cross_entropy(model(tr[i])[0][None], ytr[i : i + 1])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            history.train_loss.append(float(np.mean(losses)))
            history.val_loss.append(_mean_loss(model, va, yva))
            if history.val_loss[-1] < best_val:
                best_val, stale, history.best_epoch = history.val_loss[-1], 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            if epoch + 1 >= params.min_epochs and stale >= params.patience:
                logger.info("ABMIL early stop at epoch %s (best %s)", epoch, history.best_epoch)
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, history


def predict_abmil(
    model: GatedAttentionMIL, bags: Sequence[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Class probabilities (S, K) and per-bag attention (N_i,) of each slide."""
    model.eval()
    probs, attention = [], []
    with torch.no_grad(), _threads(1):
        for bag in bags:
            logits, attn = model(torch.from_numpy(np.asarray(bag, dtype=np.float32)))
            probs.append(torch.softmax(logits, dim=0).double().numpy())
            attention.append(attn.numpy())
    return np.stack(probs), attention
