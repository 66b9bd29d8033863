"""Shared pieces of the embedding benchmarks: the two real patch sources, timing, the models."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from unipipe.curate.shards import PatchDataset, ShardParams, write_store
from unipipe.embed.datasets import ZipClassFolders, resize_patch
from unipipe.models import build_vit
from unipipe.slide import open_slide

ROOT = Path(__file__).resolve().parents[2]
ZIP = ROOT / "resources" / "tiles" / "tcga_luadlusc.zip"
SLIDE = ROOT / "resources" / "slides" / "CMU-1-Small-Region.svs"

# The demo's random_init encoder: the model of config/pretrain/tiny_cpu.yaml, embedding at 224.
TINY_DEMO = ("vit_tiny_patch16_224", {"img_size": 112, "depth": 4, "init_values": 0.1})


def zip_rois(img_size: int = 224) -> ZipClassFolders:
    """The 190 real 256 px TCGA LUAD/LUSC JPEG tiles, read from the zip."""
    return ZipClassFolders(ZIP, classes=["LUAD", "LUSC"], img_size=img_size)


def write_slide_store(store: Path, *, size_px: int = 256, mpp: float = 0.5) -> int:
    """Write a shard store of every grid patch of CMU-1-Small-Region; returns the count."""
    with open_slide(SLIDE, slide_id="CMU-1-Small-Region") as slide:
        # Level-0 footprint of one patch: size_px at mpp, on a slide of slide.mpp µm/px.
        step = int(np.ceil(size_px * mpp / slide.mpp))
        width, height = slide.dimensions
        xs, ys = np.meshgrid(np.arange(0, width - step, step), np.arange(0, height - step, step))
        selected = pd.DataFrame({"slide_id": slide.slide_id, "x": xs.ravel(), "y": ys.ravel(),
                                 "size_px": size_px, "mpp": mpp, "cluster": 0})  # fmt: skip
        write_store(slide, selected, store, ShardParams())
    return len(selected)


def shard_patches(store: Path, img_size: int | None = 224) -> PatchDataset:
    """The store's patches resized as embed_slides does (None: raw (H, W, 3) arrays)."""
    transform = functools.partial(resize_patch, img_size=img_size) if img_size else None
    return PatchDataset([store], transform=transform)


def tiny_demo_vit() -> nn.Module:
    """The demo's tiny ViT at a seeded random init."""
    torch.manual_seed(0)
    return build_vit(TINY_DEMO[0], **TINY_DEMO[1]).eval()


def median_rates(fn: Callable[[], int], *, rounds: int, warmup: bool = True) -> dict[str, float]:
    """Median items/s over ``rounds`` calls of ``fn`` (which returns the items it did).

    ``cpu`` divides by this process's CPU time (user + system, page faults included), so on
    one thread it is the rate of one busy core even when other jobs share the machine;
    ``wall`` divides by elapsed time.
    """
    if warmup:
        fn()  # zip handles, shard indexes, allocator
    wall, cpu = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        n = fn()
        wall.append(n / (time.perf_counter() - t0))
        cpu.append(n / max(time.process_time() - c0, 1e-9))
    return {"cpu": round(statistics.median(cpu), 1), "wall": round(statistics.median(wall), 1)}
