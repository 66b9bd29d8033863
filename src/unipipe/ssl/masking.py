"""iBOT block-wise masks on the patch grid, with mask ratios spread evenly over a global batch."""

from __future__ import annotations

import math

import numpy as np
import torch

from unipipe.ssl.config import MaskConfig

__all__ = ["block_mask", "mask_ratios", "seeded_generator"]

_BLOCK_ATTEMPTS = 10


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator whose seed mixes ``keys`` (e.g. run seed, sample position, crop)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _rand(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _add_block(mask: torch.Tensor, budget: int, cfg: MaskConfig, gen: torch.Generator) -> int:
    """Mask one random rectangle adding 1..budget new patches; returns how many were added."""
    grid_h, grid_w = mask.shape
    for _ in range(_BLOCK_ATTEMPTS):
        area = _rand(gen, cfg.min_patches, budget)
        log_aspect = _rand(gen, -math.log(cfg.max_aspect), math.log(cfg.max_aspect))
        h = round(math.sqrt(area * math.exp(log_aspect)))
        w = round(math.sqrt(area / math.exp(log_aspect)))
        if not (0 < h < grid_h and 0 < w < grid_w):
            continue
        top = int(torch.randint(0, grid_h - h + 1, (), generator=gen))
        left = int(torch.randint(0, grid_w - w + 1, (), generator=gen))
        window = mask[top : top + h, left : left + w]
        new = int((~window).sum())
        if 0 < new <= budget:
            window[:] = True
            return new
    return 0


def block_mask(
    grid_h: int, grid_w: int, n_target: int, cfg: MaskConfig, gen: torch.Generator
) -> torch.Tensor:
    """(grid_h * grid_w,) bool mask made of rectangles, masking at most ``n_target`` patches.

    Blocks of at least ``cfg.min_patches`` patches and aspect within ``cfg.max_aspect`` are
    added until the target is met or no block fits the remaining budget, so the count can
    fall short of the target by less than one block.
    """
    mask = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    count = 0
    while count < n_target:
        budget = n_target - count
        if budget < cfg.min_patches:
            break
        added = _add_block(mask, budget, cfg, gen)
        if added == 0:
            break
        count += added
    return mask.flatten()


def mask_ratios(n_crops: int, cfg: MaskConfig, gen: torch.Generator) -> torch.Tensor:
    """(n_crops,) target mask ratio per global crop of a global batch; 0 = not masked.

    ``int(n_crops * sample_prob)`` crops are masked, their ratios drawn one from each of the
    equal sub-intervals of [ratio_min, ratio_max]; which crops get which ratio is shuffled.
    """
    n_masked = int(n_crops * cfg.sample_prob)
    edges = torch.linspace(cfg.ratio_min, cfg.ratio_max, n_masked + 1)
    ratios = torch.zeros(n_crops)
    if n_masked:
        u = torch.rand(n_masked, generator=gen)
        ratios[:n_masked] = edges[:-1] + u * (edges[1:] - edges[:-1])
    return ratios[torch.randperm(n_crops, generator=gen)]
