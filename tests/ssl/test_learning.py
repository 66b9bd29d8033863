"""The tiny ViT trained on real patch stores beats its random init on 20-NN over TCGA LUAD/LUSC."""

from __future__ import annotations

import lightning as L
import pytest

from unipipe.models import build_vit, load_encoder
from unipipe.ssl import PretrainConfig, run_pretrain

from .conftest import TCGA_ZIP, TINY_YAML
from .knn import knn_balanced_accuracy, load_tiles

# `benchmarks/pretrain/learning_margin.py --steps 150 --seeds 0 1 2 3 4 --offsets 0 128`,
# this recipe on these stores (CMU grids at offsets 0 and 128 px): 20-NN balanced accuracy
# 0.583-0.617 at init, margins +0.083, +0.167, +0.167, +0.150, +0.133 after 150 steps (min
# +0.083, mean +0.140; at 100 steps the min was +0.033, two test tiles, too close to assert).
# One test tile moves balanced accuracy by 1/60; the test asks seed 0 (the smallest margin)
# for 3 tiles, 0.05.
LEARNING = {"schedule.total_steps": 150, "checkpoint.every_n_steps": 1000, "data.num_workers": 1}
MIN_MARGIN = 0.05


@pytest.mark.slow
def test_tiny_dinov2_beats_random_init_on_20nn(shard_index, tmp_path):
    """Balanced accuracy of the exported teacher exceeds the same architecture at init."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, LEARNING)
    tiles = load_tiles(TCGA_ZIP, cfg.crops.global_size)
    L.seed_everything(0, verbose=False)
    init = build_vit(cfg.model.arch, **cfg.model.kwargs)
    before = knn_balanced_accuracy(init, tiles, cfg.model.mean, cfg.model.std)

    run_pretrain(
        shard_index,
        config=cfg,
        out_dir=tmp_path,
        encoder_safetensors=tmp_path / "e.safetensors",
        encoder_json=tmp_path / "e.json",
        metrics_csv=tmp_path / "m.csv",
        sidecar=tmp_path / "p.json",
        seed=0,
    )
    trained, _ = load_encoder(tmp_path / "e.json")
    after = knn_balanced_accuracy(trained, tiles, cfg.model.mean, cfg.model.std)
    assert after - before >= MIN_MARGIN, f"20-NN balanced accuracy {before:.3f} -> {after:.3f}"
