"""A timm ViT run token by token: iBOT mask tokens and DINOv2's batch-subset stochastic depth."""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
from timm.models.vision_transformer import Attention
from torch import nn

__all__ = ["BackboneOutput", "MaskedViT", "subset_residual"]

# Compiled trunks, kept off the module so that parameter names, state dicts and deep copies
# (the teacher is one) are those of the eager model; a copy runs eagerly until compiled.
_COMPILED_TRUNKS: weakref.WeakKeyDictionary[nn.Module, Callable[..., torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


class BackboneOutput(NamedTuple):
    """Normalised tokens of one forward pass."""

    cls: torch.Tensor  # (B, D)
    # (B, N, D), N = h * w patches in row-major order; with ``select``, only the selected
    # patches as (M, D), in the order of ``patch[select]``.
    patch: torch.Tensor


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


def _subset(batch: int, drop_rate: float, device: torch.device) -> torch.Tensor | None:
    """The samples a residual branch runs on, drawn exactly as :func:`subset_residual` does."""
    keep = max(int(batch * (1.0 - drop_rate)), 1)
    if drop_rate <= 0.0 or keep >= batch:
        return None
    return torch.randperm(batch, device=device)[:keep]


_ATTENTION_PARTS = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop")


def _plain_attention(attn: nn.Module) -> bool:
    """timm's ``Attention`` without a gate: what :func:`_attention_values` reproduces.

    The parts are checked too: older timm releases lack the output norm and ``attn_dim``.
    """
    parts = _ATTENTION_PARTS + ("num_heads", "head_dim", "attn_dim")
    return (
        type(attn) is Attention
        and getattr(attn, "gate", None) is None
        and all(hasattr(attn, name) for name in parts)
    )


def _attention_values(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Attention`` up to its output projection: (B, T, D) -> (B, T, attn_dim)."""
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    return attn.norm(out.transpose(1, 2).reshape(b, t, attn.attn_dim))


def _selected_block_forward(
    block: nn.Module, x: torch.Tensor, rate: float, flat: torch.Tensor
) -> torch.Tensor:
    """The last block computed only where its output is used: (B, T, D) -> (M, D).

    ``flat`` (M,) indexes the needed tokens of the flattened (B * T) batch. Attention still
    reads every token's keys and values, but the output projection, the MLP and both
    residual adds run on the M needed tokens only: that skips about half of the block's
    work for a 224-px crop with a 30% iBOT mask, two thirds for an unmasked or local crop
    whose CLS token alone is read. The batch subsets of drop path are drawn as
    in :func:`_subset_block_forward`, so the result equals that block's output at these
    tokens.
    """
    if not _plain_attention(block.attn):  # a variant whose internals are not mirrored here
        return block.subset_forward(x, rate).flatten(0, 1)[flat]
    batch, tokens = x.shape[:2]
    sample = torch.div(flat, tokens, rounding_mode="floor")  # (M,)
    out = x.flatten(0, 1)[flat]  # (M, D) residual stream at the needed tokens

    idx = _subset(batch, rate, x.device)
    values = _attention_values(block.attn, block.norm1(x if idx is None else x[idx]))
    if idx is None:
        rows, where, alpha = flat, None, 1.0
    else:
        slot = torch.full((batch,), -1, dtype=torch.long, device=x.device)
        slot[idx] = torch.arange(idx.shape[0], device=x.device)
        where = (slot[sample] >= 0).nonzero().squeeze(1)  # needed tokens of run samples
        rows = slot[sample[where]] * tokens + flat[where] % tokens
        alpha = batch / idx.shape[0]
    residual = block.ls1(block.attn.proj_drop(block.attn.proj(values.flatten(0, 1)[rows])))
    out = _add_rows(out, where, residual, alpha)

    idx = _subset(batch, rate, x.device)
    if idx is None:
        where, alpha = None, 1.0
    else:
        where = torch.isin(sample, idx).nonzero().squeeze(1)
        alpha = batch / idx.shape[0]
    branch_in = out if where is None else out[where]
    return _add_rows(out, where, block.ls2(block.mlp(block.norm2(branch_in))), alpha)


def _add_rows(
    x: torch.Tensor, rows: torch.Tensor | None, residual: torch.Tensor, alpha: float
) -> torch.Tensor:
    residual = residual.to(x.dtype)
    if rows is None:
        return x + residual if alpha == 1.0 else x + alpha * residual
    return torch.index_add(x, 0, rows, residual, alpha=alpha)


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
            block.selected_forward = types.MethodType(_selected_block_forward, block)

    @property
    def embed_dim(self) -> int:
        """Token width D."""
        return int(self.vit.embed_dim)

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.vit.blocks)

    def compile_trunk(self) -> None:
        """Compile :meth:`trunk` with inductor, one static graph per crop shape and mode.

        A run sees few shapes (global, local and the high-res phase's crops; the loader
        drops incomplete batches), and dynamic shapes fail: inductor cannot schedule the
        batch-subset drop path once the batch size is symbolic ("topological sort did not
        consume all nodes", torch 2.14). The last block stays eager: its token selection
        depends on the masks, which would break the graph every step.
        """
        _COMPILED_TRUNKS[self] = torch.compile(self.trunk, dynamic=False)

    @property
    def compiled(self) -> bool:
        """Whether :meth:`compile_trunk` was called on this module."""
        return self in _COMPILED_TRUNKS

    def _drop_rates(self) -> list[float]:
        return [rate if self.training else 0.0 for rate in self.drop_rates]

    def trunk(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, T, D) after every block but the last (not normalised).

        Args:
            images: (B, 3, H, W) crops.
            masks: (B, h*w) bool, patches replaced by the mask token (iBOT).
        """
        vit = self.vit
        x = vit.patch_embed(images)  # (B, h, w, D) with dynamic_img_size
        if masks is not None:
            grid = masks.view(x.shape[0], x.shape[1], x.shape[2], 1)
            x = torch.where(grid, self.mask_token.to(x.dtype).view(1, 1, 1, -1), x)
        x = vit._pos_embed(x)  # (B, prefix + N, D), pos-embed interpolated to (h, w)
        x = vit.norm_pre(vit.patch_drop(x))
        blocks = list(vit.blocks)[:-1]
        for block, rate in zip(blocks, self._drop_rates()[:-1], strict=True):
            x = block.subset_forward(x, rate)
        return x

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        select: torch.Tensor | None = None,
    ) -> BackboneOutput:
        """Encode (B, 3, H, W) images.

        Args:
            images: the crops.
            masks: (B, h*w) bool, patches replaced by the mask token (iBOT).
            select: (B, h*w) bool, the only patch tokens the caller will use; the CLS token
                is always returned. The last block then skips the rest (see
                :func:`_selected_block_forward`) and ``patch`` is ``(M, D)``.
        """
        vit = self.vit
        x = _COMPILED_TRUNKS.get(self, self.trunk)(images, masks)
        last, rate = vit.blocks[-1], self._drop_rates()[-1]
        if select is None:
            x = vit.norm(last.subset_forward(x, rate))
            return BackboneOutput(cls=x[:, 0], patch=x[:, vit.num_prefix_tokens :])

        prefix = vit.num_prefix_tokens
        needed = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, T)
        needed[:, 0] = True  # CLS; register tokens serve only as keys and values
        needed[:, prefix:] = select
        flat = needed.flatten().nonzero().squeeze(1)  # (M + B,) row-major
        out = vit.norm(last.selected_forward(x, rate, flat))  # (M + B, D)
        counts = needed.sum(dim=1)
        is_cls = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
        is_cls[counts.cumsum(0) - counts] = True  # each sample's first needed token
        return BackboneOutput(cls=out[is_cls], patch=out[~is_cls])
