"""DINOv2 self-supervised pretraining (UNI's recipe) in Lightning on the curated Zarr shards."""

from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.module import DINOv2Module, TrainingDivergedError
from unipipe.ssl.train import run_pretrain

__all__ = ["DINOv2Module", "PretrainConfig", "TrainingDivergedError", "run_pretrain"]
