"""Benchmark of patch reads: Slide.read_region at 0.5 mpp vs OpenSlide vs the JPEG-decode floor.

Run: .venv/bin/python benchmarks/curate/bench_read.py [--patches 400] [--repeats 3]
Patches are 256 px at 0.5 mpp at seeded random positions inside each bundled slide; one
process, OpenCV on one thread. Columns: unipipe = Slide.read_region (direct tile reads where
available, tile cache warm); cold = the same with every cache cleared before each read
(each patch decodes all its tiles); via-openslide = read_region with direct tile reads off
(OpenSlide's own reads and cache); openslide = raw
OpenSlide read_region of 256 px at level 0. The floor decodes every level-0 tile once
(tifffile's decoder for the slide's tile format), quoted as patch-equivalents of pixels
(65,536 px per patch). Prints a table; figures are medians of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import openslide
import tifffile

from unipipe.slide import open_slide
from unipipe.slide.openslide_reader import open_with_openslide

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"
CASES = [
    "CMU-1-Small-Region.svs",
    "CMU-1-Small-Region-dicom",
    "OS-1-detail.ome.tif",
    "OS-2-ndpi.ome.tif",
]
SIZE_PX, MPP = 256, 0.5


def _positions(slide, n: int, seed: int) -> np.ndarray:
    footprint = int(np.ceil(SIZE_PX * MPP / slide.mpp))
    w, h = slide.dimensions
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, w - footprint, n), rng.integers(0, h - footprint, n)], 1)


def _rate(fn, positions: np.ndarray, repeats: int) -> float:
    """Median patches/s over ``repeats`` passes (the first pass warms caches and is dropped)."""
    rates = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for x, y in positions:
            fn(int(x), int(y))
        rates.append(len(positions) / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def _floor(path: Path) -> float | None:
    """Patch-equivalents per second of decoding each level-0 tile once (None: not a TIFF)."""
    try:
        tif = tifffile.TiffFile(path)
    except tifffile.TiffFileError:
        return None
    with tif:
        page = tif.pages[0]
        chunks = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            tif.filehandle.seek(offset)
            chunks.append(tif.filehandle.read(count))
        start = time.perf_counter()
        for index, data in enumerate(chunks):
            page.decode(data, index, jpegtables=page.jpegtables)
        seconds = time.perf_counter() - start
        pixels = page.shape[0] * page.shape[1]
    return pixels / (SIZE_PX * SIZE_PX) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)

    rows = []
    for name in CASES:
        with open_slide(SLIDES / name) as slide:
            positions = _positions(slide, args.patches, seed=0)
            unipipe_rate = _rate(
                lambda x, y, s=slide: s.read_region(x, y, SIZE_PX, MPP), positions, args.repeats
            )

            def cold(x: int, y: int, s=slide) -> None:
                s.clear_cache()
                s.read_region(x, y, SIZE_PX, MPP)

            cold_rate = _rate(cold, positions, args.repeats)
            reader = slide.reader
        openslide_rate = through_rate = None
        if reader == "openslide":
            through = open_with_openslide(slide.path, slide_id=name, mpp=None, fast_tiles=False)
            through_rate = _rate(
                lambda x, y, s=through: s.read_region(x, y, SIZE_PX, MPP), positions, args.repeats
            )
            through.close()
            handle = openslide.OpenSlide(slide.path)
            openslide_rate = _rate(
                lambda x, y, h=handle: np.asarray(h.read_region((x, y), 0, (SIZE_PX, SIZE_PX))),
                positions,
                args.repeats,
            )
            handle.close()
        floor = _floor(SLIDES / name) if reader != "openslide" or name.endswith(".svs") else None
        rows.append((name, reader, unipipe_rate, cold_rate, through_rate, openslide_rate, floor))

    print(
        f"command: .venv/bin/python benchmarks/curate/bench_read.py --patches {args.patches} --repeats {args.repeats}"
    )
    header = ("slide", "reader", "unipipe/s", "cold/s", "via-openslide/s", "openslide/s",
              "floor/s", "cold % floor")  # fmt: skip
    print("{:28s} {:10s} {:>10s} {:>8s} {:>16s} {:>12s} {:>9s} {:>13s}".format(*header))

    def cell(value: float | None, width: int) -> str:
        return f"{value:{width}.0f}" if value else f"{'-':>{width}s}"

    for name, reader, ours, cold, through, raw, floor in rows:
        share = f"{100 * cold / floor:12.0f}%" if floor else f"{'-':>13s}"
        print(
            f"{name:28s} {reader:10s} {ours:10.0f} {cold:8.0f} {cell(through, 16)} "
            f"{cell(raw, 12)} {cell(floor, 9)} {share}"
        )


if __name__ == "__main__":
    main()
