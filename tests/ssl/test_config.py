"""Tests for reading the pretraining YAML files into frozen, grouped dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from unipipe.errors import ConfigError
from unipipe.ssl.config import PretrainConfig

from .conftest import TINY_YAML, UNI_YAML


def test_from_yaml_uni_recipe_values():
    """The UNI file holds the recipe's headline numbers."""
    cfg = PretrainConfig.from_yaml(UNI_YAML)
    assert cfg.model.arch == "vit_large_patch16_224"
    assert cfg.model.kwargs["init_values"] == 1e-5
    assert cfg.model.drop_path_rate == 0.3
    assert (cfg.schedule.total_steps, cfg.schedule.steps_per_epoch) == (125_000, 1250)
    assert cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes == 3072
    assert cfg.heads.n_prototypes == 65536
    assert cfg.highres.steps > 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"schedule.total_steps": 7, "data.batch_size": 4},
        {"schedule": {"total_steps": 7}, "data": {"batch_size": 4}},
    ],
)
def test_from_yaml_overrides_dotted_or_nested(overrides):
    """Dotted and nested overrides both win over the file."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, overrides)
    assert (cfg.schedule.total_steps, cfg.data.batch_size) == (7, 4)
    assert cfg.crops.global_size == 112  # untouched keys keep the file's value


def test_from_yaml_lists_become_tuples_and_config_is_frozen():
    """YAML lists are stored as tuples; fields cannot be reassigned."""
    cfg = PretrainConfig.from_yaml(TINY_YAML)
    assert cfg.augment.jitter == (0.4, 0.4, 0.2, 0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loss.koleo_weight = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"loss.unknown_weight": 1.0}, "pretrain.loss"),
        ({"masking.ratio_max": 1.5}, "masking.ratio_min"),
        ({"loss.centering": "median"}, "loss.centering"),
        ({"highres.steps": 10**6}, "highres.steps"),
        ({"model.kwargs": {"drop_path_rate": 0.1}}, "model.kwargs"),
        ({"trainer.strategy": "fsdp", "trainer.precision": "16-mixed"}, "trainer.precision"),
        ({"trainer.strategy": "fsdp", "trainer.precision": "16"}, "trainer.precision"),
        ({"trainer.precision": "bf16-mix"}, "trainer.precision"),
        ({"trainer.precision": "bf16-true"}, "trainer.precision"),
        ({"optim.clip_grad": -1.0}, "optim.clip_grad"),
        ({"optim.min_lr": 1.0}, "optim.min_lr"),
        ({"schedule.momentum": [1.5, 2.0]}, "schedule.momentum"),
        ({"schedule.teacher_temp": [0.0, 0.0]}, "schedule.teacher_temp"),
        ({"loss.student_temp": 0.0}, "loss.student_temp"),
        ({"loss.sk_iters": 0}, "loss.sk_iters"),
        ({"heads.n_prototypes": 1}, "heads.n_prototypes"),
        ({"heads.bottleneck_dim": 0}, "heads.bottleneck_dim"),
        (
            {"loss.dino_weight": 0.0, "loss.ibot_weight": 0.0, "loss.koleo_weight": 0.0},
            "loss.dino_weight",
        ),
        ({"crops.global_size": 100}, "crops.global_size"),
        ({"highres.steps": 1, "highres.global_size": 100}, "highres.global_size"),
        ({"checkpoint.keep_last": -5}, "checkpoint.keep_last"),
        ({"trainer.devices": 0}, "trainer.devices"),
        ({"trainer.num_nodes": 0}, "trainer.num_nodes"),
        ({"data.num_workers": -1}, "data.num_workers"),
        ({"augment.jitter_p": 5.0}, "augment.jitter_p"),
        ({"crops.global_scale": [1.0, 0.1]}, "crops.global_scale"),
        ({"crops.local_scale": [0.0, 0.0]}, "crops.local_scale"),
        ({"data.batch_size": 1}, "data.batch_size"),
        ({"masking.max_aspect": 0.5}, "masking.max_aspect"),
        ({"masking.min_patches": 0}, "masking.min_patches"),
    ],
)
def test_from_yaml_bad_values_name_the_key(overrides, key):
    """Invalid or unknown values raise ConfigError quoting the config key."""
    with pytest.raises(ConfigError, match=key):
        PretrainConfig.from_yaml(TINY_YAML, overrides)


@pytest.mark.parametrize(
    ("given", "full"), [("bf16", "bf16-mixed"), ("16", "16-mixed"), ("32", "32-true")]
)
def test_from_yaml_short_precision_names_are_spelled_out(given, full):
    """Lightning's short precision names become its full ones, which the module reads."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, {"trainer.precision": given})
    assert cfg.trainer.precision == full
