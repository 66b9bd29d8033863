"""Embedding: encoder registry, ROI dataset adapters, ROI feature files and slide bags."""

from unipipe.embed.datasets import DATASET_ADAPTERS, build_dataset
from unipipe.embed.encoders import ENCODER_KINDS, resolve_encoder
from unipipe.embed.rois import run_embed_rois
from unipipe.embed.slides import run_embed_slide, run_embed_wsi

__all__ = [
    "DATASET_ADAPTERS",
    "ENCODER_KINDS",
    "build_dataset",
    "resolve_encoder",
    "run_embed_rois",
    "run_embed_slide",
    "run_embed_wsi",
]
