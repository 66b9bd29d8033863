"""One rank of the uneven-masks test: ``python ibot_ranks_worker.py INDEX OUT_JSON``.

Rank 0's batch has no masked crop, rank 1's has some; both compute one step's losses in a
gloo process group (``RANK``, ``WORLD_SIZE``, ``MASTER_*`` from the environment; without
them, one process alone). A collective one rank skips fails within the group's timeout.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from unipipe.ssl import PretrainConfig
from unipipe.ssl.augment import MultiCrop
from unipipe.ssl.data import MultiCropCollate, MultiCropDataset, open_patches
from unipipe.ssl.module import DINOv2Module

TINY_YAML = Path(__file__).parents[2] / "config" / "pretrain" / "tiny_cpu.yaml"
OVERRIDES = {"data.batch_size": 2, "crops.n_local": 2, "model.drop_path_rate": 0.0}

if __name__ == "__main__":
    index, out = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ.get("RANK", "1"))
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    cfg = PretrainConfig.from_yaml(TINY_YAML, OVERRIDES)
    torch.manual_seed(0)  # the same initial weights on every rank
    module = DINOv2Module(cfg, global_batch=2)
    transform = MultiCrop(cfg.crops, cfg.augment, mean=cfg.model.mean, std=cfg.model.std)
    dataset = MultiCropDataset(open_patches(index), transform, seed=0)
    collate = MultiCropCollate(cfg, seed=0, global_batch=2, global_size=cfg.crops.global_size)
    batch = collate([dataset[(i, i)] for i in range(2)])
    if rank == 0:
        batch["masks"] = torch.zeros_like(batch["masks"])
    else:  # at least one masked crop whatever the draw
        batch["masks"][0, :10] = True
    losses = module.compute_losses(batch, step=0)
    out.write_text(json.dumps({k: float(v) for k, v in losses.items()}))
    if dist.is_initialized():
        dist.destroy_process_group()
