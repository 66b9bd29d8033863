"""The conda environments pin the same versions as pyproject.toml."""

from __future__ import annotations

import tomllib

import pytest
import yaml

from tests.conftest import REPO

ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, version = requirement.split("==")
        pins[name.lower()] = version
    return pins


def _env_pins(path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = [line.split("==") for line in pip_section if "==" in line]
    return {name.lower(): version for name, version in pinned}


def test_envs_exist_for_each_rule_group():
    """There is one environment per rule group: curate, train, eval."""
    assert {p.stem for p in ENV_FILES} == {"curate", "train", "eval"}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.stem)
def test_envs_pins_match_pyproject(env_file):
    """Every package an environment pins has the version pyproject.toml pins."""
    pins = _pyproject_pins()
    env = _env_pins(env_file)
    assert env, f"{env_file} pins nothing"
    mismatched = {n: (v, pins.get(n)) for n, v in env.items() if pins.get(n) != v}
    assert not mismatched, f"{env_file.name} disagrees with pyproject.toml: {mismatched}"


def test_envs_train_covers_every_dependency():
    """The training environment carries every runtime dependency of the package."""
    assert set(_env_pins(REPO / "envs" / "train.yaml")) == set(_pyproject_pins())


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.stem)
def test_envs_install_this_checkout(env_file):
    """Each environment installs the project itself, so jobs import this unipipe."""
    assert "- -e .." in env_file.read_text()


def test_envs_rules_reference_existing_env_files():
    """Every conda: directive in the rules names an environment file that exists."""
    text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    names = {line.split("/")[-1].rstrip('"\n') for line in text.splitlines() if "ENVS}/" in line}
    assert names, "no rule has a conda: directive"
    assert names <= {p.name for p in ENV_FILES}
