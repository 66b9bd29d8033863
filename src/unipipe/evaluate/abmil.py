"""Gated-attention MIL (ABMIL, CLAM settings) for slide labels from frozen patch features."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from unipipe.config import build_params
from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "AbmilParams",
    "FitHistory",
    "GatedAttentionMIL",
    "SweepHistory",
    "abmil_sweep_protocol",
    "fit_abmil",
    "fit_abmil_epochs",
    "predict_abmil",
    "sweep_abmil",
]


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
        lr: Adam learning rate of a single fit (protocol ``abmil`` and the few-shot runs).
        lrs: learning rates tried by the sweep (protocol ``abmil_sweep``), each fitted with
            early stopping; the one with the lowest validation loss wins, ties going to the
            smaller rate. Default: the grid of UNI's later runs. Stored sorted, without
            repeats; ``lr`` need not be one of them.
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
    lrs: tuple[float, ...] = (1e-5, 5e-5, 1e-4)
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
        object.__setattr__(self, "lrs", _sweep_grid(self.lrs))


def _sweep_grid(lrs: Any) -> tuple[float, ...]:
    """The sweep's rates as sorted distinct floats (YAML may hand over '1e-5' as text)."""
    values = [lrs] if isinstance(lrs, str | int | float) else list(lrs)
    try:
        grid = sorted({float(v) for v in values})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"evaluate.abmil.lrs must be a list of numbers, got {lrs!r}") from err
    if not grid or not all(math.isfinite(v) and v > 0 for v in grid):
        raise ConfigError(f"evaluate.abmil.lrs needs one or more rates > 0, got {lrs!r}")
    return tuple(grid)


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
    """Per-epoch mean losses and the epoch whose weights were kept.

    Attributes:
        train_loss: mean training loss of each epoch run.
        val_loss: mean validation loss after each epoch (empty for fixed-epoch fits).
        best_epoch: epoch whose weights were kept; -1 when no epoch gave a finite loss.
        diverged: the training loss became NaN or infinite and training stopped there.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    diverged: bool = False

    @property
    def best_val_loss(self) -> float:
        """Validation loss of the kept weights; +inf when there is none."""
        return (
            self.val_loss[self.best_epoch] if self.best_epoch >= 0 and self.val_loss else math.inf
        )


@dataclass(kw_only=True)
class SweepHistory:
    """One early-stopped fit per learning rate and the rate that was kept.

    Attributes:
        lrs: the rates tried, ascending.
        fits: the FitHistory of each rate, in the order of ``lrs``.
        chosen_lr: the rate with the lowest best validation loss (ties: the smaller rate).
    """

    lrs: list[float]
    fits: list[FitHistory]
    chosen_lr: float

    def summary(self) -> list[dict[str, Any]]:
        """JSON-ready rows: lr, best validation loss (None if it diverged), epochs."""
        return [
            {
                "lr": lr,
                "best_val_loss": fit.best_val_loss if math.isfinite(fit.best_val_loss) else None,
                "best_epoch": fit.best_epoch,
                "epochs_run": len(fit.train_loss),
                "diverged": fit.diverged,
            }
            for lr, fit in zip(self.lrs, self.fits, strict=True)
        ]


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


def _train_epoch(
    model: nn.Module, opt: torch.optim.Optimizer, bags: Sequence[torch.Tensor],
    labels: torch.Tensor, generator: torch.Generator,
) -> float:  # fmt: skip
    """One pass, one bag per step in a seeded random order; the mean training loss."""
    model.train()
    losses = []
    for i in torch.randperm(len(bags), generator=generator).tolist():
        loss = nn.functional.cross_entropy(model(bags[i])[0][None], labels[i : i + 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _fit(
    train_bags: Sequence[np.ndarray], train_labels: np.ndarray,
    val_bags: Sequence[np.ndarray], val_labels: np.ndarray,
    *, n_classes: int, params: AbmilParams, lr: float, epochs: int, seed: int,
) -> tuple[GatedAttentionMIL, FitHistory]:  # fmt: skip
    """Train at ``lr``; with val bags stop early and keep the best-val weights, else the last.

    A non-finite training loss ends the fit (``diverged``): later epochs could only repeat
    it. With val bags and no finite val loss the last weights come back with
    ``best_epoch`` -1; callers decide whether that is an error.
    """
    early = len(val_bags) > 0
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(), _threads(params.num_threads):
        torch.manual_seed(seed)
        model = GatedAttentionMIL(int(train_bags[0].shape[1]), n_classes, params)
        tr = [torch.from_numpy(np.asarray(b, dtype=np.float32)) for b in train_bags]
        va = [torch.from_numpy(np.asarray(b, dtype=np.float32)) for b in val_bags]
        ytr, yva = torch.as_tensor(train_labels).long(), torch.as_tensor(val_labels).long()
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=params.weight_decay)
        history, best_state, best_val, stale = FitHistory(), None, math.inf, 0
        for epoch in range(epochs):
            history.train_loss.append(_train_epoch(model, opt, tr, ytr, generator))
            if not math.isfinite(history.train_loss[-1]):
                history.diverged = True
                logger.warning("ABMIL at lr %s diverged in epoch %s", lr, epoch)
                break
            if not early:
                history.best_epoch = epoch
                continue
            history.val_loss.append(_mean_loss(model, va, yva))
            # NaN compares False, so a diverged epoch is never kept.
            if history.val_loss[-1] < best_val:
                best_val, stale, history.best_epoch = history.val_loss[-1], 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            if epoch + 1 >= params.min_epochs and stale >= params.patience:
                logger.info("ABMIL early stop at epoch %s (best %s)", epoch, history.best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


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
    """Train at ``params.lr`` with early stopping on val; keep the best-val weights.

    One bag per step, shuffled each epoch (seeded).

    Args:
        train_bags: (N_i, D) float32 patch features per training slide.
        train_labels: (S,) class indices.
        val_bags: validation slides (early stopping and model selection only).
        val_labels: their class indices.
        n_classes: K.
        params: settings.
        seed: seeds initialisation, dropout and the bag order.

    Raises:
        ConfigError: no training or validation slide, or no epoch gave a finite validation
            loss (a rate too high for these features, or NaN in the validation bags).
    """
    if not len(train_bags) or not len(val_bags):
        raise ConfigError("ABMIL needs at least one training and one validation slide")
    model, history = _fit(train_bags, train_labels, val_bags, val_labels, n_classes=n_classes,
                          params=params, lr=params.lr, epochs=params.max_epochs, seed=seed)  # fmt: skip
    if history.best_epoch < 0:
        raise ConfigError(
            f"ABMIL at lr {params.lr} gave no finite validation loss: lower evaluate.abmil.lr, "
            "or check the validation bags for NaN features"
        )
    return model, history


def fit_abmil_epochs(
    train_bags: Sequence[np.ndarray],
    train_labels: np.ndarray,
    *,
    n_classes: int,
    params: AbmilParams,
    epochs: int,
    seed: int,
) -> tuple[GatedAttentionMIL, FitHistory]:
    """Train at ``params.lr`` for exactly ``epochs`` epochs and keep the last weights.

    For support sets too small to hold out validation slides (few-shot, K = 1 slide per
    class); ``params.max_epochs``, ``patience`` and ``min_epochs`` are not used.

    Raises:
        ConfigError: no training slide, ``epochs`` < 1, or the training loss diverged.
    """
    if not len(train_bags) or epochs < 1:
        raise ConfigError(f"ABMIL needs >= 1 training slide and epochs >= 1, got {epochs}")
    model, history = _fit(train_bags, train_labels, [], np.zeros(0, np.int64),
                          n_classes=n_classes, params=params, lr=params.lr, epochs=epochs,
                          seed=seed)  # fmt: skip
    if history.diverged:
        raise ConfigError(f"ABMIL at lr {params.lr} diverged; lower evaluate.abmil.lr")
    return model, history


def sweep_abmil(
    train_bags: Sequence[np.ndarray],
    train_labels: np.ndarray,
    val_bags: Sequence[np.ndarray],
    val_labels: np.ndarray,
    *,
    n_classes: int,
    params: AbmilParams,
    seed: int,
) -> tuple[GatedAttentionMIL, SweepHistory]:
    """Fit once per rate in ``params.lrs`` (each early-stopped); keep the lowest-val-loss one.

    Every rate starts from the same seed (same initial weights, dropout masks and bag
    order), so rates are compared on equal terms and the result is deterministic. The kept
    model is that rate's best-val weights; nothing is refitted. A rate that diverges counts
    as an infinite loss.

    Raises:
        ConfigError: no training or validation slide, or every rate diverged.
    """
    if not len(train_bags) or not len(val_bags):
        raise ConfigError("ABMIL needs at least one training and one validation slide")
    best_model, best_loss, chosen, fits = None, math.inf, None, []
    for lr in params.lrs:
        model, history = _fit(train_bags, train_labels, val_bags, val_labels,
                              n_classes=n_classes, params=params, lr=lr,
                              epochs=params.max_epochs, seed=seed)  # fmt: skip
        fits.append(history)
        logger.info("ABMIL lr %s: best val loss %s at epoch %s", lr, history.best_val_loss,
                    history.best_epoch)  # fmt: skip
        # Ascending rates and a strict '<' send ties to the smaller rate.
        if history.best_val_loss < best_loss:
            best_model, best_loss, chosen = model, history.best_val_loss, lr
    if best_model is None:
        raise ConfigError(
            f"ABMIL diverged at every rate of evaluate.abmil.lrs {list(params.lrs)}; "
            "add smaller rates"
        )
    return best_model, SweepHistory(lrs=list(params.lrs), fits=fits, chosen_lr=chosen)


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


def abmil_sweep_protocol(
    data: Any, params: Mapping[str, Any], seed: int
) -> tuple[np.ndarray, dict]:
    """Slide protocol ``abmil_sweep``: the lr sweep on the validation slides, then test.

    Args:
        data: train / y_train / val / y_val / test bags and n_classes (slides._SlideData).
        params: the ``evaluate`` section; its ``abmil`` sub-section gives AbmilParams.
        seed: seeds every fit of the sweep.

    Returns:
        Test probabilities (S_test, K) and ``params``, ``extra`` (chosen_lr, one row per
        rate with its best validation loss, best_epoch and epochs_run of the kept fit) and
        ``heatmaps`` (attention of each test slide).
    """
    p = build_params(AbmilParams, params.get("abmil"), "evaluate.abmil")
    model, sweep = sweep_abmil(data.train, data.y_train, data.val, data.y_val,
                               n_classes=data.n_classes, params=p, seed=seed)  # fmt: skip
    probs, attention = predict_abmil(model, data.test)
    kept = sweep.fits[sweep.lrs.index(sweep.chosen_lr)]
    extra = {"chosen_lr": sweep.chosen_lr, "lr_sweep": sweep.summary(),
             "best_epoch": kept.best_epoch, "epochs_run": len(kept.train_loss)}  # fmt: skip
    return probs, {"params": p, "extra": extra, "heatmaps": attention}
