"""Shared pieces of the pretraining benchmarks: a synthetic-free batch from real patches, timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide
import torch

from unipipe.ssl.augment import MultiCrop
from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.data import MultiCropCollate, MultiCropDataset
from unipipe.ssl.module import DINOv2Module

ROOT = Path(__file__).resolve().parents[2]
SLIDE = ROOT / "resources" / "slides" / "CMU-1-Small-Region.svs"
UNI_YAML = ROOT / "config" / "pretrain" / "uni_vitl16.yaml"


def real_patches(n: int, size_px: int = 256) -> list[np.ndarray]:
    """n (256, 256, 3) uint8 patches read with OpenSlide on a grid over the bundled slide."""
    with openslide.OpenSlide(str(SLIDE)) as slide:
        w, h = slide.dimensions
        coords = [
            (x, y)
            for y in range(0, h - size_px, size_px // 2)
            for x in range(0, w - size_px, size_px // 2)
        ]
        return [
            np.asarray(slide.read_region(c, 0, (size_px, size_px)).convert("RGB"))
            for c in coords[:n]
        ]


class _Listing(torch.utils.data.Dataset):
    def __init__(self, items: list[np.ndarray]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.items[i]


def multicrop_batch(
    config: PretrainConfig, batch: int, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """One collated multi-crop batch of real patches through the training transform."""
    transform = MultiCrop(
        config.crops, config.augment, mean=config.model.mean, std=config.model.std
    )
    dataset = MultiCropDataset(_Listing(real_patches(batch)), transform, seed=seed)
    collate = MultiCropCollate(
        config, seed=seed, global_batch=batch, global_size=config.crops.global_size
    )
    return collate([dataset[(i, i)] for i in range(batch)])


def training_step_fn(module: DINOv2Module, batch: dict, *, device: str, dtype: torch.dtype | None):
    """A closure running one full DINOv2 iteration: losses, backward, clip, AdamW, EMA."""
    opt = module.configure_optimizers()
    autocast = (
        torch.autocast(device_type=device, dtype=dtype)
        if dtype
        else torch.autocast(device, enabled=False)
    )

    def step() -> float:
        with autocast:
            losses = module.compute_losses(batch, step=0)
        losses["total"].backward()
        for part in module.student.values():  # as the module clips: each part on its own
            torch.nn.utils.clip_grad_norm_(part.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.update_teacher(0.994)
        return float(losses["total"].detach())

    return step


def time_calls(
    fn: Callable[[], object], *, warmup: int, repeats: int, sync: Callable[[], None] = lambda: None
):
    """Median and all wall times (s) of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times
