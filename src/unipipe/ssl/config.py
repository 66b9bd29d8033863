"""Pretraining configuration: frozen dataclasses grouped by component, read from one YAML file."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from unipipe.config import build_params, check_field_type
from unipipe.curate.tiling import TileSpec
from unipipe.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "CheckpointConfig",
    "CropConfig",
    "DataConfig",
    "HeadConfig",
    "HighResConfig",
    "LossConfig",
    "MaskConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "ScheduleConfig",
    "TrainerConfig",
    "merge_overrides",
]


def _tuple(obj: Any, name: str, length: int | None = None) -> None:
    """Store list-valued YAML fields as tuples so the frozen config hashes and compares."""
    value = tuple(getattr(obj, name))
    if length is not None and len(value) != length:
        raise ConfigError(f"pretrain key {name!r} needs {length} values, got {value!r}")
    object.__setattr__(obj, name, value)


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"pretrain key {key!r}: {message}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Backbone: a timm ViT, plus DINOv2-style stochastic depth applied to a batch subset."""

    arch: str = "vit_large_patch16_224"
    kwargs: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"img_size": 224, "init_values": 1e-5}
    )
    patch_size: int = 16
    drop_path_rate: float = 0.3  # per block (uniform) or of the last block (linear in depth)
    drop_path_uniform: bool = True  # DINOv2's ViT-L setting
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # 0-1 RGB
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    sdpa: bool = True  # timm fused attention (torch scaled_dot_product_attention)

    def __post_init__(self) -> None:
        _tuple(self, "mean", 3)
        _tuple(self, "std", 3)
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        _check(0.0 <= self.drop_path_rate < 1.0, "model.drop_path_rate", "must be in [0, 1)")
        _check("drop_path_rate" not in self.kwargs, "model.kwargs", "set model.drop_path_rate")
        _check(self.patch_size > 0, "model.patch_size", "must be > 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CropConfig:
    """Multi-crop geometry; sizes in pixels of the network input, scales as area fractions."""

    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)

    def __post_init__(self) -> None:
        _tuple(self, "global_scale", 2)
        _tuple(self, "local_scale", 2)
        _check(self.n_local >= 0, "crops.n_local", "must be >= 0")
        _check(self.global_size > 0 and self.local_size > 0, "crops.global_size", "must be > 0")
        for key in ("global_scale", "local_scale"):
            low, high = getattr(self, key)
            _check(0.0 < low <= high <= 1.0, f"crops.{key}", "needs 0 < min <= max <= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Photometric and pathology augmentations (probabilities are per crop)."""

    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # bright, contr, sat, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # first global, second global, locals
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels at the crop's resolution
    solarize_p: float = 0.2  # second global crop only
    rotate90: bool = False  # pathology: random multiples of 90 degrees (also vertical flip)
    hed_sigma: float = 0.0  # pathology: HED stain jitter strength, 0 = off
    photometric_on: Literal["worker", "device"] = "worker"

    def __post_init__(self) -> None:
        _tuple(self, "jitter", 4)
        _tuple(self, "blur_p", 3)
        _tuple(self, "blur_sigma", 2)
        _check(
            self.photometric_on in ("worker", "device"), "augment.photometric_on", "worker|device"
        )
        probs = {"flip_p": self.flip_p, "jitter_p": self.jitter_p}
        probs |= {"grayscale_p": self.grayscale_p, "solarize_p": self.solarize_p}
        probs |= {f"blur_p[{i}]": p for i, p in enumerate(self.blur_p)}
        for key, prob in probs.items():
            _check(0.0 <= prob <= 1.0, f"augment.{key}", "is a probability: must be in [0, 1]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskConfig:
    """iBOT block-wise masking on the global crops' patch grid."""

    ratio_min: float = 0.1
    ratio_max: float = 0.5
    sample_prob: float = 0.5  # fraction of global crops that get a mask
    min_patches: int = 4  # smallest block, in patches
    max_aspect: float = 1 / 0.3  # DINOv2: block aspect ratios log-uniform in [0.3, 1 / 0.3]

    def __post_init__(self) -> None:
        _check(0.0 <= self.ratio_min <= self.ratio_max < 1.0, "masking.ratio_min", "0<=min<=max<1")
        _check(0.0 <= self.sample_prob <= 1.0, "masking.sample_prob", "must be in [0, 1]")
        _check(self.min_patches >= 1, "masking.min_patches", "must be >= 1")
        # Aspects are drawn log-uniformly in [1 / max_aspect, max_aspect].
        _check(self.max_aspect >= 1.0, "masking.max_aspect", "must be >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """DINO and iBOT projection heads."""

    n_prototypes: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3
    ibot_separate_head: bool = False
    ibot_n_prototypes: int = 65536  # used only with a separate iBOT head

    def __post_init__(self) -> None:
        _check(self.n_layers >= 1, "heads.n_layers", "must be >= 1")
        for key in ("n_prototypes", "ibot_n_prototypes"):
            # One prototype makes every softmax 1 and both losses 0: nothing is learned.
            _check(getattr(self, key) >= 2, f"heads.{key}", "must be >= 2")
        for key in ("hidden_dim", "bottleneck_dim"):
            _check(getattr(self, key) >= 1, f"heads.{key}", "must be >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Loss weights (a loss is off when its weight is 0) and teacher centering."""

    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    centering: Literal["sinkhorn_knopp", "softmax"] = "sinkhorn_knopp"
    center_momentum: float = 0.9
    sk_iters: int = 3
    student_temp: float = 0.1

    def __post_init__(self) -> None:
        _check(self.centering in ("sinkhorn_knopp", "softmax"), "loss.centering", "unknown")
        for key in ("dino_weight", "ibot_weight", "koleo_weight"):
            _check(getattr(self, key) >= 0, f"loss.{key}", "must be >= 0")
        _check(
            self.dino_weight > 0 or self.ibot_weight > 0 or self.koleo_weight > 0,
            "loss.dino_weight",
            "all loss weights are 0: nothing would be trained",
        )
        _check(self.student_temp > 0, "loss.student_temp", "must be > 0")
        _check(0.0 <= self.center_momentum <= 1.0, "loss.center_momentum", "must be in [0, 1]")
        _check(
            self.centering != "sinkhorn_knopp" or self.sk_iters >= 1,
            "loss.sk_iters",
            "Sinkhorn-Knopp centering needs at least 1 iteration",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with layer-wise lr decay; lr = base_lr * sqrt(global_batch / 1024)."""

    base_lr: float = 0.004  # DINOv2's default for a 1024 batch
    min_lr: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0  # L2 norm of each student part (backbone, each head), 0 = off
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        _tuple(self, "betas", 2)
        _check(self.base_lr > 0, "optim.base_lr", "must be > 0")
        _check(0 <= self.min_lr <= self.base_lr, "optim.min_lr", "must be in [0, base_lr]")
        # A negative norm flips every gradient (clip_grad_norm_ scales by max_norm / norm).
        _check(self.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 = off)")
        _check(self.weight_decay >= 0 and self.weight_decay_end >= 0, "optim.weight_decay", ">= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """Iteration counts; every schedule is per optimiser step."""

    total_steps: int = 125_000
    steps_per_epoch: int = 1250
    warmup_epochs: float = 10
    teacher_temp: tuple[float, float] = (0.04, 0.07)
    teacher_temp_warmup_epochs: float = 30
    momentum: tuple[float, float] = (0.992, 1.0)
    freeze_last_layer_epochs: float = 1

    def __post_init__(self) -> None:
        _tuple(self, "teacher_temp", 2)
        _tuple(self, "momentum", 2)
        _check(self.total_steps > 0, "schedule.total_steps", "must be > 0")
        _check(self.steps_per_epoch > 0, "schedule.steps_per_epoch", "must be > 0")
        _check(all(t > 0 for t in self.teacher_temp), "schedule.teacher_temp", "must be > 0")
        # m outside [0, 1] moves the EMA teacher away from the student.
        _check(all(0 <= m <= 1 for m in self.momentum), "schedule.momentum", "must be in [0, 1]")


def _spec_name(value: str | Mapping[str, Any] | None, key: str) -> str | None:
    """The shard stores' name of a tile spec (``512px_0.5mpp``), from that name or from a
    ``{size_px, mpp}`` mapping as curate.tiling.specs writes it; None stays None."""
    if value is None:
        return None
    reason = ""
    try:
        if isinstance(value, Mapping):
            return TileSpec.coerce(value).name
        size, sep, mpp = str(value).removesuffix("mpp").partition("px_")
        # Through TileSpec, so that 0.50 and 0.5 name the same spec, as in the stores.
        if isinstance(value, str) and value.endswith("mpp") and sep and size.isdigit():
            return TileSpec(int(size), float(mpp)).name
    except (ConfigError, ValueError, TypeError) as err:
        reason = f" ({str(err).removeprefix('curate.tiling.specs: ')})"
    raise ConfigError(
        f"pretrain key {key!r}: {value!r} is not a tile spec{reason}; write it as the shard "
        "index names it (512px_0.5mpp) or as in curate.tiling.specs ({size_px: 512, mpp: 0.5})"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class HighResConfig:
    """An optional last phase at larger crops (pos-embeds interpolated on the fly).

    ``spec`` names the tile spec its crops are cut from (UNI: 512px_0.5mpp); None reads
    the main phase's (``data.spec``). A crop larger than that spec's patches is refused
    when pretraining starts (``unipipe.ssl.data.check_phases``).
    """

    steps: int = 0  # final optimiser steps run at high resolution, 0 = off
    global_size: int = 448
    local_size: int = 192
    spec: str | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "highres.steps", "must be >= 0")
        object.__setattr__(self, "spec", _spec_name(self.spec, "highres.spec"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Loading: the tile spec read, per-device batch size and worker processes.

    ``spec`` names the tile spec of the main phase (e.g. 256px_0.5mpp, a ``spec`` of the
    shard index); None reads each store's root spec, the first of curate.tiling.specs.
    """

    batch_size: int = 32  # per device
    num_workers: int = 8
    pin_memory: bool = True
    spec: str | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "data.batch_size", "must be > 0")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        object.__setattr__(self, "spec", _spec_name(self.spec, "data.spec"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Lightning Trainer choices."""

    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    precision: str = "bf16-mixed"
    compile: bool = False
    log_every_n_steps: int = 10
    slurm_requeue: bool = True

    def __post_init__(self) -> None:
        _check(self.strategy in ("auto", "single", "ddp", "fsdp"), "trainer.strategy", "unknown")
        _check(
            self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1),
            "trainer.devices",
            "must be an int >= 1 or 'auto'",
        )
        _check(self.num_nodes >= 1, "trainer.num_nodes", "must be >= 1")
        precision = _PRECISIONS.get(str(self.precision))
        _check(
            precision is not None,
            "trainer.precision",
            f"{self.precision!r} is not one of {', '.join(sorted(set(_PRECISIONS.values())))}"
            " (bf16-true and 16-true are refused: half-precision weights round the EMA "
            "teacher update away)",
        )
        # Lightning's short names are spelled out, so that code reading the config (the
        # optimiser choice, FSDP's mixed precision) sees one name per precision.
        object.__setattr__(self, "precision", precision)
        _check(
            not (self.strategy == "fsdp" and precision == "16-mixed"),
            "trainer.precision",
            "16-mixed needs a sharded grad scaler, which FSDP2 under Lightning lacks; "
            "use bf16-mixed or 32-true with strategy fsdp",
        )


# trainer.precision values -> Lightning's full name of each. bf16-true and 16-true are left
# out: with half-precision weights the EMA step (1 - m) (s - t), ~0.007 x the gap early and
# 0 near the end, mostly rounds away, so the teacher would barely move.
_PRECISIONS = {
    **{name: name for name in ("32-true", "bf16-mixed", "16-mixed")},
    "32": "32-true",
    "bf16": "bf16-mixed",
    "16": "16-mixed",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Periodic checkpoints under out_dir/checkpoints/ (last.ckpt always kept)."""

    every_n_steps: int = 2500
    keep_last: int = 3

    def __post_init__(self) -> None:
        _check(self.every_n_steps > 0, "checkpoint.every_n_steps", "must be > 0")
        _check(self.keep_last >= 0, "checkpoint.keep_last", "must be >= 0")


_GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "crops": CropConfig,
    "augment": AugmentConfig,
    "masking": MaskConfig,
    "heads": HeadConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "highres": HighResConfig,
    "data": DataConfig,
    "trainer": TrainerConfig,
    "checkpoint": CheckpointConfig,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """The whole DINOv2 recipe; YAML top-level keys are the group names."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    crops: CropConfig = dataclasses.field(default_factory=CropConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    masking: MaskConfig = dataclasses.field(default_factory=MaskConfig)
    heads: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    highres: HighResConfig = dataclasses.field(default_factory=HighResConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        _check(
            self.highres.steps < self.schedule.total_steps,
            "highres.steps",
            "must be smaller than schedule.total_steps",
        )
        _check(
            self.loss.koleo_weight == 0 or self.data.batch_size >= 2,
            "data.batch_size",
            "KoLeo is computed per device and needs 2 images there to find a neighbour; use "
            "a batch of at least 2 or set loss.koleo_weight: 0",
        )
        # Checked here, not when the high-res phase starts after the whole main phase.
        sizes = {
            "crops.global_size": self.crops.global_size,
            "crops.local_size": self.crops.local_size,
        }
        if self.highres.steps:
            sizes |= {
                "highres.global_size": self.highres.global_size,
                "highres.local_size": self.highres.local_size,
            }
        for key, size in sizes.items():
            _check(
                size % self.model.patch_size == 0,
                key,
                f"{size} px is not a multiple of model.patch_size ({self.model.patch_size})",
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> PretrainConfig:
        """Build from a mapping of group name -> fields (unknown groups or keys raise)."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(_GROUPS))
        if unknown:
            raise ConfigError(f"pretrain config has unknown group(s) {unknown}; {sorted(_GROUPS)}")
        groups = {
            name: build_params(group, raw.get(name), f"pretrain.{name}")
            for name, group in _GROUPS.items()
        }
        return cls(**groups)

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
    ) -> PretrainConfig:
        """Read a YAML file and apply overrides.

        Args:
            path: e.g. ``config/pretrain/tiny_cpu.yaml``.
            overrides: dotted keys (``{"schedule.total_steps": 4}``) or nested mappings
                (``{"schedule": {"total_steps": 4}}``); they win over the file.
        """
        _check_override_types(overrides)
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
        return cls.from_dict(merge_overrides(raw, overrides))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (the resolved config written into sidecars)."""
        return dataclasses.asdict(self)


def _check_override_types(overrides: Mapping[str, Any] | None) -> None:
    """Refuse an override of the wrong scalar type, naming it as written under overrides.

    Unknown groups and fields are left to `PretrainConfig.from_dict`, which lists the
    allowed ones.
    """
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and "." not in key:
            items = [(key, sub, sub_value, f"{key}.{sub}") for sub, sub_value in value.items()]
        else:
            items = [(*key.partition(".")[::2], value, key)]
        for group, field, field_value, written in items:
            if group in _GROUPS:
                check_field_type(
                    _GROUPS[group], field, field_value, f"pretrain.overrides.{written}"
                )


def merge_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``raw`` with dotted or nested ``overrides`` applied (inputs are not modified)."""
    merged = copy.deepcopy(dict(raw))
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and "." not in key:
            for sub, sub_value in value.items():
                merged.setdefault(key, {})[sub] = sub_value
            continue
        group, _, field = key.partition(".")
        if not field:
            raise ConfigError(f"override {key!r} must be `group.field` or a nested mapping")
        merged.setdefault(group, {})
        merged[group] = dict(merged[group] or {})
        merged[group][field] = value
    return merged
