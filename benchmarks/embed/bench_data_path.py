"""Throughput of the ROI embedding data path (zip read + JPEG decode + resize + normalise).

Usage: .venv/bin/python benchmarks/embed/bench_data_path.py [--repeats 3] [--vitl-batch 2]
Reports patches/s per core for the data path alone (one process, one torch thread), the
same through a DataLoader with 2 workers, and optionally a CPU ViT-L/16 forward for scale.
Writes benchmarks/embed/out/data_path.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from unipipe.embed.datasets import ZipClassFolders
from unipipe.embed.encoders import UNI_ARCH, UNI_KWARGS
from unipipe.models import build_vit

logger = logging.getLogger("bench_data_path")
ZIP = Path(__file__).resolve().parents[2] / "resources" / "tiles" / "tcga_luadlusc.zip"


def _time_loop(ds: ZipClassFolders, repeats: int) -> float:
    """Patches/s reading every item ``repeats`` times in one process."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(ds)):
            ds[i]
    return repeats * len(ds) / (time.perf_counter() - t0)


def main() -> None:
    """Measure and write the JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vitl-batch", type=int, default=0, help="0 skips the ViT-L forward")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    ds = ZipClassFolders(ZIP, classes=["LUAD", "LUSC"], img_size=224)
    result: dict = {"n_patches": len(ds), "load_avg_start": os.getloadavg()[0]}

    result["one_process_patches_per_s"] = round(_time_loop(ds, args.repeats), 1)
    decode_only = time.perf_counter()
    for i in range(len(ds)):
        ds.read_rgb(i)
    result["decode_only_patches_per_s"] = round(len(ds) / (time.perf_counter() - decode_only), 1)
    logger.info("one process: %s patches/s", result["one_process_patches_per_s"])

    loader = DataLoader(ds, batch_size=64, num_workers=2)
    t0 = time.perf_counter()
    n = 0
    for _ in range(args.repeats):
        for x, _ in loader:
            n += len(x)
    result["dataloader_2_workers_patches_per_s"] = round(n / (time.perf_counter() - t0), 1)
    logger.info("2 workers: %s patches/s", result["dataloader_2_workers_patches_per_s"])

    if args.vitl_batch:
        torch.set_num_threads(os.cpu_count() or 1)
        model = build_vit(UNI_ARCH, **UNI_KWARGS).eval()
        x = torch.randn(args.vitl_batch, 3, 224, 224)
        with torch.inference_mode():
            model(x[:1])
            t0 = time.perf_counter()
            model(x)
        result["vitl16_cpu_patches_per_s"] = round(args.vitl_batch / (time.perf_counter() - t0), 3)
        logger.info("ViT-L/16 CPU: %s patches/s", result["vitl16_cpu_patches_per_s"])
    result["load_avg_end"] = os.getloadavg()[0]
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "data_path.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
