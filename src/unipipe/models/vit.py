"""Building timm Vision Transformers and saving/loading them as safetensors + encoder.json."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from unipipe.errors import ConfigError
from unipipe.provenance import atomic_path, write_json

logger = logging.getLogger(__name__)

__all__ = ["EncoderMeta", "build_vit", "load_encoder", "save_encoder"]

# Keys every encoder.json holds; the embed stage reads exactly these.
_JSON_KEYS = ("arch", "kwargs", "mean", "std", "patch_size", "img_size", "embed_dim", "source")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderMeta:
    """What a consumer needs to run an exported encoder.

    Attributes:
        arch: timm architecture name, e.g. ``vit_large_patch16_224``.
        kwargs: keyword arguments given to ``timm.create_model`` besides the fixed ones.
        mean: per-channel RGB normalisation mean on the 0-1 scale.
        std: per-channel RGB normalisation std on the 0-1 scale.
        patch_size: ViT patch side in pixels.
        img_size: the input side in pixels the encoder was trained at (last phase).
        embed_dim: width of the CLS embedding the encoder returns.
        source: free text saying where the weights came from (e.g. ``unipipe.ssl teacher``).
    """

    arch: str
    kwargs: Mapping[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    img_size: int
    embed_dim: int
    source: str = "unipipe.ssl teacher"


def _fixed_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The user's kwargs plus the ones the contract fixes (no head, any input size)."""
    merged = dict(kwargs)
    if merged.get("pretrained"):
        raise ConfigError(
            "model kwargs: `pretrained` must be false; unipipe never downloads weights"
        )
    merged.pop("pretrained", None)
    merged["num_classes"] = 0
    merged["dynamic_img_size"] = True
    return merged


def build_vit(arch: str, **kwargs: Any) -> nn.Module:
    """Create a randomly initialised timm ViT without a classifier head.

    Args:
        arch: a timm model name, e.g. ``vit_large_patch16_224``.
        **kwargs: extra ``timm.create_model`` arguments (``img_size``, ``init_values``,
            ``drop_path_rate``, ``embed_dim``, ...). ``num_classes=0`` and
            ``dynamic_img_size=True`` are always set; ``pretrained`` is always false.

    Returns:
        The model; ``model(x)`` maps (B, 3, H, W) normalised images to (B, embed_dim).
    """
    import timm  # torchvision comes with it, ~3 s: not at every Snakefile parse

    if arch not in timm.list_models():
        raise ConfigError(
            f"model.arch {arch!r} is not a timm model; see `timm.list_models('vit*')`"
        )
    return timm.create_model(arch, pretrained=False, **_fixed_kwargs(kwargs))


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def save_encoder(
    model: nn.Module,
    safetensors_path: str | os.PathLike[str],
    json_path: str | os.PathLike[str],
    *,
    arch: str,
    kwargs: Mapping[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    patch_size: int,
    img_size: int,
    source: str = "unipipe.ssl teacher",
) -> EncoderMeta:
    """Write the encoder's weights (safetensors) and its description (encoder.json), atomically.

    The safetensors file holds the timm state dict, so
    ``timm.create_model(arch, **json["kwargs"]).load_state_dict(load_file(path))`` works
    without unipipe. ``json["kwargs"]`` already contains ``num_classes=0`` and
    ``dynamic_img_size=True``.
    """
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    embed_dim = int(getattr(model, "num_features", getattr(model, "embed_dim", 0)))
    meta = EncoderMeta(
        arch=arch,
        kwargs=_fixed_kwargs(kwargs),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        patch_size=int(patch_size),
        img_size=int(img_size),
        embed_dim=embed_dim,
        source=source,
    )
    with atomic_path(safetensors_path) as tmp:
        save_file(state, os.fspath(tmp), metadata={"arch": arch})
        # safetensors creates its file 0600 whatever the umask; colleagues sharing a
        # results folder must be able to read the weights like every other output.
        os.chmod(tmp, 0o666 & ~_umask())
    payload = dataclasses.asdict(meta)
    json_dir = os.path.dirname(os.path.abspath(os.fspath(json_path)))
    payload["weights"] = os.path.relpath(os.path.abspath(os.fspath(safetensors_path)), json_dir)
    write_json(json_path, payload)
    logger.info("exported %s encoder (%s tensors) to %s", arch, len(state), safetensors_path)
    return meta


def load_encoder(json_path: str | os.PathLike[str]) -> tuple[nn.Module, EncoderMeta]:
    """Rebuild an encoder from its encoder.json and the safetensors file beside it.

    The weights file is the json's ``weights`` entry (relative to the json's folder), or
    else the json's name with ``.json`` replaced by ``.safetensors``.

    Returns:
        The model in eval mode and its metadata.
    """
    with open(json_path) as fh:
        payload = json.load(fh)
    missing = [k for k in _JSON_KEYS if k not in payload]
    if missing:
        raise ConfigError(f"{os.fspath(json_path)}: encoder.json lacks keys {missing}")
    meta = EncoderMeta(
        **{k: payload[k] for k in _JSON_KEYS if k not in ("mean", "std")},
        mean=tuple(payload["mean"]),
        std=tuple(payload["std"]),
    )
    folder = os.path.dirname(os.fspath(json_path))
    weights = payload.get("weights") or os.path.basename(os.fspath(json_path)).replace(
        ".json", ".safetensors"
    )
    model = build_vit(meta.arch, **meta.kwargs)
    model.load_state_dict(load_file(os.path.join(folder, weights)))
    model.eval()
    return model, meta
