"""Embedding: encoder registry, ROI dataset adapters, ROI feature files and slide bags.

The names below load their modules on first use: the workflow reads a few light helpers
(``unipipe.embed.encoders.check_checkpoint_path``) when it parses the Snakefile, and every
Snakemake start and cluster job would otherwise import the whole embedding stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unipipe.embed.datasets import DATASET_ADAPTERS, build_dataset
    from unipipe.embed.encoders import ENCODER_KINDS, resolve_encoder
    from unipipe.embed.rois import run_embed_rois
    from unipipe.embed.slides import run_embed_slide, run_embed_wsi

_HOMES = {
    "DATASET_ADAPTERS": "unipipe.embed.datasets",
    "build_dataset": "unipipe.embed.datasets",
    "ENCODER_KINDS": "unipipe.embed.encoders",
    "resolve_encoder": "unipipe.embed.encoders",
    "run_embed_rois": "unipipe.embed.rois",
    "run_embed_slide": "unipipe.embed.slides",
    "run_embed_wsi": "unipipe.embed.slides",
}

__all__ = [
    "DATASET_ADAPTERS",
    "ENCODER_KINDS",
    "build_dataset",
    "resolve_encoder",
    "run_embed_rois",
    "run_embed_slide",
    "run_embed_wsi",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'unipipe.embed' has no attribute {name!r}")
