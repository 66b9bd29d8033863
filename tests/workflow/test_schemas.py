"""The config schema and the stage parameter dataclasses describe the same keys."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from tests.conftest import REPO
from unipipe.config import build_params
from unipipe.curate.artefacts import ArtefactParams
from unipipe.curate.selection import SelectionParams
from unipipe.curate.shards import ShardParams
from unipipe.curate.tiling import TilingParams
from unipipe.curate.tissue import TissueParams

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
SECTIONS = {
    "tissue": TissueParams,
    "artefacts": ArtefactParams,
    "tiling": TilingParams,
    "selection": SelectionParams,
    "shards": ShardParams,
}


def _fields(cls) -> dict:
    """Field names of a params dataclass, nested dataclasses expanded."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = _fields(type(default)) if dataclasses.is_dataclass(default) else None
    return out


def _schema_keys(schema: dict) -> dict:
    props = schema.get("properties", {})
    return {
        name: _schema_keys(sub) if sub.get("additionalProperties") is False else None
        for name, sub in props.items()
    }


@pytest.mark.parametrize(("section", "cls"), SECTIONS.items())
def test_schemas_curate_section_matches_dataclass(section, cls):
    """Each curate.* schema section lists exactly the dataclass's fields, nested too."""
    schema = SCHEMA["properties"]["curate"]["properties"][section]
    assert _schema_keys(schema) == _fields(cls)


@pytest.mark.parametrize(("section", "cls"), SECTIONS.items())
def test_schemas_default_config_builds_every_section(section, cls):
    """The default config.yaml turns into each stage's parameters without error."""
    params = build_params(cls, CONFIG["curate"][section], f"curate.{section}")
    assert isinstance(params, cls)


def test_schemas_default_config_spells_out_every_key():
    """config.yaml writes every curation key, so users see each default."""
    for section, cls in SECTIONS.items():
        assert set(CONFIG["curate"][section]) == set(_fields(cls)), section
