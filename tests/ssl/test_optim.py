"""Tests for the AdamW parameter groups: layer-wise lr decay, patch-embed factor, no-decay rules."""

from __future__ import annotations

import pytest

from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.module import build_student
from unipipe.ssl.optim import layer_id, param_groups

from .conftest import TINY_YAML


@pytest.fixture(scope="module")
def groups_by_name():
    """name -> its group, for the tiny 4-block student."""
    student = build_student(PretrainConfig.from_yaml(TINY_YAML))
    groups = param_groups(student, depth=4, layerwise_decay=0.9, patch_embed_lr_mult=0.2)
    return {name: g for g in groups for name in g["names"]}


@pytest.mark.parametrize(
    ("name", "lr_mult", "wd_mult"),
    [
        ("backbone.vit.patch_embed.proj.weight", 0.9**5 * 0.2, 1.0),
        ("backbone.vit.patch_embed.proj.bias", 0.9**5 * 0.2, 0.0),
        ("backbone.vit.cls_token", 0.9**5, 1.0),
        ("backbone.mask_token", 0.9**5, 1.0),
        ("backbone.vit.blocks.0.attn.qkv.weight", 0.9**4, 1.0),
        ("backbone.vit.blocks.3.mlp.fc1.weight", 0.9**1, 1.0),
        ("backbone.vit.blocks.3.ls1.gamma", 0.9**1, 0.0),
        ("backbone.vit.blocks.2.norm1.weight", 0.9**2, 0.0),
        ("backbone.vit.norm.weight", 1.0, 0.0),
        ("dino_head.mlp.0.weight", 1.0, 1.0),
        ("dino_head.mlp.0.bias", 1.0, 0.0),
    ],
)
def test_param_groups_multipliers(groups_by_name, name, lr_mult, wd_mult):
    """lr multiplier 0.9 ** (depth + 1 - layer), x0.2 for the patch embedding; no wd on 1-D kinds."""
    group = groups_by_name[name]
    assert group["lr_mult"] == pytest.approx(lr_mult)
    assert group["wd_mult"] == wd_mult


def test_param_groups_mark_prototype_layer_and_skip_frozen_norm(groups_by_name):
    """The prototype directions are flagged last-layer; their fixed norm is not optimised."""
    protos = "dino_head.last_layer.parametrizations.weight.original1"
    assert groups_by_name[protos]["is_last_layer"]
    assert "dino_head.last_layer.parametrizations.weight.original0" not in groups_by_name
    assert (
        sum(g["is_last_layer"] for g in {id(g): g for g in groups_by_name.values()}.values()) == 1
    )


def test_layer_id_heads_after_backbone():
    """Head parameters share the top layer id even if their names contain 'blocks.'."""
    assert layer_id("dino_head.blocks.0.weight", 24) == 25
    assert layer_id("backbone.vit.blocks.23.mlp.fc2.weight", 24) == 24
