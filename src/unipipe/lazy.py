"""Package attributes that import their module on first use.

The workflow reads small helpers from several packages when it parses the Snakefile; a
package ``__init__`` that imported its whole stack there would add seconds to every
Snakemake start and every cluster job.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that loads ``name`` from the module ``homes[name]`` names."""

    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(importlib.import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
