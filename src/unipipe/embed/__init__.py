"""Embedding: encoder registry, ROI dataset adapters and the ROI feature writer."""

from unipipe.embed.datasets import DATASET_ADAPTERS, build_dataset
from unipipe.embed.encoders import ENCODER_KINDS, resolve_encoder
from unipipe.embed.rois import run_embed_rois

__all__ = [
    "DATASET_ADAPTERS",
    "ENCODER_KINDS",
    "build_dataset",
    "resolve_encoder",
    "run_embed_rois",
]
