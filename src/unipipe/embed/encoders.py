"""Encoder registry: a pretraining export, a local UNI-format checkpoint, or a seeded random init."""

from __future__ import annotations

import logging
import os
import pickle
import re
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
    "check_checkpoint_path",
    "resolve_encoder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# UNI's published weights load into this timm model (UNI README / UNI_TASKS.md).
UNI_ARCH = "vit_large_patch16_224"
UNI_KWARGS: dict[str, Any] = {"init_values": 1e-5}

EncoderFactory = Callable[[str, Mapping[str, Any]], tuple[nn.Module, EncoderMeta]]

# Wrappers whose prefix on every key means the file holds an outer module's state dict.
_KEY_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "teacher.", "student.")
_SAVE_HINT = "save model.state_dict() with torch.save, or as .safetensors"


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


def check_checkpoint_path(name: str, path: str | os.PathLike[str]) -> None:
    """Cheap checks of a checkpoint file that need no torch: it exists and is no folder or JSON.

    The workflow runs this at start-up; whether the file loads into ``arch`` is only known
    when the embedding job reads it (a UNI checkpoint is over 1 GB).

    Raises:
        ConfigError: naming ``encoders.<name>.path`` and the fix.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(
            f"encoders.{name}.path: checkpoint {path} does not exist; download the weights "
            "yourself (e.g. UNI's pytorch_model.bin) and set this key to the local file"
        )
    if os.path.isdir(path):
        raise ConfigError(
            f"encoders.{name}.path: {path} is a folder; point it at the weights file inside "
            "(e.g. pytorch_model.bin or model.safetensors)"
        )
    if path.endswith(".json"):
        raise ConfigError(
            f"encoders.{name}.path: {path} is a JSON file; an encoder.json exported by "
            f"pretraining is read with `kind: pretrained` and `encoder_json: {path}`"
        )


def _read_state_dict(name: str, path: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch state dict (plain or under ``state_dict``).

    torch files are read with ``weights_only=True``: unpickling arbitrary objects can run
    code, so a whole pickled model is refused with the way to save its weights instead.
    """
    where = f"encoders.{name}.path: {path}"
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own error types and OSError
            raise ConfigError(
                f"{where} is no readable safetensors file ({type(err).__name__}: {err}); "
                f"{_SAVE_HINT}"
            ) from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's weights-only reader names the first class it refused as "GLOBAL <name>".
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise ConfigError(
                f"{where} is no torch checkpoint (its pickle data cannot be read); {_SAVE_HINT}"
            ) from err
        raise ConfigError(
            f"{where} holds pickled Python objects ({found.group(1)}; for example a whole "
            "model saved with torch.save(model)), which unipipe does not load because "
            f"unpickling can run code; {_SAVE_HINT}"
        ) from err
    except Exception as err:  # a truncated or foreign file fails anywhere in torch's reader
        raise ConfigError(
            f"{where} is no torch checkpoint ({type(err).__name__}: {err}); {_SAVE_HINT}"
        ) from err
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"{where} holds a {type(state).__name__}, not a state dict (name -> tensor); "
            f"{_SAVE_HINT}"
        )
    loose = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if loose:
        raise ConfigError(
            f"{where}: {len(loose)} entries are no tensors (e.g. {loose[:3]}), so this is "
            f"no state dict; {_SAVE_HINT}"
        )
    return dict(state)


def _build_checked(name: str, arch: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """`build_vit`, with an architecture that is no timm ViT named as a config error."""
    try:
        model = build_vit(arch, **kwargs)
    except ConfigError as err:  # names model.arch, the pretraining key
        raise ConfigError(f"encoders.{name}.arch: {err}") from err
    except TypeError as err:  # a non-ViT refuses dynamic_img_size, ViT kwargs, ...
        raise ConfigError(
            f"encoders.{name}.arch {arch!r} with kwargs {dict(kwargs)} cannot be built "
            f"({err}); arch must be a timm ViT (e.g. {UNI_ARCH}) and kwargs arguments of "
            "that model"
        ) from err
    if not hasattr(model, "patch_embed"):
        raise ConfigError(
            f"encoders.{name}.arch {arch!r} is no ViT (it has no patch embedding); arch must "
            f"be a timm ViT such as {UNI_ARCH}"
        )
    return model


def _check_fit(
    name: str, path: str, model: nn.Module, state: Mapping[str, torch.Tensor], arch: str
) -> None:
    """Refuse a state dict whose keys or shapes are not those of ``model``, with examples.

    ``arch`` describes the model in the message (its timm name and kwargs).
    """
    fix = f"fix encoders.{name}.arch / kwargs"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        prefix = next(
            (
                p
                for p in _KEY_PREFIXES
                if unexpected
                and all(k.startswith(p) for k in unexpected)
                and any(k.removeprefix(p) in own for k in unexpected)
            ),
            None,
        )
        if prefix:
            fix = (
                f"the file's keys start with {prefix!r}: save the inner model's "
                f"state_dict() (keys without {prefix!r}), or {fix}"
            )
        raise ConfigError(
            f"encoders.{name}: the keys of {path} do not match {arch}: missing "
            f"{len(missing)}, unexpected {len(unexpected)}, e.g. missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; {fix}"
        )
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        examples = ", ".join(
            f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)}" for k in wrong[:3]
        )
        raise ConfigError(
            f"encoders.{name}: {len(wrong)} tensors of {path} have other shapes than {arch} "
            f"builds (e.g. {examples}); {fix} (embed_dim, depth, patch size, img_size)"
        )


def _checkpoint(name: str, spec: Mapping[str, Any]) -> tuple[nn.Module, EncoderMeta]:
    """A local state-dict file in UNI's format (timm ViT-L/16, init_values=1e-5, no head).

    Loading is strict: a key mismatch names the first missing/unexpected keys, which
    usually means ``arch`` or ``kwargs`` do not match the file.
    """
    path = os.fspath(_require(spec, name, "path"))
    check_checkpoint_path(name, path)
    arch = spec.get("arch", UNI_ARCH)
    kwargs = dict(spec.get("kwargs", UNI_KWARGS) or {})
    model = _build_checked(name, arch, kwargs)
    state = _read_state_dict(name, path)
    _check_fit(name, path, model, state, f"{arch} with kwargs {kwargs}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, _meta_for(model, {**spec, "kwargs": kwargs}, arch, f"checkpoint {path}")


def _random(name: str, spec: Mapping[str, Any]) -> tuple[nn.Module, EncoderMeta]:
    """The same architecture at a seeded random initialisation (the floor every run beats)."""
    arch = spec.get("arch", UNI_ARCH)
    kwargs = dict(spec.get("kwargs", UNI_KWARGS) or {})
    seed = int(spec.get("seed", 0))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _build_checked(name, arch, kwargs)
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
