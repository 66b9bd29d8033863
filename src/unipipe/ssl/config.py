"""Pretraining configuration: frozen dataclasses grouped by component, read from one YAML file."""

from __future__ import annotations

import copy
import dataclasses
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
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
    "check_curated_specs",
    "merge_overrides",
]


def _tuple(obj: Any, key: str, length: int) -> None:
    """Store a list of numbers from YAML as a tuple, so the frozen config hashes and compares.

    ``key`` is the dotted recipe key (``model.std``); its last part is the field. Checked
    here because check_field_type leaves lists alone, and a text entry would otherwise
    fail later as "'>' not supported between 'str' and 'float'".
    """
    name = key.rpartition(".")[2]
    value = getattr(obj, name)
    what = f"a list of {length} numbers"
    _check(
        isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping),
        key,
        f"is {value!r}; write {what}",
    )
    value = tuple(value)
    _check(len(value) == length, key, f"needs {length} values, got {value!r}; write {what}")
    _check(
        all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value),
        key,
        f"is {value!r}; write {what} (unquoted)",
    )
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
        _tuple(self, "model.mean", 3)
        _tuple(self, "model.std", 3)
        # Inputs are divided by std: 0 gives inf (NaN by the first step), < 0 flips a channel.
        _check(all(s > 0 for s in self.std), "model.std", f"{self.std}: every entry must be > 0")
        _check(
            isinstance(self.kwargs, Mapping),
            "model.kwargs",
            f"is {self.kwargs!r}; write a mapping of timm keyword arguments, e.g. "
            "{img_size: 224, init_values: 1.0e-5}",
        )
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
        _tuple(self, "crops.global_scale", 2)
        _tuple(self, "crops.local_scale", 2)
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
        _tuple(self, "augment.jitter", 4)
        _tuple(self, "augment.blur_p", 3)
        _tuple(self, "augment.blur_sigma", 2)
        _check(
            self.photometric_on in ("worker", "device"), "augment.photometric_on", "worker|device"
        )
        probs = {"flip_p": self.flip_p, "jitter_p": self.jitter_p}
        probs |= {"grayscale_p": self.grayscale_p, "solarize_p": self.solarize_p}
        probs |= {f"blur_p[{i}]": p for i, p in enumerate(self.blur_p)}
        for key, prob in probs.items():
            _check(0.0 <= prob <= 1.0, f"augment.{key}", "is a probability: must be in [0, 1]")
        # Both photometric paths draw each factor from [max(0, 1 - s), 1 + s] and the hue
        # shift from [-h, h] of the colour wheel, as torchvision's ColorJitter: a negative
        # strength turns the range around, a hue beyond 0.5 wraps onto the other side.
        *strengths, hue = self.jitter
        _check(
            min(strengths) >= 0,
            "augment.jitter",
            f"{self.jitter}: brightness, contrast and saturation strengths must be >= 0",
        )
        _check(0 <= hue <= 0.5, "augment.jitter", f"{self.jitter}: hue must be in [0, 0.5]")
        # The device path's blur divides by sigma squared: sigma 0 gives NaN crops there
        # while the worker path would pass it unblurred.
        low, high = self.blur_sigma
        _check(0 < low <= high, "augment.blur_sigma", f"{self.blur_sigma}: needs 0 < min <= max")
        # A negative strength would turn stain jitter off silently (it runs when > 0).
        _check(self.hed_sigma >= 0, "augment.hed_sigma", "must be >= 0 (0 = off)")


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
        _tuple(self, "optim.betas", 2)
        # AdamW refuses these only when the optimiser is built, after run.json is written.
        _check(all(0 <= b < 1 for b in self.betas), "optim.betas", f"{self.betas}: each in [0, 1)")
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
        _tuple(self, "schedule.teacher_temp", 2)
        _tuple(self, "schedule.momentum", 2)
        _check(self.total_steps > 0, "schedule.total_steps", "must be > 0")
        _check(self.steps_per_epoch > 0, "schedule.steps_per_epoch", "must be > 0")
        for key in ("warmup_epochs", "teacher_temp_warmup_epochs", "freeze_last_layer_epochs"):
            _check(getattr(self, key) >= 0, f"schedule.{key}", "must be >= 0 (0 = none)")
        _check(all(t > 0 for t in self.teacher_temp), "schedule.teacher_temp", "must be > 0")
        # m outside [0, 1] moves the EMA teacher away from the student. The cosine goes from
        # start to end: falling, the teacher would follow the student ever faster as training
        # ends; from 1 it would stay at its random initialisation for the whole run.
        start, end = self.momentum
        _check(
            0 <= start <= end <= 1 and start < 1,
            "schedule.momentum",
            f"[start, end] is {list(self.momentum)}; it needs 0 <= start <= end <= 1 with "
            "start < 1 (DINOv2: [0.992, 1.0])",
        )


def _spec_name(value: str | Mapping[str, Any] | None, key: str) -> str | None:
    """The shard stores' name of a tile spec (``512px_0.5mpp``), from that name or from a
    ``{size_px, mpp}`` mapping as curate.tiling.specs writes it; None stays None."""
    spec = _tile_spec(value, key)
    return None if spec is None else spec.name


def _tile_spec(value: str | Mapping[str, Any] | TileSpec | None, key: str) -> TileSpec | None:
    """The tile spec a name (``512px_0.5mpp``) or a ``{size_px, mpp}`` mapping stands for."""
    if value is None or isinstance(value, TileSpec):
        return value
    reason = ""
    try:
        if isinstance(value, Mapping):
            return TileSpec.coerce(value)
        size, sep, mpp = str(value).removesuffix("mpp").partition("px_")
        # Through TileSpec, so that 0.50 and 0.5 name the same spec, as in the stores.
        if isinstance(value, str) and value.endswith("mpp") and sep and size.isdigit():
            return TileSpec(int(size), float(mpp))
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
    when the workflow starts (`check_curated_specs`) and when pretraining starts
    (``unipipe.ssl.data.check_phases``).
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
            self.accelerator in _ACCELERATORS,
            "trainer.accelerator",
            f"{self.accelerator!r} is not one of {', '.join(_ACCELERATORS)} (Lightning's tpu "
            "and hpu need packages this project does not install)",
        )
        _check(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1")
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


# Lightning's accelerator names that train here with the installed packages (train.py's
# resolve_accelerator treats gpu and cuda alike; auto picks cuda, mps or cpu).
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

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
        if self.loss.ibot_weight > 0:
            self._check_masks_fit(sizes)

    def _check_masks_fit(self, sizes: Mapping[str, int]) -> None:
        """Refuse masking that masks no crop: the iBOT loss would be 0 for the whole run."""
        m = self.masking
        _check(
            m.sample_prob > 0,
            "masking.sample_prob",
            "is 0: no global crop is masked and the iBOT loss would be 0 for the whole run; "
            "set it > 0 (DINOv2: 0.5) or loss.ibot_weight: 0",
        )
        key = min((k for k in sizes if k.endswith("global_size")), key=sizes.__getitem__)
        side = sizes[key] // self.model.patch_size
        # collate masks int(side^2 * ratio) patches of a crop, ratio <= ratio_max, in blocks
        # of at least min_patches, each at most (side - 1) patches high and wide (masking.py).
        most = min(int(side * side * m.ratio_max), (side - 1) ** 2)
        _check(
            m.min_patches <= most,
            "masking.min_patches",
            f"blocks of {m.min_patches} patches do not fit in the at most {most} patches masked "
            f"of a {side}x{side} patch grid ({key} {sizes[key]} / model.patch_size "
            f"{self.model.patch_size}, masking.ratio_max {m.ratio_max}): no crop would be "
            f"masked and the iBOT loss would be 0 for the whole run; lower it to at most "
            f"{most}, raise masking.ratio_max, or set loss.ibot_weight: 0",
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> PretrainConfig:
        """Build from a mapping of group name -> fields (unknown groups or keys raise)."""
        if raw is not None and not isinstance(raw, Mapping):
            raise ConfigError(
                f"pretrain config is {raw!r}, not a mapping of groups; write each group as a "
                "key (model:, crops:, schedule:, ...) as config/pretrain/tiny_cpu.yaml does"
            )
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(_GROUPS))
        if unknown:
            raise ConfigError(f"pretrain config has unknown group(s) {unknown}; {sorted(_GROUPS)}")
        for name, section in raw.items():
            if section is not None and not isinstance(section, Mapping):
                raise ConfigError(
                    f"pretrain group {name!r} is {section!r}, not a mapping of its fields; "
                    f"write it as `{name}:` with its fields indented below (as in "
                    "config/pretrain/tiny_cpu.yaml), or leave it out for its defaults"
                )
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
                (``{"schedule": {"total_steps": 4}}``); they win over the file. Those of
                ``model.kwargs`` are merged into the file's kwargs (see `merge_overrides`).

        Raises:
            ConfigError: the file is missing, empty, not YAML, gives a key twice or is no
                mapping of groups, or a value is refused; the message names the file.
        """
        _check_override_types(overrides)
        raw = read_recipe(path)
        try:
            return cls.from_dict(merge_overrides(raw, overrides))
        except ConfigError as err:
            with_overrides = " with its overrides" if overrides else ""
            raise ConfigError(f"recipe {path}{with_overrides}: {err}") from err

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
    """Return ``raw`` with dotted or nested ``overrides`` applied (inputs are not modified).

    A field's override replaces the file's value, except ``model.kwargs``: that mapping is
    merged key by key into the file's kwargs (``{"model.kwargs": {"depth": 2}}`` or
    ``{"model.kwargs.depth": 2}``), and a key overridden with None is removed from it, so
    that timm's default applies. Replacing the whole mapping would silently drop the
    recipe's other kwargs (its position grid, LayerScale).
    """
    merged = copy.deepcopy(dict(raw))
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and "." not in key:
            items = [(key, field, field_value) for field, field_value in value.items()]
        else:
            group, _, field = key.partition(".")
            if not field:
                raise ConfigError(f"override {key!r} must be `group.field` or a nested mapping")
            items = [(group, field, value)]
        for group, field, field_value in items:
            section = merged.get(group)
            if section is not None and not isinstance(section, Mapping):
                continue  # from_dict refuses the file's group, naming it
            merged[group] = section = dict(section or {})
            name, _, sub = field.partition(".")
            if group == "model" and name == "kwargs":
                section["kwargs"] = _merge_kwargs(section.get("kwargs"), sub, field_value)
            else:
                section[field] = field_value
    return merged


def _merge_kwargs(kwargs: Any, sub: str, value: Any) -> Any:
    """The file's model.kwargs with an override of one of its keys (``sub``) or of several."""
    changes = {sub: value} if sub else value
    # Either one no mapping: kept as it is, so that ModelConfig refuses it, naming the key.
    if not isinstance(kwargs, Mapping | None):
        return kwargs
    if not isinstance(changes, Mapping):
        return changes
    merged = dict(kwargs or {})
    for name, new in changes.items():
        if new is None:
            merged.pop(name, None)
        else:
            merged[name] = new
    return merged


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    PyYAML keeps the last of two equal keys without a word, so a recipe edited by adding a
    line rather than changing one would train with whichever came last.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<` merges may repeat keys on purpose: the explicit key wins
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise ConfigError(
                        f"pretrain recipe {self.name}, line {line}: {key!r} is given twice in "
                        f"one mapping (first on line {first_line[key]}), and YAML would keep "
                        "only the last without a word; delete one of them"
                    )
                first_line[key] = line
            except TypeError:
                pass  # an unhashable key: construct_mapping below says so
        return super().construct_mapping(node, deep=deep)


def read_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recipe YAML file as a mapping of group name -> fields, before any checks of values.

    Raises:
        ConfigError: the file is missing, empty (or only comments), not YAML, gives a key
            twice or holds no mapping; the message names the file and the fix.
    """
    start = "start from config/pretrain/tiny_cpu.yaml or config/pretrain/uni_vitl16.yaml"
    try:
        with open(path) as fh:
            raw = yaml.load(fh, Loader=_RecipeLoader)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ConfigError(
            f"pretrain recipe {path} {what}; point pretrain.config (the CLI's --config) at a "
            f"recipe YAML file, or {start}"
        ) from err
    except OSError as err:
        raise ConfigError(f"pretrain recipe {path} cannot be read: {err.strerror}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"pretrain recipe {path} is not valid YAML{where}: {problem}; fix that line "
            "(config/pretrain/tiny_cpu.yaml shows the layout)"
        ) from None
    if raw is None:
        raise ConfigError(
            f"pretrain recipe {path} is empty; every group would silently take its defaults "
            f"(UNI's ViT-L/16, 125,000 steps, bf16-mixed) instead: {start} and edit it"
        )
    if not isinstance(raw, Mapping):
        what = f"a {type(raw).__name__}" if isinstance(raw, list) else repr(raw)
        raise ConfigError(
            f"pretrain recipe {path} is {what}, not a mapping of groups; write each group as "
            "a top-level key (model:, crops:, schedule:, ...) as config/pretrain/tiny_cpu.yaml "
            "does"
        )
    return dict(raw)


def check_curated_specs(
    config: PretrainConfig, specs: Sequence[TileSpec | Mapping[str, Any] | str]
) -> None:
    """Refuse a recipe whose phases read a tile spec that curation does not cut, or cut
    crops larger than that spec's patches.

    ``unipipe.ssl.data.check_phases`` checks the same against the shards when pretraining
    starts; this checks it against ``curate.tiling.specs`` when the workflow starts, before
    any slide is curated. Each phase reads its spec as plan_phases resolves it: the main
    one ``data.spec`` (unset: the stores' root spec, the first of ``specs``), the
    high-resolution one (when ``highres.steps`` > 0) ``highres.spec``, else the main one's.

    Raises:
        ConfigError: naming the recipe key and the fix.
    """
    curated = {}
    for spec in specs:
        tile = _tile_spec(spec, "curate.tiling.specs")
        curated[tile.name] = tile
    names = ", ".join(curated)
    phases = [("main", "data.spec", config.data.spec, "crops", config.crops)]
    hr = config.highres
    if hr.steps:
        spec_key = "highres.spec" if hr.spec else "data.spec"
        phases.append(("high-resolution", spec_key, hr.spec or config.data.spec, "highres", hr))
    for phase, spec_key, name, group, sizes in phases:
        own_key = "highres.spec" if group == "highres" else "data.spec"
        if name is None:
            name = next(iter(curated))
            which = f"{name}, the first of curate.tiling.specs ({spec_key} unset)"
        elif name in curated:
            which = f"{name} ({spec_key})"
        else:
            tile = _tile_spec(name, spec_key)
            off = "; or highres.steps: 0 for no high-resolution phase" if group == "highres" else ""
            raise ConfigError(
                f"pretrain key {spec_key!r} is {name}, which curate.tiling.specs does not cut "
                f"(it cuts {names}): the {phase} phase would find no patches once every slide "
                f"is curated. Add {{size_px: {tile.size_px}, mpp: {tile.mpp:g}}} to "
                f"curate.tiling.specs, or set {own_key} to one of {names}{off}"
            )
        if own_key != spec_key:
            which = which.removesuffix(")") + f"; {own_key} unset)"
        patch = curated[name].size_px
        for crop in ("global_size", "local_size"):
            size = getattr(sizes, crop)
            if size > patch:
                larger = [n for n, t in curated.items() if t.size_px >= size]
                fix = f"one of {', '.join(larger)}" if larger else "a spec added there"
                raise ConfigError(
                    f"pretrain key '{group}.{crop}': {size}-px crops cut from the {patch}-px "
                    f"patches of tile spec {which} would all be upsampled, adding no detail. "
                    f"Set {own_key} to a spec of curate.tiling.specs with patches of at least "
                    f"{size} px ({fix}), or lower {group}.{crop} to at most {patch}"
                )
