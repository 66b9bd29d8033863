"""Tests for iBOT block masks and the spread of mask ratios over a batch."""

from __future__ import annotations

import pytest
import torch

from unipipe.ssl.config import MaskConfig
from unipipe.ssl.masking import block_mask, mask_ratios, seeded_generator


def test_mask_ratios_half_masked_spread_evenly():
    """Half the crops are masked, one ratio from each equal sub-interval of [0.1, 0.5]."""
    ratios = mask_ratios(64, MaskConfig(), seeded_generator(0))
    masked = ratios[ratios > 0].sort().values
    assert masked.numel() == 32
    edges = torch.linspace(0.1, 0.5, 33)
    assert bool(((masked >= edges[:-1]) & (masked <= edges[1:])).all())


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_block_mask_reaches_target_within_one_block(ratio):
    """The masked count never exceeds the target and falls short by less than a block."""
    cfg = MaskConfig()
    for seed in range(20):
        target = int(196 * ratio)
        mask = block_mask(14, 14, target, cfg, seeded_generator(seed))
        assert mask.shape == (196,)
        assert target - cfg.min_patches < int(mask.sum()) <= target


def test_block_mask_is_made_of_blocks():
    """A masked patch usually has a masked 4-neighbour (blocks, not scattered pixels)."""
    mask = block_mask(14, 14, 60, MaskConfig(), seeded_generator(1)).view(14, 14)
    padded = torch.nn.functional.pad(mask.float()[None, None], (1, 1, 1, 1))[0, 0]
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    assert float((neighbours[mask] > 0).float().mean()) > 0.9


def test_block_mask_seeded_reproducible():
    """The same generator seed gives the same mask."""
    a = block_mask(7, 7, 20, MaskConfig(), seeded_generator(3, 4))
    b = block_mask(7, 7, 20, MaskConfig(), seeded_generator(3, 4))
    assert torch.equal(a, b)
