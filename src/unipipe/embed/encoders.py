"""Encoder registry: a pretraining export, a local UNI-format checkpoint, or a seeded random init."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from unipipe.errors import ConfigError
from unipipe.models import EncoderMeta, build_vit, load_encoder

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODER_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "UNI_ARCH",
    "UNI_KWARGS",
    "resolve_encoder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# UNI's published weights load into this timm model (UNI README / UNI_TASKS.md).
UNI_ARCH = "vit_large_patch16_224"
UNI_KWARGS: dict[str, Any] = {"init_values": 1e-5}

EncoderFactory = Callable[[str, Mapping[str, Any]], tuple[nn.Module, EncoderMeta]]


def _require(spec: Mapping[str, Any], name: str, key: str) -> Any:
    """``spec[key]`` or a ConfigError naming the encoder and the missing key."""
    if key not in spec:
        raise ConfigError(f"encoders.{name}: missing key {key!r} (spec kind {spec.get('kind')!r})")
    return spec[key]


def _meta_for(model: nn.Module, spec: Mapping[str, Any], arch: str, source: str) -> EncoderMeta:
    """Describe a freshly built timm ViT; mean/std default to ImageNet's."""
    patch = model.patch_embed.patch_size
    img = model.patch_embed.img_size
    return EncoderMeta(
        arch=arch,
        kwargs=dict(spec.get("kwargs") or {}),
        mean=tuple(float(v) for v in spec.get("mean") or IMAGENET_MEAN),
        std=tuple(float(v) for v in spec.get("std") or IMAGENET_STD),
        patch_size=int(patch[0] if isinstance(patch, tuple | list) else patch),
        img_size=int(img[0] if isinstance(img, tuple | list) else img),
        embed_dim=int(model.num_features),
        source=source,
    )


def _pretrained(name: str, spec: Mapping[str, Any]) -> tuple[nn.Module, EncoderMeta]:
    """An encoder.json (+ safetensors) written by ``unipipe.models.save_encoder``."""
    json_path = _require(spec, name, "encoder_json")
    if not os.path.exists(json_path):
        raise ConfigError(
            f"encoders.{name}.encoder_json: {json_path} does not exist; run pretraining first "
            "or point the key at an exported encoder.json"
        )
    return load_encoder(json_path)


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch state dict (plain or under ``state_dict``)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    return dict(state)


def _checkpoint(name: str, spec: Mapping[str, Any]) -> tuple[nn.Module, EncoderMeta]:
    """A local state-dict file in UNI's format (timm ViT-L/16, init_values=1e-5, no head).

    Loading is strict: a key mismatch names the first missing/unexpected keys, which
    usually means ``arch`` or ``kwargs`` do not match the file.
    """
    path = os.fspath(_require(spec, name, "path"))
    if not os.path.exists(path):
        raise ConfigError(
            f"encoders.{name}.path: checkpoint {path} does not exist; download the weights "
            "yourself (e.g. UNI's pytorch_model.bin) and set this key to the local file"
        )
    arch = spec.get("arch", UNI_ARCH)
    kwargs = dict(spec.get("kwargs", UNI_KWARGS) or {})
    model = build_vit(arch, **kwargs)
    state = _read_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"encoders.{name}: {path} does not fit {arch} with kwargs {kwargs}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; "
            f"fix encoders.{name}.arch / kwargs"
        )
    model.eval()
    return model, _meta_for(model, {**spec, "kwargs": kwargs}, arch, f"checkpoint {path}")


def _random(name: str, spec: Mapping[str, Any]) -> tuple[nn.Module, EncoderMeta]:
    """The same architecture at a seeded random initialisation (the floor every run beats)."""
    arch = spec.get("arch", UNI_ARCH)
    kwargs = dict(spec.get("kwargs", UNI_KWARGS) or {})
    seed = int(spec.get("seed", 0))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_vit(arch, **kwargs)
    model.eval()
    return model, _meta_for(model, {**spec, "kwargs": kwargs}, arch, f"random init seed {seed}")


# spec["kind"] -> factory; config/config.yaml `encoders:` entries pick one by `kind`.
ENCODER_KINDS: dict[str, EncoderFactory] = {
    "pretrained": _pretrained,
    "checkpoint": _checkpoint,
    "random": _random,
}


def resolve_encoder(name: str, spec: Mapping[str, Any]) -> tuple[nn.Module, EncoderMeta]:
    """Build the encoder described by one ``encoders:`` config entry.

    Args:
        name: the encoder's name in config (used in messages and outputs).
        spec: ``{kind: pretrained, encoder_json}``, ``{kind: checkpoint, path, arch, kwargs,
            mean, std}`` or ``{kind: random, arch, kwargs, seed, mean, std}``; mean/std are
            RGB on the 0-1 scale (ImageNet's by default).

    Returns:
        The model in eval mode (``model(x)`` maps (B, 3, H, W) to (B, D) CLS embeddings;
        any H, W divisible by the patch size, position embeddings interpolated) and its
        metadata.
    """
    kind = spec.get("kind")
    if kind not in ENCODER_KINDS:
        raise ConfigError(
            f"encoders.{name}.kind is {kind!r}; registered kinds: {sorted(ENCODER_KINDS)}"
        )
    model, meta = ENCODER_KINDS[kind](name, spec)
    logger.info("encoder %s: %s (%s, D=%s)", name, kind, meta.arch, meta.embed_dim)
    return model, meta
