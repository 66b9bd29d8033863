"""Tests for reading the pretraining YAML files into frozen, grouped dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from unipipe.errors import ConfigError
from unipipe.ssl.config import PretrainConfig, check_curated_specs

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
        # A 7x7 grid (112-px crops, 16-px patches) masked at most 0.5: 24 patches, so blocks
        # of 25 never fit and iBOT would be 0 for the whole run.
        ({"masking.min_patches": 25}, "masking.min_patches"),
        ({"masking.sample_prob": 0.0}, "masking.sample_prob"),
        ({"model.kwargs": 5}, "model.kwargs"),
        ({"model.kwargs.drop_path_rate": 0.1}, "model.kwargs"),
        ({"model.std": [0.229, 0.0, 0.225]}, "model.std"),
        ({"model.std": [0.229, -0.224, 0.225]}, "model.std"),
        ({"model.std": ["a", "b", "c"]}, "model.std"),
        ({"model.mean": 0.5}, "model.mean"),
        ({"augment.blur_sigma": [0.0, 2.0]}, "augment.blur_sigma"),
        ({"augment.blur_sigma": [2.0, 0.1]}, "augment.blur_sigma"),
        ({"augment.jitter": [-0.4, 0.4, 0.2, 0.1]}, "augment.jitter"),
        ({"augment.jitter": [0.4, 0.4, -0.2, 0.1]}, "augment.jitter"),
        ({"augment.jitter": [0.4, 0.4, 0.2, 0.6]}, "augment.jitter"),
        ({"augment.jitter": [0.4, 0.4, 0.2, -0.1]}, "augment.jitter"),
        ({"augment.hed_sigma": -0.05}, "augment.hed_sigma"),
        ({"schedule.warmup_epochs": -1}, "schedule.warmup_epochs"),
        ({"schedule.teacher_temp_warmup_epochs": -1}, "schedule.teacher_temp_warmup_epochs"),
        ({"schedule.freeze_last_layer_epochs": -1}, "schedule.freeze_last_layer_epochs"),
        ({"schedule.momentum": [1.0, 0.992]}, "schedule.momentum"),
        ({"schedule.momentum": [1.0, 1.0]}, "schedule.momentum"),
        ({"optim.betas": [0.9, 1.0]}, "optim.betas"),
        ({"optim.betas": [-0.1, 0.999]}, "optim.betas"),
        ({"trainer.log_every_n_steps": 0}, "trainer.log_every_n_steps"),
        ({"trainer.accelerator": "tpu"}, "trainer.accelerator"),
        ({"trainer.accelerator": "GPU"}, "trainer.accelerator"),
    ],
)
def test_from_yaml_bad_values_name_the_key(overrides, key):
    """Invalid or unknown values raise ConfigError quoting the config key."""
    with pytest.raises(ConfigError, match=key):
        PretrainConfig.from_yaml(TINY_YAML, overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"masking.min_patches": 24},  # the most a masked 7x7 grid holds at ratio_max 0.5
        {"masking.min_patches": 25, "loss.ibot_weight": 0.0},  # no masks without iBOT
        {"schedule.momentum": [0.0, 0.0], "schedule.warmup_epochs": 0},
        {"trainer.accelerator": "cpu", "trainer.log_every_n_steps": 1},
        {"augment.jitter": [0.0, 0.0, 0.0, 0.5], "augment.blur_sigma": [0.5, 0.5]},
    ],
)
def test_from_yaml_accepts_values_at_the_edge_of_their_range(overrides):
    """The checks above refuse only what cannot train: their bounds themselves are allowed."""
    PretrainConfig.from_yaml(TINY_YAML, overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.kwargs": {"depth": 2}},
        {"model": {"kwargs": {"depth": 2}}},
        {"model.kwargs.depth": 2},
    ],
)
def test_from_yaml_kwargs_override_merges_into_the_recipes(overrides):
    """An override of model.kwargs changes only the keys it names: the recipe's position
    grid (img_size) and LayerScale (init_values) stay."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, overrides)
    assert cfg.model.kwargs == {"img_size": 112, "depth": 2, "init_values": 0.1}


@pytest.mark.parametrize(
    "overrides", [{"model.kwargs.init_values": None}, {"model.kwargs": {"init_values": None}}]
)
def test_from_yaml_null_kwargs_override_removes_the_key(overrides):
    """null removes a key from the recipe's kwargs, so timm's default applies."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, overrides)
    assert cfg.model.kwargs == {"img_size": 112, "depth": 4}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- model\n- crops\n", "is a list, not a mapping"),
        ("model: 5\n", "group 'model' is 5"),
        ("", "is empty"),
        ("# nothing but a comment\n", "is empty"),
        ("model:\n  patch_size: 16\n  patch_size: 14\n", r"line 3: 'patch_size' is given twice"),
        ("schedule: {total_steps: 4}\nschedule: {}\n", r"line 2: 'schedule' is given twice"),
        ("model: [16\n", "is not valid YAML"),
    ],
)
def test_from_yaml_malformed_recipe_names_the_file(tmp_path, text, words):
    """A recipe that is no mapping of groups, is empty, gives a key twice or is no YAML is
    refused naming the file, instead of a TypeError or silently UNI's defaults."""
    recipe = tmp_path / "my_recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=words) as err:
        PretrainConfig.from_yaml(recipe)
    assert str(recipe) in str(err.value)


def test_from_yaml_missing_recipe_names_the_file(tmp_path):
    """A recipe path that is no file is a ConfigError naming it, not a FileNotFoundError."""
    for path in (tmp_path / "nope.yaml", tmp_path):
        with pytest.raises(ConfigError, match=f"{path}.*(does not exist|is a folder)"):
            PretrainConfig.from_yaml(path)


CURATED = ({"size_px": 256, "mpp": 0.5}, {"size_px": 512, "mpp": 0.5})


@pytest.mark.parametrize(
    ("recipe", "overrides", "specs"),
    [
        (TINY_YAML, {}, CURATED[:1]),  # high-res off: its 512-px spec need not be curated
        (TINY_YAML, {"highres.steps": 2}, CURATED),
        (UNI_YAML, {}, CURATED),
        # data.spec names the spec, written either way; high-res falls back to it
        (TINY_YAML, {"data.spec": {"size_px": 512, "mpp": 0.5}, "highres.spec": None}, CURATED),
    ],
)
def test_check_curated_specs_accepts_the_recipes(recipe, overrides, specs):
    """The recipes as shipped fit the demo curation's tile specs."""
    check_curated_specs(PretrainConfig.from_yaml(recipe, overrides), specs)


@pytest.mark.parametrize(
    ("recipe", "overrides", "specs", "words"),
    [
        (TINY_YAML, {"data.spec": "256px_0.25mpp"}, CURATED, r"'data.spec' is 256px_0.25mpp"),
        (UNI_YAML, {}, CURATED[:1], r"'highres.spec' is 512px_0.5mpp.*256px_0.5mpp"),
        (TINY_YAML, {"highres.steps": 2}, CURATED[:1], r"'highres.spec' is 512px_0.5mpp"),
        # unset data.spec: the first curated spec, 256 px
        (TINY_YAML, {"crops.global_size": 272}, CURATED, r"'crops.global_size': 272-px"),
        (
            UNI_YAML,
            {"highres.spec": None},  # falls back to data.spec, 256 px
            CURATED,
            r"'highres.global_size': 448-px.*Set highres.spec",
        ),
        (
            TINY_YAML,
            {"highres.steps": 2, "highres.local_size": 528},
            CURATED,
            r"'highres.local_size': 528-px",
        ),
    ],
)
def test_check_curated_specs_refuses_specs_not_curated(recipe, overrides, specs, words):
    """A phase's tile spec that curation does not cut, or crops larger than its patches,
    are refused naming the key, instead of when pretraining starts after all curation."""
    cfg = PretrainConfig.from_yaml(recipe, overrides)
    with pytest.raises(ConfigError, match=rf"{words}.*curate\.tiling\.specs"):
        check_curated_specs(cfg, specs)


@pytest.mark.parametrize(
    ("given", "full"), [("bf16", "bf16-mixed"), ("16", "16-mixed"), ("32", "32-true")]
)
def test_from_yaml_short_precision_names_are_spelled_out(given, full):
    """Lightning's short precision names become its full ones, which the module reads."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, {"trainer.precision": given})
    assert cfg.trainer.precision == full
