"""Shared fixtures for the embed tests: the real TCGA tile zip and a tiny random ViT spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ZIP = Path(__file__).resolve().parents[2] / "resources" / "tiles" / "tcga_luadlusc.zip"

# Same key layout as UNI's ViT-L/16 (init_values -> LayerScale), small enough for CPU tests.
TINY_KWARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2, "init_values": 1e-5}


@pytest.fixture
def demo_task() -> dict:
    """The demo ROI task entry as config/tasks.yaml would give it."""
    return {"adapter": "zip_class_folders", "path": str(ZIP), "classes": ["LUAD", "LUSC"]}


@pytest.fixture
def tiny_random_spec() -> dict:
    """A `random` encoder spec with the UNI architecture name but tiny width and depth."""
    return {"kind": "random", "arch": "vit_large_patch16_224", "kwargs": TINY_KWARGS, "seed": 0}


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Small CPU tensors run far faster on one thread when other jobs share the 2 cores."""
    torch.set_num_threads(1)
