"""ViT-L/16 embedding patches/s on one GPU in bf16 at 224 px (ready to run, not yet run on a GPU).

Issue 5's target: at least 3,800 patches/s on one H200 (about 60% of its compute ceiling).
Three figures, all through ``unipipe.embed.rois.embed_batches`` (uint8 to the device, one
normalise there, forward in the weights' dtype):
- model: real 224 px patches already on the device as uint8, i.e. the encoder's own rate;
- zip / shards: end to end from the real TCGA JPEG tiles and from a shard store of
  CMU-1-Small-Region.svs, decoded and resized by ``--workers`` DataLoader processes.
FLOPs per patch are counted by ``torch.utils.flop_counter`` on one forward.

Usage on a GPU node: .venv/bin/python benchmarks/embed/bench_gpu_embed.py --batch 256 --workers 8
A CPU smoke run: .venv/bin/python benchmarks/embed/bench_gpu_embed.py --device cpu
    --arch vit_tiny_patch16_224 --dtype fp32 --batch 4 --repeats 2 --patches 16 --workers 0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import shard_patches, write_slide_store, zip_rois
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode

from unipipe.embed.datasets import normalise_batch
from unipipe.embed.encoders import IMAGENET_MEAN, IMAGENET_STD, UNI_KWARGS
from unipipe.embed.rois import embed_batches
from unipipe.models import build_vit

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TARGET = 3800.0  # patches/s on one H200


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _real_batch(batch: int, device: str) -> torch.Tensor:
    """(batch, 3, 224, 224) uint8 on ``device``: the real tiles, repeated to fill the batch."""
    rois = zip_rois(224)
    tiles = torch.stack([rois[i % len(rois)][0] for i in range(batch)])
    return tiles.to(device)


def _model_rate(model: torch.nn.Module, x: torch.Tensor, repeats: int, device: str) -> float:
    """Patches/s of embed_batches over ``repeats`` device-resident uint8 batches."""
    embed_batches(model, [x], mean=IMAGENET_MEAN, std=IMAGENET_STD, device=device)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    embed_batches(model, [x] * repeats, mean=IMAGENET_MEAN, std=IMAGENET_STD, device=device)
    _sync(device)
    return len(x) * repeats / (time.perf_counter() - t0)


def _loader_rate(model: torch.nn.Module, dataset, args: argparse.Namespace) -> float:
    """End-to-end patches/s: DataLoader workers decode and resize, the device embeds."""
    workers = args.workers
    loader = DataLoader(
        Subset(dataset, [i % len(dataset) for i in range(args.patches)]),
        batch_size=args.batch,
        num_workers=workers,
        pin_memory=args.device.startswith("cuda"),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )
    embed_batches(model, loader, mean=IMAGENET_MEAN, std=IMAGENET_STD, device=args.device)
    _sync(args.device)  # the first pass starts the workers and warms the kernels
    t0 = time.perf_counter()
    embed_batches(model, loader, mean=IMAGENET_MEAN, std=IMAGENET_STD, device=args.device)
    _sync(args.device)
    return args.patches / (time.perf_counter() - t0)


def main() -> None:
    """Measure and print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="vit_large_patch16_224")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20, help="batches timed for the model")
    parser.add_argument("--patches", type=int, default=8192, help="patches per end-to-end pass")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True

    model = build_vit(args.arch, **UNI_KWARGS).eval().to(args.device, DTYPES[args.dtype])
    if args.compile:
        model = torch.compile(model)
    x = _real_batch(args.batch, args.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(normalise_batch(x, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=DTYPES[args.dtype]))
    flops_per_patch = counter.get_total_flops() / args.batch

    model_rate = _model_rate(model, x, args.repeats, args.device)
    result = {
        "benchmark": "gpu_embed",
        "arch": args.arch,
        "dtype": args.dtype,
        "batch": args.batch,
        "img_size": 224,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "gflop_per_patch": round(flops_per_patch / 1e9, 1),
        "model_patches_per_s": round(model_rate, 1),
        "model_over_target": round(model_rate / TARGET, 2),
        "achieved_tflops": round(model_rate * flops_per_patch / 1e12, 1),
        "fraction_of_peak": round(model_rate * flops_per_patch / (args.peak_tflops * 1e12), 3),
        "peak_tflops": args.peak_tflops,
        "workers": args.workers,
    }
    result["zip_patches_per_s"] = round(_loader_rate(model, zip_rois(224), args), 1)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "CMU-1-Small-Region.zarr"
        write_slide_store(store)
        result["shards_patches_per_s"] = round(_loader_rate(model, shard_patches(store), args), 1)
    if args.device.startswith("cuda"):
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
