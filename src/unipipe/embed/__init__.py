"""Embedding: encoder registry, ROI dataset adapters, ROI feature files and slide bags.

The names below load their modules on first use: the workflow reads a few light helpers
(``unipipe.embed.encoders.check_checkpoint_path``) when it parses the Snakefile, and every
Snakemake start and cluster job would otherwise import the whole embedding stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unipipe.lazy import lazy_getattr

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

__getattr__ = lazy_getattr(__name__, _HOMES)
