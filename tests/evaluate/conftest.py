"""Shared fixtures: ROI features of the real TCGA tiles from a tiny random ViT (module-wide)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unipipe.embed.rois import run_embed_rois

ROOT = Path(__file__).resolve().parents[2]
ZIP = ROOT / "resources" / "tiles" / "tcga_luadlusc.zip"
DEMO_TASK = {
    "id": "tcga_luadlusc_demo",
    "adapter": "zip_class_folders",
    "path": str(ZIP),
    "classes": ["LUAD", "LUSC"],
    "split": {"source": "folders", "train": "train", "test": "test"},
    "metrics": ["balanced_accuracy", "weighted_f1", "auroc"],
}


@pytest.fixture
def demo_task() -> dict:
    """The demo task entry as run_evaluate receives it."""
    return dict(DEMO_TASK)


@pytest.fixture(scope="session")
def demo_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROI h5 of the 190 real tiles embedded by a seeded 1-block ViT (D = 64) at 224 px.

    No LayerScale here: with init_values=1e-5 a random ViT's CLS output barely depends on
    the image (feature std ~1e-6), which would make every probe predict one class.
    """
    out = tmp_path_factory.mktemp("embed") / "features.h5"
    spec = {
        "kind": "random",
        "arch": "vit_large_patch16_224",
        "seed": 0,
        "kwargs": {"depth": 1, "embed_dim": 64, "num_heads": 2},
    }
    run_embed_rois(
        DEMO_TASK,
        encoder_name="random_tiny",
        encoder_spec=spec,
        out_h5=out,
        sidecar=out.with_suffix(".json"),
        batch_size=64,
        num_workers=0,
        img_size=224,
    )
    return out


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Small CPU tensors run far faster on one thread when other jobs share the 2 cores."""
    torch.set_num_threads(1)
