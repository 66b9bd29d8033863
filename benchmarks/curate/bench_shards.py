"""Benchmark of patch-store writes and random single-patch reads (direct shard index vs zarr-python).

Run: .venv/bin/python benchmarks/curate/bench_shards.py [--patches 2048] [--reads 3000]
    [--jpeg-quality 90 80]
Patches are real 256x256 reads of CMU-1-Small-Region at 0.5 mpp on a dense overlapping grid,
kept where over 60% of the pixels are stained (so the figures are those of tissue, not glass).
Prints one JSON line per configuration; everything runs in this one process (one core).
JPEG rows also give the PSNR of the stored patches against the pixels written (pooled MSE),
and for each --jpeg-quality one line compares 4:4:4 (the codec's) and 4:2:0 chroma on them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import zarr

from unipipe.curate.shard_index import FastShardArray
from unipipe.curate.shards import ShardParams, write_store
from unipipe.slide import open_slide

SLIDE = Path(__file__).resolve().parents[2] / "resources" / "slides" / "CMU-1-Small-Region.svs"


def _grid(slide, n: int, size_px: int = 256) -> pd.DataFrame:
    """``n`` tile rows on an overlapping grid (stride chosen to give at least n positions)."""
    width, height = slide.dimensions
    footprint = size_px * 0.5 / slide.mpp
    stride = 16
    while ((width - footprint) // stride + 1) * ((height - footprint) // stride + 1) > 2 * n:
        stride += 8
    xs = np.arange(0, width - footprint, stride, dtype=np.int64)
    ys = np.arange(0, height - footprint, stride, dtype=np.int64)
    yy, xx = (a.ravel()[:n] for a in np.meshgrid(ys, xs, indexing="ij"))
    return pd.DataFrame({"slide_id": "bench", "x": xx, "y": yy, "size_px": size_px, "mpp": 0.5,
                         "cluster": 0, "tissue_fraction": 1.0})  # fmt: skip


class _MemorySlide:
    """Serves patches already read, so that store writes are timed without slide decoding."""

    def __init__(self, slide, rows: pd.DataFrame, pixels: np.ndarray) -> None:
        self.slide_id, self.mpp = slide.slide_id, slide.mpp
        self._by_xy = {(int(x), int(y)): i for i, (x, y) in enumerate(rows[["x", "y"]].to_numpy())}
        self.pixels = pixels

    def read_region(self, x: int, y: int, size_px: int, mpp: float) -> np.ndarray:
        return self.pixels[self._by_xy[(x, y)]]

    def read_regions(self, origins: np.ndarray, size_px: int, mpp: float) -> Iterator[np.ndarray]:
        """The batched read the shard writer uses, served from memory too."""
        return (self.read_region(int(x), int(y), size_px, mpp) for x, y in origins)


def _psnr_db(stored, written: np.ndarray) -> float:
    """PSNR (peak 255, dB) of a stored (N, H, W, 3) uint8 array against the patches written.

    The squared error is pooled over every pixel; patches are compared one at a time so that
    memory stays that of one patch.
    """
    total = sum(
        float(np.sum((stored[i].astype(np.float64) - written[i]) ** 2)) for i in range(len(written))
    )
    return float(10 * np.log10(255**2 / (total / written.size)))


def _rate(fn, indices: np.ndarray) -> float:
    """Calls per CPU second of ``fn(i)`` over ``indices`` (after a short warm-up).

    CPU time of the whole process (all its threads) rather than wall time: the figure is
    per core and does not move when other jobs share the machine.
    """
    for i in indices[:50]:
        fn(int(i))
    start = time.process_time()
    for i in indices:
        fn(int(i))
    return len(indices) / (time.process_time() - start)


def _subsampling_rows(pixels: np.ndarray, qualities: list[int]) -> None:
    """Print bytes/raw and pooled PSNR of 4:4:4 and 4:2:0 JPEG of ``pixels`` at each quality."""
    for quality in qualities:
        result: dict[str, object] = {"what": "jpeg chroma subsampling", "jpeg_quality": quality}
        for subsampling in ("444", "420"):
            encoded = [
                imagecodecs.jpeg_encode(p, level=quality, subsampling=subsampling) for p in pixels
            ]
            decoded = np.stack([imagecodecs.jpeg_decode(e) for e in encoded])
            result[f"bytes_over_raw_{subsampling}"] = round(
                sum(map(len, encoded)) / pixels.nbytes, 3
            )
            result[f"psnr_db_{subsampling}"] = round(_psnr_db(decoded, pixels), 2)
        print(json.dumps(result))


def main() -> None:
    """Write stores for each codec and measure write and random-read rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=2048)
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--per-shard", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--jpeg-quality", type=int, nargs="+", default=[90])
    args = parser.parse_args()

    with open_slide(SLIDE, slide_id="bench") as slide, tempfile.TemporaryDirectory() as tmp:
        # Candidates on a dense grid; keep those that are mostly tissue (not white glass),
        # so compression ratios and decode costs are those of real H&E.
        candidates = _grid(slide, 4 * args.patches)
        start = time.process_time()
        patches = [
            slide.read_region(int(x), int(y), 256, 0.5)
            for x, y in candidates[["x", "y"]].itertuples(index=False)
        ]
        slide_rate = len(candidates) / (time.process_time() - start)
        tissue = np.array([(p.min(axis=2) < 200).mean() > 0.6 for p in patches])
        rows = candidates[tissue].iloc[: args.patches].reset_index(drop=True)
        memory = _MemorySlide(
            slide, rows, np.stack([p for p, t in zip(patches, tissue, strict=True) if t])
        )
        print(
            json.dumps({"what": "slide.read_region 256px", "patches_per_cpu_s": round(slide_rate)})
        )

        _subsampling_rows(memory.pixels[: len(rows)], args.jpeg_quality)

        rng = np.random.default_rng(0)
        indices = rng.integers(0, len(rows), args.reads)
        raw_bytes = len(rows) * 256 * 256 * 3
        codecs = [("zstd", 90), ("none", 90), ("blosc", 90)]
        codecs += [("jpeg", q) for q in args.jpeg_quality]
        for compressor, quality in codecs:
            for per_shard in args.per_shard:
                params = ShardParams(
                    patches_per_shard=per_shard, compressor=compressor, jpeg_quality=quality
                )
                store = Path(tmp) / f"{compressor}-{quality}-{per_shard}.zarr"
                start = time.process_time()
                write_store(memory, rows, store, params)
                write_s = time.process_time() - start
                stored = sum(
                    p.stat().st_size for p in (store / "patches" / "c").rglob("*") if p.is_file()
                )
                fast = FastShardArray(store / "patches")
                slow = zarr.open_array(store / "patches", mode="r")
                result = {
                    "compressor": compressor,
                    "patches_per_shard": per_shard,
                    "patches": len(rows),
                    "bytes_over_raw": round(stored / raw_bytes, 3),
                    "write_patches_per_cpu_s": round(len(rows) / write_s),
                    "random_read_direct_patches_per_cpu_s": round(_rate(fast.__getitem__, indices)),
                    "random_read_zarr_patches_per_cpu_s": round(
                        _rate(slow.__getitem__, indices[: args.reads // 4])
                    ),
                }
                if compressor == "jpeg":
                    result["jpeg_quality"] = quality
                    # rows are the first tissue patches, in memory.pixels order
                    result["psnr_db"] = round(_psnr_db(fast, memory.pixels[: len(rows)]), 2)
                print(json.dumps(result))


if __name__ == "__main__":
    main()
