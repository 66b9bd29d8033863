"""build_params refuses values of the wrong type before a dataclass sees them, naming the key."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO
from unipipe.config import build_params
from unipipe.curate.selection import SelectionParams
from unipipe.curate.shards import ShardParams
from unipipe.curate.tissue import TissueParams
from unipipe.errors import ConfigError
from unipipe.evaluate.protocols import PROTOCOLS
from unipipe.ssl.config import PretrainConfig

TINY_YAML = REPO / "config" / "pretrain" / "tiny_cpu.yaml"


@pytest.mark.parametrize(
    ("cls", "section", "key", "expected"),
    [
        (SelectionParams, {"budget": "200"}, "curate.selection", "expected an integer"),
        (SelectionParams, {"budget": 200.0}, "curate.selection", "expected an integer"),
        (SelectionParams, {"budget": True}, "curate.selection", "expected an integer"),
        (TissueParams, {"median_um": "1e-4"}, "curate.tissue", "1.0e-4, not 1e-4"),
        (TissueParams, {"exclude_pen": "yes"}, "curate.tissue", "expected true or false"),
        (ShardParams, {"level": None}, "curate.shards", "'curate.shards.level' is None"),
    ],
)
def test_build_params_wrong_scalar_type_names_key(cls, section, key, expected):
    """A string, float, bool or null where a field wants another scalar is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        build_params(cls, section, key)
    assert f"'{key}.{next(iter(section))}'" in str(info.value)
    assert expected in str(info.value)


def test_build_params_accepts_ints_for_floats_and_optional_none():
    """An integer is a fine float; null is fine where the field is optional (linear C)."""
    assert build_params(TissueParams, {"median_um": 16}, "curate.tissue").median_um == 16
    assert build_params(PROTOCOLS["linear"].params_cls, {"C": None}, "evaluate.params.linear")


@pytest.mark.parametrize(
    "overrides",
    [{"schedule.total_steps": "abc"}, {"schedule": {"total_steps": "abc"}}],
)
def test_pretrain_override_wrong_type_names_override_key(overrides):
    """`total_steps: abc` under pretrain.overrides names that key and the type it needs."""
    with pytest.raises(ConfigError) as info:
        PretrainConfig.from_yaml(TINY_YAML, overrides)
    message = str(info.value)
    assert "'pretrain.overrides.schedule.total_steps'" in message
    assert "expected an integer" in message
    assert "not supported between" not in message


def test_build_params_every_shipped_config_still_builds():
    """The shipped recipes and the curate sections of config.yaml pass the type check."""
    for recipe in sorted((REPO / "config" / "pretrain").glob("*.yaml")):
        PretrainConfig.from_yaml(recipe)
    curate = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["curate"]
    for cls, name in ((TissueParams, "tissue"), (SelectionParams, "selection")):
        build_params(cls, curate[name], f"curate.{name}")
    build_params(ShardParams, curate["shards"], "curate.shards")
