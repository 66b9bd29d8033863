"""A timm ViT run token by token: iBOT mask tokens and DINOv2's batch-subset stochastic depth."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["BackboneOutput", "MaskedViT", "subset_residual"]


class BackboneOutput(NamedTuple):
    """Normalised tokens of one forward pass."""

    cls: torch.Tensor  # (B, D)
    patch: torch.Tensor  # (B, N, D), N = h * w patches in row-major order


def subset_residual(
    x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor], drop_rate: float
) -> torch.Tensor:
    """x + branch(x) where, in training, only a random (1 - drop_rate) subset of samples runs.

    The subset's residual is scaled by B / kept so the expectation equals the full residual;
    the dropped samples pass through unchanged. This saves the dropped samples' compute,
    unlike masking (how DINOv2 applies drop path).
    """
    batch = x.shape[0]
    keep = max(int(batch * (1.0 - drop_rate)), 1)
    if drop_rate <= 0.0 or keep >= batch:
        return x + branch(x)
    idx = torch.randperm(batch, device=x.device)[:keep]  # (keep,)
    residual = branch(x[idx])
    return torch.index_add(x, 0, idx, residual.to(x.dtype), alpha=batch / keep)


def _subset_block_forward(block: nn.Module, x: torch.Tensor, rate: float) -> torch.Tensor:
    """A timm ``Block`` with both residual branches run on batch subsets (drop path ``rate``)."""
    x = subset_residual(x, lambda y: block.ls1(block.attn(block.norm1(y))), rate)
    return subset_residual(x, lambda y: block.ls2(block.mlp(block.norm2(y))), rate)


class MaskedViT(nn.Module):
    """Wraps a timm ``VisionTransformer`` (built with ``dynamic_img_size=True``, no drop path).

    Args:
        vit: the timm model; its weights are the exported encoder.
        drop_path_rate: stochastic depth rate of every block (``drop_path_uniform``, DINOv2's
            ViT-L setting) or of the last block with block i at rate * i / (depth - 1).
        drop_path_uniform: the same rate in every block.
        sdpa: use torch's fused scaled-dot-product attention in every block.
    """

    def __init__(
        self,
        vit: nn.Module,
        *,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        sdpa: bool = True,
    ) -> None:
        super().__init__()
        self.vit = vit
        depth = len(vit.blocks)
        if drop_path_uniform:
            self.drop_rates = [drop_path_rate] * depth
        else:
            self.drop_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.mask_token = nn.Parameter(torch.zeros(1, vit.embed_dim))
        for block in vit.blocks:
            if hasattr(block.attn, "fused_attn"):
                block.attn.fused_attn = sdpa
            # A method of the block itself, not of this wrapper: FSDP2 gathers a block's
            # weights around its registered forward methods (see DINOv2Module.configure_model).
            block.subset_forward = types.MethodType(_subset_block_forward, block)

    @property
    def embed_dim(self) -> int:
        """Token width D."""
        return int(self.vit.embed_dim)

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.vit.blocks)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> BackboneOutput:
        """Encode (B, 3, H, W) images; ``masks`` (B, h*w) bool replaces patches by the mask token."""
        vit = self.vit
        x = vit.patch_embed(images)  # (B, h, w, D) with dynamic_img_size
        if masks is not None:
            grid = masks.view(x.shape[0], x.shape[1], x.shape[2], 1)
            x = torch.where(grid, self.mask_token.to(x.dtype).view(1, 1, 1, -1), x)
        x = vit._pos_embed(x)  # (B, prefix + N, D), pos-embed interpolated to (h, w)
        x = vit.norm_pre(vit.patch_drop(x))
        for block, rate in zip(vit.blocks, self.drop_rates, strict=True):
            x = block.subset_forward(x, rate if self.training else 0.0)
        x = vit.norm(x)
        return BackboneOutput(cls=x[:, 0], patch=x[:, vit.num_prefix_tokens :])
