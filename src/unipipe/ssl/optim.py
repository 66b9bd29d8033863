"""AdamW parameter groups: layer-wise lr decay, patch-embed lr factor, no decay on biases/norms."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

__all__ = ["layer_id", "param_groups"]

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
# Backbone parameters that sit before the first block (layer 0).
_EMBED_NAMES = ("patch_embed", "pos_embed", "cls_token", "reg_token", "mask_token")


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i + 1 for block i, depth + 1 for the final norm and the heads."""
    if name.startswith("backbone.") and any(key in name for key in _EMBED_NAMES):
        return 0
    match = _BLOCK.search(name)
    if name.startswith("backbone.") and match:
        return int(match.group(1)) + 1
    return depth + 1


def _no_weight_decay(name: str) -> bool:
    # DINOv2's rule: biases, norm layers and LayerScale gammas are not decayed.
    return name.endswith(".bias") or "norm" in name or "gamma" in name


def param_groups(
    student: nn.Module, *, depth: int, layerwise_decay: float, patch_embed_lr_mult: float
) -> list[dict[str, Any]]:
    """Group the trainable parameters of ``student`` (children ``backbone`` and heads).

    Each group carries ``lr_mult`` (layerwise_decay ** (depth + 1 - layer_id), times
    ``patch_embed_lr_mult`` for the patch embedding), ``wd_mult`` (0 or 1) and
    ``is_last_layer`` (prototype layers, frozen early on); the training loop sets
    ``lr = lr_mult * lr(step)`` and ``weight_decay = wd_mult * wd(step)`` every step.
    """
    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}
    for name, param in student.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult = layerwise_decay ** (depth + 1 - layer_id(name, depth))
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if _no_weight_decay(name) else 1.0
        key = (lr_mult, wd_mult, "last_layer" in name)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr_mult": key[0],
                "wd_mult": key[1],
                "is_last_layer": key[2],
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())
