"""DINOv2 self-supervised pretraining (UNI's recipe) in Lightning on the curated Zarr shards.

The names below load their modules on first use: the workflow reads recipes
(``unipipe.ssl.config``) when it parses the Snakefile, and importing Lightning there would
add seconds to every Snakemake start and every cluster job's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unipipe.lazy import lazy_getattr

if TYPE_CHECKING:
    from unipipe.ssl.config import PretrainConfig
    from unipipe.ssl.module import DINOv2Module, TrainingDivergedError
    from unipipe.ssl.train import run_pretrain

__all__ = ["DINOv2Module", "PretrainConfig", "TrainingDivergedError", "run_pretrain"]

_HOMES = {
    "PretrainConfig": "unipipe.ssl.config",
    "DINOv2Module": "unipipe.ssl.module",
    "TrainingDivergedError": "unipipe.ssl.module",
    "run_pretrain": "unipipe.ssl.train",
}

__getattr__ = lazy_getattr(__name__, _HOMES)
