"""Turning validated config sections into the frozen parameter dataclasses of each stage."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from unipipe.errors import ConfigError

__all__ = ["build_params"]

P = TypeVar("P")


def build_params(cls: type[P], section: Mapping[str, Any] | None, key: str) -> P:
    """Build ``cls`` from a config section whose keys are the dataclass's field names.

    Args:
        cls: a dataclass type.
        section: the mapping read from config.yaml (None means all defaults).
        key: where the section lives in config.yaml, e.g. ``curate.tissue``; it is quoted
            in the error so the user knows what to edit.
    """
    section = dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(
            f"config key {key!r} has unknown field(s) {unknown}; "
            f"allowed: {sorted(names)} (see config/README.md)"
        )
    try:
        return cls(**section)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key {key!r}: {err} (see config/README.md)") from err
