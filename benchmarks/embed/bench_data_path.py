"""Embedding data path per CPU core (read + decode + resize + collate + normalise), two sources.

Usage: .venv/bin/python benchmarks/embed/bench_data_path.py [--rounds 5] [--patches 960]
       [--vitl-batches 2] [--workers 0]

Sources: the 190 real 256 px JPEG tiles of resources/tiles/tcga_luadlusc.zip, and a shard
store written (into a temporary folder) from every 256 px grid patch of
CMU-1-Small-Region.svs at 0.5 µm/px. Everything runs in one process with one torch thread
and num_workers=0; rates are patches per CPU-second of that process (user + system time),
i.e. per busy core, which other jobs on the machine inflate far less than wall-clock rates
(also printed). "fast" is the library path (dataset items through
a DataLoader into ``embed_batches``, a probe model that costs nothing); "reference" is the
previous transform (PIL decode, PIL resize, a fresh float tensor per normalise step),
measured in the same rounds so the ratio survives the machine's load. Beside them: the
forward rate of the demo's tiny ViT and of ViT-L/16 on the same single thread.
Writes benchmarks/embed/out/data_path.json (git-ignored).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from common import median_rates, shard_patches, tiny_demo_vit, write_slide_store, zip_rois
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset, default_collate

from unipipe.embed.datasets import decode_rgb, normalise_batch, resize_patch
from unipipe.embed.encoders import IMAGENET_MEAN, IMAGENET_STD, UNI_ARCH, UNI_KWARGS
from unipipe.embed.rois import embed_batches
from unipipe.models import build_vit

logger = logging.getLogger("bench_data_path")
TARGET = 1000.0  # patches/s per core (issue 5, Speed)
SIZE = 224
BATCH = 64


class _Probe(nn.Module):
    """A 'model' that reads one pixel per channel: embed_batches' cost without a forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0]  # (B, 3)


def _fast(dataset: Sequence) -> Callable[[], int]:
    """The library path: DataLoader (0 workers) -> embed_batches (normalise on batch)."""
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=False, num_workers=0)

    def run() -> int:
        return len(embed_batches(_Probe(), loader, mean=IMAGENET_MEAN, std=IMAGENET_STD))

    return run


def _reference_item(rgb: np.ndarray) -> torch.Tensor:
    """The transform before this change: PIL bilinear resize, then a CHW copy."""
    image = Image.fromarray(rgb).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _reference_normalise(batch: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - m) / s


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _reference(read: Callable[[int], np.ndarray], indices: list[int]) -> Callable[[], int]:
    """The previous path on the same items: read, PIL resize, collate, normalise."""

    def run() -> int:
        n = 0
        for start in range(0, len(indices), BATCH):
            items = [_reference_item(read(i)) for i in indices[start : start + BATCH]]
            n += len(_reference_normalise(default_collate(items)))
        return n

    return run


def _time_us(stages: dict[str, Callable[[], object]], n: int, rounds: int) -> dict[str, float]:
    """Median CPU µs per patch of each stage callable (each handles ``n`` patches per call)."""
    out = {}
    for name, fn in stages.items():
        fn()
        times = []
        for _ in range(rounds):
            c0 = time.process_time()
            fn()
            times.append((time.process_time() - c0) / n * 1e6)
        out[name] = round(statistics.median(times), 1)
    return out


def _transform_stages(raws: list[np.ndarray]) -> dict[str, Callable[[], object]]:
    """Resize, collate and normalise of ``raws`` (H, W, 3), fast and reference."""
    batch = torch.stack([resize_patch(r, img_size=SIZE) for r in raws[:BATCH]])  # (64, 3, S, S)
    buffer = torch.empty(batch.shape)
    n_batches = range(0, len(raws), BATCH)
    return {
        "resize_fast": lambda: [resize_patch(r, img_size=SIZE) for r in raws],
        "resize_reference": lambda: [_reference_item(r) for r in raws],
        "collate": lambda: [default_collate(list(batch)) for _ in n_batches],
        "normalise_fast": lambda: [
            normalise_batch(batch, mean=IMAGENET_MEAN, std=IMAGENET_STD, out=buffer)
            for _ in n_batches
        ],
        "normalise_reference": lambda: [_reference_normalise(batch) for _ in n_batches],
    }


def _forward_rate(model: nn.Module, batch: int, batches: int) -> float:
    """Model forward patches per CPU-second at 224 on one thread (after one warm-up)."""
    x = torch.randn(batch, 3, SIZE, SIZE)
    with torch.inference_mode():
        model(x)
        c0 = time.process_time()
        for _ in range(batches):
            model(x)
    return batch * batches / (time.process_time() - c0)


def _measure_sources(args: argparse.Namespace, store: Path) -> dict:
    """Fast and reference rates of both sources, interleaved round by round."""
    rois = zip_rois(SIZE)
    shards = shard_patches(store, SIZE)
    raw_shards = shard_patches(store, None)
    zip_idx = [i % len(rois) for i in range(args.patches)]
    shard_idx = [i % len(shards) for i in range(args.patches)]
    runs = {
        "zip_fast": _fast(Subset(rois, zip_idx)),
        "zip_reference": _reference(lambda i: _pil_decode(rois._read_bytes(i)), zip_idx),
        "shards_fast": _fast(Subset(shards, shard_idx)),
        "shards_reference": _reference(lambda i: raw_shards[i], shard_idx),
    }
    rates: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for r in range(args.rounds):
        for name, fn in runs.items():
            rates[name].append(median_rates(fn, rounds=1, warmup=False))
        logger.info("round %s: %s", r, {k: v[-1] for k, v in rates.items()})
    result: dict = {
        name: {clock: statistics.median(r[clock] for r in rs) for clock in ("cpu", "wall")}
        for name, rs in rates.items()
    }

    blobs = [rois._read_bytes(i) for i in range(len(rois))]
    raws = [decode_rgb(b) for b in blobs]
    zip_stages = {
        "read_bytes": lambda: [rois._read_bytes(i) for i in range(len(rois))],
        "decode_fast": lambda: [decode_rgb(b) for b in blobs],
        "decode_reference": lambda: [_pil_decode(b) for b in blobs],
        **_transform_stages(raws),
    }
    result["zip_stages_us"] = _time_us(zip_stages, len(raws), args.rounds)
    shard_raws = [raw_shards[i] for i in range(len(raw_shards))]
    shard_stages = {
        "read": lambda: [raw_shards[i] for i in range(len(raw_shards))],
        **_transform_stages(shard_raws),
    }
    result["shards_stages_us"] = _time_us(shard_stages, len(shard_raws), args.rounds)
    return result


def main() -> None:
    """Measure, print a summary and write the JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--patches", type=int, default=960, help="patches per round and source")
    ap.add_argument("--tiny-batches", type=int, default=3, help="batches of 64; 0 skips")
    ap.add_argument("--vitl-batches", type=int, default=2, help="batches of 2; 0 skips")
    ap.add_argument("--workers", type=int, default=0, help="also time a DataLoader with N")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    result: dict = {"load_avg_start": os.getloadavg()[0], "img_size": SIZE, "batch": BATCH}

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "CMU-1-Small-Region.zarr"
        result["shard_patches"] = write_slide_store(store)
        result.update(_measure_sources(args, store))
    for source in ("zip", "shards"):
        fast, ref = result[f"{source}_fast"]["cpu"], result[f"{source}_reference"]["cpu"]
        result[f"{source}_fast_over_target"] = round(fast / TARGET, 2)
        result[f"{source}_speedup_over_reference"] = round(fast / ref, 2)

    if args.workers:
        torch.set_num_threads(1)
        rois = Subset(zip_rois(SIZE), [i % 190 for i in range(args.patches)])
        loader = DataLoader(rois, batch_size=BATCH, num_workers=args.workers)
        # wall clock only: the workers' CPU time is not this process's
        result[f"zip_fast_{args.workers}_workers_wall"] = median_rates(
            lambda: len(embed_batches(_Probe(), loader, mean=IMAGENET_MEAN, std=IMAGENET_STD)),
            rounds=args.rounds,
        )["wall"]
    if args.tiny_batches:
        rate = _forward_rate(tiny_demo_vit(), BATCH, args.tiny_batches)
        result["tiny_demo_vit_forward_per_s"] = round(rate, 1)
    if args.vitl_batches:
        model = build_vit(UNI_ARCH, **UNI_KWARGS).eval()
        result["vitl16_forward_per_s"] = round(_forward_rate(model, 2, args.vitl_batches), 3)
    result["load_avg_end"] = os.getloadavg()[0]

    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "data_path.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
