"""Turning validated config sections into the frozen parameter dataclasses of each stage."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from unipipe.errors import ConfigError

__all__ = ["build_params", "check_field_type"]

P = TypeVar("P")

# Scalar annotations checked before a dataclass is built, with the words used in errors.
_SCALARS: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "text",
}


def build_params(cls: type[P], section: Mapping[str, Any] | None, key: str) -> P:
    """Build ``cls`` from a config section whose keys are the dataclass's field names.

    Args:
        cls: a dataclass type.
        section: the mapping read from config.yaml (None means all defaults).
        key: where the section lives in config.yaml, e.g. ``curate.tissue``; it is quoted
            in the error so the user knows what to edit.

    Raises:
        ConfigError: an unknown field, a value of the wrong type for its field (scalar
            fields: bool, int, float, str and their optionals) or one ``cls`` refuses.
    """
    section = dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(
            f"config key {key!r} has unknown field(s) {unknown}; "
            f"allowed: {sorted(names)} (see config/README.md)"
        )
    for name, value in section.items():
        check_field_type(cls, name, value, f"{key}.{name}")
    try:
        return cls(**section)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key {key!r}: {err} (see config/README.md)") from err


def check_field_type(cls: type, name: str, value: Any, key: str) -> None:
    """Refuse ``value`` for field ``name`` of dataclass ``cls`` if its scalar type is wrong.

    Without this a string such as ``abc`` for an integer reaches ``__post_init__`` and
    fails there as "'>' not supported between 'str' and 'int'". Fields whose annotation
    is no plain scalar (tuples, mappings, Literal choices, nested dataclasses) are left to
    the dataclass's own checks; so is a field ``cls`` does not have.

    Args:
        cls: a dataclass type.
        name: one of its field names.
        value: the value read from YAML.
        key: the config key to name in the error, e.g. ``pretrain.schedule.total_steps``.
    """
    expected = _scalar_types(cls).get(name)
    if expected is None or value is None and type(None) in expected:
        return
    if any(_accepts(kind, value) for kind in expected):
        return
    words = " or ".join(_SCALARS.get(kind, "null") for kind in expected)
    hint = ""
    if isinstance(value, str) and (int in expected or float in expected):
        # PyYAML reads 1e-4 (no dot) and quoted numbers as text.
        hint = "; write numbers unquoted"
        if float in expected:
            hint += ", with a dot in the mantissa (1.0e-4, not 1e-4)"
    raise ConfigError(
        f"config key {key!r} is {value!r} ({type(value).__name__}); expected {words}{hint} "
        "(see config/README.md)"
    )


def _accepts(kind: type, value: Any) -> bool:
    """Whether ``value`` is a ``kind``: an integer is a fine float, but True is no number."""
    if kind is bool or kind is str:
        return isinstance(value, kind)
    if kind is type(None):
        return value is None
    number = numbers.Integral if kind is int else numbers.Real
    return isinstance(value, number) and not isinstance(value, bool)


def _scalar_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Field name -> accepted scalar types, for the fields annotated with scalars only."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}  # an annotation that cannot be resolved here is checked by cls itself
    scalar = {}
    for field in dataclasses.fields(cls):
        hint = hints.get(field.name)
        members = (
            typing.get_args(hint)
            if typing.get_origin(hint) in (typing.Union, types.UnionType)
            else (hint,)
        )
        if members and all(m in _SCALARS or m is type(None) for m in members):
            scalar[field.name] = members
    return scalar
