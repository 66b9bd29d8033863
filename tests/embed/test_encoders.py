"""Tests of unipipe.embed.encoders: the pretrained / checkpoint / random registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from unipipe.embed.encoders import (
    ENCODER_KINDS,
    UNI_ARCH,
    UNI_KWARGS,
    check_checkpoint_path,
    resolve_encoder,
)
from unipipe.errors import ConfigError
from unipipe.models import build_vit, save_encoder

# UNI's ViT-L/16 key layout (init_values -> LayerScale) at a CPU-test size.
TINY_KWARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2, "init_values": 1e-5}


def _spec(kind: str, tmp_path: Path) -> dict:
    model = build_vit(UNI_ARCH, **TINY_KWARGS)
    if kind == "pretrained":
        save_encoder(
            model,
            tmp_path / "enc.safetensors",
            tmp_path / "enc.json",
            arch=UNI_ARCH,
            kwargs=TINY_KWARGS,
            mean=(0.5,) * 3,
            std=(0.25,) * 3,
            patch_size=16,
            img_size=224,
        )
        return {"kind": "pretrained", "encoder_json": str(tmp_path / "enc.json")}
    if kind == "checkpoint":
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
        return {
            "kind": kind,
            "path": str(tmp_path / "pytorch_model.bin"),
            "arch": UNI_ARCH,
            "kwargs": TINY_KWARGS,
        }
    return {"kind": kind, "arch": UNI_ARCH, "kwargs": TINY_KWARGS, "seed": 3}


@pytest.mark.parametrize("kind", sorted(ENCODER_KINDS))
def test_resolve_encoder_every_kind_embeds(kind: str, tmp_path: Path) -> None:
    """Every kind returns an eval-mode model giving (B, D) CLS embeddings at 224 and 448."""
    model, meta = resolve_encoder("enc", _spec(kind, tmp_path))
    assert not model.training
    assert meta.embed_dim == 32
    assert meta.patch_size == 16
    with torch.inference_mode():
        for side in (224, 448):
            assert model(torch.zeros(2, 3, side, side)).shape == (2, 32)


def test_checkpoint_key_layout_matches_uni_vitl() -> None:
    """The tiny test arch has exactly UNI's ViT-L/16 state-dict key names (block 0 + stem)."""
    with torch.device("meta"):
        full = timm.create_model(UNI_ARCH, pretrained=False, num_classes=0, **UNI_KWARGS)
    tiny = build_vit(UNI_ARCH, **TINY_KWARGS)
    full_keys = {k for k in full.state_dict() if not k.startswith("blocks.") or ".0." in k[:9]}
    assert set(tiny.state_dict()) == full_keys
    assert "blocks.0.ls1.gamma" in full_keys
    assert full.num_features == 1024


def test_checkpoint_weights_are_loaded(tmp_path: Path) -> None:
    """The checkpoint kind reproduces the saved model's outputs exactly."""
    spec = _spec("checkpoint", tmp_path)
    ref = build_vit(UNI_ARCH, **TINY_KWARGS)
    ref.load_state_dict(torch.load(spec["path"], weights_only=True))
    model, _ = resolve_encoder("uni", spec)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref.eval()(x))


def test_checkpoint_wrong_arch_names_keys(tmp_path: Path) -> None:
    """A state dict that does not fit the arch raises ConfigError naming the fix."""
    spec = _spec("checkpoint", tmp_path)
    spec["kwargs"] = {**TINY_KWARGS, "init_values": None}
    with pytest.raises(ConfigError, match="ls1.gamma"):
        resolve_encoder("uni", spec)


def test_checkpoint_missing_file_says_download_yourself(tmp_path: Path) -> None:
    """A missing checkpoint path raises ConfigError naming the config key."""
    with pytest.raises(ConfigError, match="encoders.uni.path"):
        resolve_encoder("uni", {"kind": "checkpoint", "path": str(tmp_path / "none.bin")})


def test_random_is_seeded(tmp_path: Path) -> None:
    """Same seed gives identical weights, another seed different ones."""
    spec = _spec("random", tmp_path)
    a, _ = resolve_encoder("r", spec)
    b, _ = resolve_encoder("r", spec)
    c, _ = resolve_encoder("r", {**spec, "seed": 4})
    torch.testing.assert_close(a.pos_embed, b.pos_embed)
    assert not torch.equal(a.pos_embed, c.pos_embed)


def test_resolve_encoder_unknown_kind_lists_kinds() -> None:
    """An unknown kind raises ConfigError listing the registered kinds."""
    with pytest.raises(ConfigError, match="checkpoint"):
        resolve_encoder("x", {"kind": "hub"})


def _bad_checkpoint(kind: str, tmp_path: Path) -> Path:
    """A checkpoint file that is wrong in one way, built from the tiny UNI-layout ViT."""
    model = build_vit(UNI_ARCH, **TINY_KWARGS)
    path = tmp_path / ("bad.safetensors" if kind == "bad_safetensors" else "bad.bin")
    if kind == "whole_model":
        torch.save(model, path)
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "bad_safetensors":
        path.write_bytes(b"not a safetensors header")
    elif kind == "tensor":
        torch.save(torch.zeros(3, 4), path)
    elif kind == "not_tensors":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif kind == "prefixed":
        torch.save({f"model.{k}": v for k, v in model.state_dict().items()}, path)
    elif kind == "wider":
        torch.save(build_vit(UNI_ARCH, **{**TINY_KWARGS, "embed_dim": 64}).state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("whole_model", r"pickled Python objects \(timm\..*VisionTransformer; .*state_dict"),
        ("garbage", r"is no torch checkpoint .* save model\.state_dict\(\)"),
        ("bad_safetensors", r"is no readable safetensors file"),
        ("tensor", r"holds a Tensor, not a state dict"),
        ("not_tensors", r"2 entries are no tensors \(e\.g\. \['epoch', 'lr'\]\)"),
        ("prefixed", r"missing \d+, unexpected \d+, .* keys start with 'model\.'"),
        ("wider", r"tensors of .* have other shapes .* cls_token \(1, 1, 64\) in the file"),
    ],
)
def test_checkpoint_bad_file_names_encoder_file_and_fix(kind: str, expected: str, tmp_path: Path):
    """Each way a checkpoint can be wrong is a ConfigError naming the encoder and the file."""
    path = _bad_checkpoint(kind, tmp_path)
    spec = {"kind": "checkpoint", "path": str(path), "arch": UNI_ARCH, "kwargs": TINY_KWARGS}
    with pytest.raises(ConfigError, match=expected) as info:
        resolve_encoder("uni", spec)
    assert "encoders.uni" in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["checkpoint", "random"])
def test_non_vit_arch_is_a_config_error(kind: str, tmp_path: Path):
    """`arch: resnet50` names the key and says arch must be a timm ViT."""
    spec = {**_spec(kind, tmp_path), "arch": "resnet50", "kwargs": {}}
    with pytest.raises(ConfigError, match=r"encoders\.uni\.arch 'resnet50' .* must be a timm ViT"):
        resolve_encoder("uni", spec)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("none.bin", "does not exist"), ("folder", "is a folder"), ("enc.json", "kind: pretrained")],
)
def test_check_checkpoint_path_cheap_checks(name: str, expected: str, tmp_path: Path):
    """A missing file, a folder or an encoder.json given as checkpoint path is refused."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "enc.json").write_text("{}")
    with pytest.raises(ConfigError, match=expected):
        check_checkpoint_path("uni", tmp_path / name)
