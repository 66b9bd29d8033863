"""Tests for building, exporting and reloading timm ViT encoders."""

from __future__ import annotations

import json
import os
import stat

import pytest
import timm
import torch
from safetensors.torch import load_file

from unipipe.errors import ConfigError
from unipipe.models import build_vit, load_encoder, save_encoder

TINY = {"img_size": 64, "patch_size": 16, "embed_dim": 48, "depth": 2, "num_heads": 2}


def _export(tmp_path):
    torch.manual_seed(0)
    model = build_vit("vit_small_patch16_224", init_values=1e-5, **TINY).eval()
    meta = save_encoder(
        model,
        tmp_path / "encoder.safetensors",
        tmp_path / "encoder.json",
        arch="vit_small_patch16_224",
        kwargs={"init_values": 1e-5, **TINY},
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        patch_size=16,
        img_size=64,
    )
    return model, meta


def test_build_vit_returns_cls_embedding_at_any_size():
    """The model has no head and accepts inputs other than its nominal size."""
    model = build_vit("vit_small_patch16_224", **TINY).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 48)
        assert model(torch.zeros(1, 3, 96, 128)).shape == (1, 48)


def test_build_vit_rejects_pretrained_and_unknown_arch():
    """Asking for downloaded weights or a non-timm name is a ConfigError."""
    with pytest.raises(ConfigError, match="pretrained"):
        build_vit("vit_small_patch16_224", pretrained=True)
    with pytest.raises(ConfigError, match="not a timm model"):
        build_vit("vit_nonexistent_patch99")


def test_save_load_encoder_round_trip_equal_outputs(tmp_path):
    """The reloaded encoder gives the same embeddings and metadata."""
    model, meta = _export(tmp_path)
    loaded, meta2 = load_encoder(tmp_path / "encoder.json")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert meta2 == meta
    assert meta.embed_dim == 48


def test_save_encoder_json_keys_and_plain_timm_load(tmp_path):
    """timm alone loads the safetensors into create_model(arch, **kwargs)."""
    model, _ = _export(tmp_path)
    payload = json.loads((tmp_path / "encoder.json").read_text())
    keys = {"arch", "kwargs", "mean", "std", "patch_size", "img_size", "embed_dim", "source"}
    assert keys <= set(payload)
    plain = timm.create_model(payload["arch"], pretrained=False, **payload["kwargs"]).eval()
    plain.load_state_dict(load_file(tmp_path / "encoder.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_save_encoder_weights_follow_the_umask(tmp_path, umask):
    """The weights are readable as the umask allows, like every other output (safetensors
    alone writes 0600, so colleagues could not read a shared run's encoder)."""
    model = build_vit("vit_tiny_patch16_224", img_size=32)
    old = os.umask(umask)
    try:
        save_encoder(
            model, tmp_path / "e.safetensors", tmp_path / "e.json", arch="vit_tiny_patch16_224",
            kwargs={"img_size": 32}, mean=(0.5,) * 3, std=(0.5,) * 3, patch_size=16, img_size=32,
        )  # fmt: skip
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "e.safetensors").stat().st_mode) == 0o666 & ~umask
