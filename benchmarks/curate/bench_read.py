"""Benchmark of cold patch reads as a slide job does them, against the JPEG-tile decode floor.

Run: .venv/bin/python benchmarks/curate/bench_read.py [--repeats 7] [--specs 256 512]

Workload per slide and spec (size px at 0.5 mpp): the tissue patches of the tiling grid
(default tissue segmentation at 4 µm/px, non-overlapping grid, tissue fraction >= 0.5),
read once in grid (row-major) order from a freshly opened slide (opening it is not timed).
One process, OpenCV on one thread; every figure is the median of ``--repeats`` runs, the
kinds interleaved.

Columns:
  batched   Slide.read_regions over the whole grid (plans tile use, decodes each once).
  per-patch Slide.read_region patch by patch on the fresh slide (its own tile cache on).
  cleared   read_region with every cache cleared before each patch (the old "cold").
  openslide raw OpenSlide read_region of each box at level 0 (only where 0.5 mpp is level 0).
  floor     decoding, once each, exactly the tiles the grid touches (bytes read beforehand,
            the reader's own decoder), quoted in patches/s of this workload.
  ratio     batched / floor (target >= 0.6): floor time over batched time.
  resize    share of the batched time spent resampling to 0.5 mpp (timed alone).
Patches/s are of the workload's patches. The last line holds both tile caches to 16 MiB
and shuffles the patches of the mosaic (a slide of 3 x 3 copies of the SVS written by the
benchmark, 256 px YCbCr JPEG tiles): decodes and patches/s, batched (drops the tile needed
furthest ahead) vs read_region's least-recently-used cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import openslide
import tifffile

from unipipe.curate.tiling import TilingParams, grid_origins, mask_fractions
from unipipe.curate.tissue import TissueParams, segment_tissue
from unipipe.slide import open_slide
from unipipe.slide.batch import BatchStats, _tiles_of
from unipipe.slide.tiff_tiles import TiledPage

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"
CASES = [
    "CMU-1-Small-Region.svs",
    "CMU-1-Small-Region-dicom",
    "OS-1-detail.ome.tif",
    "OS-2-ndpi.ome.tif",
]
MPP = 0.5


def tissue_grid(slide, size_px: int, mpp: float) -> np.ndarray:
    """(n, 2) level-0 origins of the grid tiles a default tiling would keep for tissue."""
    tissue_params, tiling = TissueParams(), TilingParams()
    thumb_mpp = tissue_params.thumb_mpp
    mask = segment_tissue(slide.read_thumbnail(thumb_mpp), mpp=thumb_mpp, params=tissue_params)
    width, height = slide.dimensions
    footprint = size_px * mpp / slide.mpp
    gx, gy = grid_origins(width, footprint, footprint), grid_origins(height, footprint, footprint)
    ys, xs = (a.ravel() for a in np.meshgrid(gy, gx, indexing="ij"))
    scale = (mask.mask.shape[1] / width, mask.mask.shape[0] / height)
    keep = mask_fractions(mask.mask > 0, scale, xs, ys, footprint) >= tiling.min_tissue_fraction
    return np.stack([xs[keep], ys[keep]], 1)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _touched(slide, origins: np.ndarray, size_px: int, mpp: float) -> tuple[int, list[int]]:
    """The level read and the row-major tile indices the workload's boxes overlap."""
    plan = slide._plan(size_px, mpp)
    grid = slide._tile_grid(plan.level)
    touched: set[int] = set()
    for x, y in origins:
        bx, by, bw, bh = plan.box(int(x), int(y))
        x0, y0 = max(bx, 0), max(by, 0)
        x1, y1 = min(bx + bw, grid.width), min(by + bh, grid.height)
        touched.update(_tiles_of(grid, x0, y0, x1 - x0, y1 - y0))
    return plan.level, sorted(touched)


def floor_decoder(slide, level: int, tiles: list[int]) -> Callable[[], None] | None:
    """A function decoding each listed tile once from bytes read beforehand (None: no floor)."""
    if slide.reader == "pydicom":
        frame_of = slide._frame_index.ravel()  # row-major grid slot -> frame number
        chunks = [slide._frames.read(int(frame_of[t])) for t in tiles]
        return lambda: [imagecodecs.jpeg8_decode(c) for c in chunks]
    try:
        tif = tifffile.TiffFile(slide.path)
    except tifffile.TiffFileError:
        return None
    width, height = slide.level_dimensions[level]
    pages = [
        p for p in tif.pages if p.is_tiled and (p.imagewidth, p.imagelength) == (width, height)
    ]
    if not pages:
        tif.close()
        return None
    page, fd = pages[0], tif.filehandle.fileno()
    chunks = [os.pread(fd, int(page.databytecounts[t]), int(page.dataoffsets[t])) for t in tiles]
    decode = page.decode  # built while the file is open (it peeks at the first tile)
    tif.close()
    return lambda: [
        decode(c, t, jpegtables=page.jpegtables) for c, t in zip(chunks, tiles, strict=True)
    ]


def write_mosaic(folder: Path, copies: int) -> Path:
    """A larger slide for a longer workload: copies x copies of the SVS's pixels as a tiled TIFF.

    256 px YCbCr JPEG tiles (q90, 4:2:0, what most scanners write), level-0 mpp of the SVS,
    no pyramid; OpenSlide opens it as generic TIFF, so its tiles are read directly too.
    """
    with open_slide(SLIDES / CASES[0]) as svs:
        pixels = svs.read_region(0, 0, svs.dimensions, svs.mpp)
        mpp = svs.mpp
    path = folder / f"mosaic-{copies}x{copies}.tif"
    per_cm = 1e4 / mpp
    tifffile.imwrite(
        path,
        np.tile(pixels, (copies, copies, 1)),
        tile=(256, 256),
        compression="jpeg",
        compressionargs={"level": 90},
        photometric="ycbcr",
        subsampling=(2, 2),
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
    )
    return path


def measure(path: Path, size_px: int, repeats: int) -> dict | None:
    """Median timings of every column for one slide and spec (None: no tissue patch)."""
    name = path.name
    with open_slide(path) as slide:
        origins = tissue_grid(slide, size_px, MPP)
        if not len(origins):
            return None
        reader = slide.reader
        has_grid = slide._tile_grid(slide.best_level(MPP)) is not None
        level, tiles = _touched(slide, origins, size_px, MPP) if has_grid else (0, [])
        floor_fn = floor_decoder(slide, level, tiles) if has_grid else None
        plan = slide._plan(size_px, MPP)
        raw = [slide._read_padded(plan.level, *plan.box(int(x), int(y))) for x, y in origins]
        level0_exact = plan.resize == "copy" and plan.level == 0
    stats = BatchStats()
    file_path = slide.path  # the member file for a DICOM folder

    # Each kind: (open a fresh reader, untimed) -> the timed work on it.
    def batched(s) -> None:
        for _ in s.read_regions(origins, size_px, MPP, stats=stats):
            pass

    def per_patch(s) -> None:
        for x, y in origins:
            s.read_region(int(x), int(y), size_px, MPP)

    def cleared(s) -> None:
        for x, y in origins:
            s.clear_cache()
            s.read_region(int(x), int(y), size_px, MPP)

    def raw_openslide(handle) -> None:
        for x, y in origins:
            np.asarray(handle.read_region((int(x), int(y)), 0, (size_px, size_px)))

    fresh = (lambda: open_slide(path), lambda s: s.close())
    kinds: dict[str, tuple] = {
        "batched": (*fresh, batched),
        "per_patch": (*fresh, per_patch),
        "cleared": (*fresh, cleared),
        "resize": (lambda: None, lambda _: None, lambda _: [plan.finish(p) for p in raw]),
    }
    if reader == "openslide" and level0_exact:
        kinds["openslide"] = (
            lambda: openslide.OpenSlide(file_path),
            lambda h: h.close(),
            raw_openslide,
        )
    if floor_fn is not None:
        kinds["floor"] = (lambda: None, lambda _: None, lambda _: floor_fn())
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for run in range(repeats + 1):  # the first pass warms the page cache and is dropped
        for kind, (setup, teardown, work) in kinds.items():
            handle = setup()
            seconds = _seconds(lambda w=work, h=handle: w(h))
            teardown(handle)
            if run:
                times[kind].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "slide": name,
        "reader": reader,
        "spec": f"{size_px}px",
        "patches": len(origins),
        "tiles": f"{stats.tiles_touched}/{stats.tiles_decoded // (repeats + 1)}" if tiles else "-",
        "rate": {k: len(origins) / v for k, v in med.items() if k != "resize"},
        "ratio": med["floor"] / med["batched"] if "floor" in med else None,
        "resize_share": 0.0 if plan.resize == "copy" else med["resize"] / med["batched"],
    }


def bounded_shuffled(path: Path, size_px: int, cache_bytes: int, repeats: int) -> str:
    """Both tile caches held to ``cache_bytes``, patches in shuffled order (selection's cluster
    order revisits the slide like this): tiles decoded and patches/s, batched vs per-patch LRU.
    """
    with open_slide(path) as slide:
        origins = tissue_grid(slide, size_px, MPP)
    origins = origins[np.random.default_rng(0).permutation(len(origins))]
    decodes = {"batched": 0, "lru": 0}
    original = TiledPage.decode_tile

    def run(kind: str) -> float:
        with open_slide(path) as s:
            page = s._tile_grid(s.best_level(MPP)).decode.__self__
            page._capacity = max(1, cache_bytes // (page._tile_w * page._tile_h * 3))

            def counting(self, index, kind=kind):
                decodes[kind] += 1
                return original(self, index)

            TiledPage.decode_tile = counting
            try:
                if kind == "batched":
                    seconds = _seconds(
                        lambda: list(s.read_regions(origins, size_px, MPP, cache_bytes=cache_bytes))
                    )
                else:
                    seconds = _seconds(
                        lambda: [s.read_region(int(x), int(y), size_px, MPP) for x, y in origins]
                    )
            finally:
                TiledPage.decode_tile = original
        return seconds

    times: dict[str, list[float]] = {"batched": [], "lru": []}
    for _ in range(repeats):
        for kind in times:
            times[kind].append(run(kind))
    n = len(origins)
    cells = [
        f"{kind}: {decodes[kind] // repeats} decodes, {n / statistics.median(t):,.0f} patches/s"
        for kind, t in times.items()
    ]
    return (
        f"{path.name} {size_px}px, {n} patches shuffled, caches {cache_bytes >> 20} MiB: "
        + "; ".join(cells)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--specs", type=int, nargs="+", default=[256, 512])
    parser.add_argument(
        "--mosaic", type=int, default=3, help="also a slide of N x N copies of the SVS (0: no)"
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)

    specs = " ".join(str(s) for s in args.specs)
    print(
        f"command: .venv/bin/python benchmarks/curate/bench_read.py --repeats {args.repeats} "
        f"--specs {specs} --mosaic {args.mosaic}"
    )
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} CPUs)")
    columns = ["batched", "per_patch", "cleared", "openslide", "floor"]
    print(
        "| slide | reader | spec | patches | tiles touched/decoded | "
        + " | ".join(columns)
        + " | batched / floor | resize share |"
    )
    print("|" + "---|" * (len(columns) + 7))
    with tempfile.TemporaryDirectory() as tmp:
        paths = [SLIDES / name for name in CASES]
        if args.mosaic:
            paths.append(write_mosaic(Path(tmp), args.mosaic))
        for path in paths:
            for size_px in args.specs:
                row = measure(path, size_px, args.repeats)
                if row is not None:
                    print_row(row, columns)
        if args.mosaic:
            print(bounded_shuffled(paths[-1], 256, 16 << 20, args.repeats))


def print_row(row: dict, columns: list[str]) -> None:
    """One markdown table row."""
    cells = [f"{row['rate'][c]:,.0f}" if c in row["rate"] else "-" for c in columns]
    ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
    print(
        f"| {row['slide']} | {row['reader']} | {row['spec']} | {row['patches']} | "
        f"{row['tiles']} | " + " | ".join(cells) + f" | {ratio} | "
        f"{100 * row['resize_share']:.0f}% |"
    )


if __name__ == "__main__":
    main()
