"""Packages whose names load on first use still offer every name they list."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "package", ["unipipe.ssl", "unipipe.embed", "unipipe.evaluate", "unipipe.report"]
)
def test_every_listed_name_resolves_and_unknown_names_raise(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        home = getattr(value, "__module__", None)
        assert home is None or home.startswith(package), (name, home)
    with pytest.raises(AttributeError, match=rf"module '{package}' has no attribute 'nope'"):
        module.nope  # noqa: B018
