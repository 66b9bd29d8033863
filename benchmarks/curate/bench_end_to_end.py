"""End-to-end curation benchmark: segment -> artefacts -> tile -> select -> shards, per slide.

Run: .venv/bin/python benchmarks/curate/bench_end_to_end.py [--sizes 20480 40960] [--slides ...]

Each slide runs the five library stages the curation rules call (``run_segment_tissue``,
``run_detect_artefacts``, ``run_tile_slide``, ``run_select_patches``, ``run_write_shards``),
file to file, with the default ``config/config.yaml`` parameters, each stage in a fresh
subprocess on one thread, as each rule is its own job. Columns:
  patches    patches written to the shard store (all tile specs).
  cpu s      CPU seconds of the five stages (user + system, time.process_time; starting
             the interpreter and importing libraries not counted).
  patches/core-s  patches / cpu s.
  floor      patches / (CPU seconds to decode every JPEG tile of level 0 once, bytes read
             beforehand, with bench_read.floor_decoder on batches of 512 tiles in its own
             fresh subprocess); "-" where that floor has no direct tile path (DICOM,
             OpenSlide-only formats).
  of floor   patches/core-s over floor.
  peak RSS   largest ru_maxrss of the five stage processes (MiB), imports included.
  thumb MPix pixels of the 4 µm/px thumbnail the masks are drawn on.
A second table gives each stage's CPU seconds and peak RSS, and the RSS above what its
process held after importing unipipe's curation modules: the measurements behind the
rules' ``mem_mb`` in workflow/rules/curate.smk.

``--sizes`` adds large slides built here, in a temporary folder (or ``--built-dir``, kept
and reused, so that older code can be run on the same files): pyramidal tiled-JPEG TIFFs
(256 px YCbCr tiles, q90, levels at 1, 4, 16, 64x) whose pixels repeat a 2048 x 2048 crop of
CMU-1-Small-Region.svs, written tile by tile (never the whole image in memory). They show
whether peak memory grows with slide size beyond the thumbnail. Older unipipe (before
tile_slide stored the selection features) runs too, with PYTHONPATH at its src/.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
SLIDES = REPO / "resources" / "slides"
CASES = {
    "CMU-1-Small-Region.svs": SLIDES / "CMU-1-Small-Region.svs",
    "CMU-1-Small-Region-dicom": SLIDES / "CMU-1-Small-Region-dicom" / "level-0-frames-0-30.dcm",
    "OS-1-detail.ome.tif": SLIDES / "OS-1-detail.ome.tif",
    "OS-2-ndpi.ome.tif": SLIDES / "OS-2-ndpi.ome.tif",
    "small_dicom.dcm": SLIDES / "small_dicom.dcm",
}
CROP = 2048  # side of the repeated crop of the SVS; powers of 2 keep every level periodic
DOWNSAMPLES = (1, 4, 16, 64)
TILE = 256
_FLOOR_BATCH = 512  # tiles decoded per timed call of the floor


STAGES = ("segment_tissue", "detect_artefacts", "tile_slide", "select_patches", "write_shards")


def run_stage(stage: str, slide_path: Path, out: Path, mpp: float | None) -> None:
    """One curation stage on one slide, file to file, as its rule calls it."""
    import inspect

    from unipipe.config import build_params
    from unipipe.curate.artefacts import ArtefactParams, run_detect_artefacts
    from unipipe.curate.selection import SelectionParams, run_select_patches
    from unipipe.curate.shards import ShardParams, run_write_shards
    from unipipe.curate.tiling import TilingParams, run_tile_slide
    from unipipe.curate.tissue import TissueParams, run_segment_tissue

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    section = config["curate"]
    sid = "bench"
    selection = build_params(SelectionParams, section["selection"], "curate.selection")
    if stage == "segment_tissue":
        tissue = build_params(TissueParams, section["tissue"], "curate.tissue")
        run_segment_tissue(slide_path, slide_id=sid, mpp=mpp, params=tissue,
                           mask_png=out / "tissue.png", geojson=out / "tissue.geojson",
                           preview_jpg=out / "tissue.jpg", sidecar=out / "tissue.json")  # fmt: skip
    elif stage == "detect_artefacts":
        artefacts = build_params(ArtefactParams, section["artefacts"], "curate.artefacts")
        run_detect_artefacts(slide_path, out / "tissue.png", slide_id=sid, mpp=mpp,
                             params=artefacts, mask_png=out / "artefacts.png",
                             qc_json=out / "qc.json", preview_jpg=out / "artefacts.jpg",
                             sidecar=out / "detect.json")  # fmt: skip
    elif stage == "tile_slide":
        tiling = build_params(TilingParams, section["tiling"], "curate.tiling")
        # Older unipipe (the "before" rows) has no feature_size_px: selection reads pixels.
        one_pass = "feature_size_px" in inspect.signature(run_tile_slide).parameters
        extra = {"feature_size_px": selection.feature_size_px} if one_pass else {}
        run_tile_slide(slide_path, out / "tissue.png", out / "artefacts.png", slide_id=sid,
                       mpp=mpp, params=tiling, tiles_parquet=out / "tiles.parquet",
                       sidecar=out / "tiles.json", **extra)  # fmt: skip
    elif stage == "select_patches":
        run_select_patches(slide_path, out / "tiles.parquet", slide_id=sid, mpp=mpp,
                           params=selection, seed=int(config["seed"]),
                           selected_parquet=out / "selected.parquet",
                           mosaic_jpg=out / "mosaic.jpg", sidecar=out / "select.json")  # fmt: skip
    elif stage == "write_shards":
        shards = build_params(ShardParams, section["shards"], "curate.shards")
        run_write_shards(slide_path, out / "selected.parquet", slide_id=sid, mpp=mpp,
                         params=shards, shard_zarr=out / "bench.zarr",
                         sidecar=out / "shards.json")  # fmt: skip
    else:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")


def child_stage(stage: str, slide_path: Path, out: Path, mpp: float | None) -> dict:
    """Run one stage in this (fresh) process on one thread; CPU time and peak RSS."""
    from unipipe.runtime import limit_threads

    limit_threads(1)
    # Import everything the stage needs first, so that base RSS is the imports' share.
    for module in ("artefacts", "selection", "shards", "tiling", "tissue"):
        importlib.import_module(f"unipipe.curate.{module}")

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.process_time()
    run_stage(stage, slide_path, out, mpp)
    cpu_s = time.process_time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cpu_s": cpu_s, "peak_rss_mib": peak, "base_rss_mib": base}


def run_chain_stages(slide_path: Path, mpp: float | None) -> dict:
    """The five stages in turn, each in a fresh process (as each rule's job is)."""
    from PIL import Image

    from unipipe.curate.shards import store_specs

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        stages = {
            stage: _in_fresh_process("stage", slide_path, mpp, stage=stage, out=out)
            for stage in STAGES
        }
        with Image.open(out / "tissue.png") as mask:
            thumb_mpix = mask.width * mask.height / 1e6
        patches = sum(s["n_patches"] for s in store_specs(out / "bench.zarr"))
    return {
        "patches": patches,
        "thumb_mpix": thumb_mpix,
        "cpu_s": sum(s["cpu_s"] for s in stages.values()),
        "peak_rss_mib": max(s["peak_rss_mib"] for s in stages.values()),
        "stages": stages,
    }


def child_floor(slide_path: Path, mpp: float | None) -> dict:
    """CPU seconds to decode every level-0 JPEG tile once (None where there is no floor)."""
    import tifffile

    from unipipe.runtime import limit_threads
    from unipipe.slide import open_slide

    limit_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from bench_read import floor_decoder
    except ImportError as err:  # the read benchmark moved on; say so instead of guessing
        return {"floor_s": None, "why": f"bench_read.floor_decoder not importable: {err}"}

    with open_slide(slide_path, mpp=mpp) as slide:
        if slide.reader == "pydicom":
            n_tiles = int(slide._frame_index.size)
        else:
            try:
                with tifffile.TiffFile(slide.path) as tif:
                    width, height = slide.level_dimensions[0]
                    pages = [
                        p for p in tif.pages if (p.imagewidth, p.imagelength) == (width, height)
                    ]
                    n_tiles = len(pages[0].dataoffsets) if pages and pages[0].is_tiled else 0
            except tifffile.TiffFileError:
                n_tiles = 0
        # Batches of tiles: floor_decoder keeps every tile's bytes and decoded pixels, which
        # for a 40k slide would be gigabytes (and swap time into the floor).
        floor_s = 0.0
        for first in range(0, n_tiles, _FLOOR_BATCH):
            batch = list(range(first, min(first + _FLOOR_BATCH, n_tiles)))
            decode = floor_decoder(slide, 0, batch)
            if decode is None:
                return {"floor_s": None, "why": f"no direct JPEG tile path ({slide.reader})"}
            start = time.process_time()
            decode()
            floor_s += time.process_time() - start
        if not n_tiles:
            return {"floor_s": None, "why": f"no direct JPEG tile path ({slide.reader})"}
        return {"floor_s": floor_s, "tiles": n_tiles}


def _periodic_tiles(source: np.ndarray, side_px: int) -> Iterator[np.ndarray]:
    """Row-major 256 px tiles of ``source`` repeated over a side_px square (edges wrap)."""
    period = source.shape[0]
    for ty in range(math.ceil(side_px / TILE)):
        rows = np.arange(ty * TILE, (ty + 1) * TILE) % period
        band = source[rows]
        for tx in range(math.ceil(side_px / TILE)):
            yield band[:, np.arange(tx * TILE, (tx + 1) * TILE) % period]


def write_large_slide(path: Path, side_px: int) -> float:
    """A side_px square pyramidal tiled-JPEG TIFF of repeated real SVS pixels; its mpp."""
    import cv2
    import tifffile

    from unipipe.slide import open_slide

    with open_slide(CASES["CMU-1-Small-Region.svs"]) as svs:
        crop = svs.read_region(0, 400, CROP, svs.mpp)  # 2048 px from y=400: mostly tissue
        mpp = svs.mpp
    per_cm = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for d in DOWNSAMPLES:
            source = crop if d == 1 else cv2.resize(crop, (CROP // d, CROP // d), cv2.INTER_AREA)
            side = side_px // d
            tif.write(
                _periodic_tiles(source, side),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                compressionargs={"level": 90},
                photometric="ycbcr",
                subsampling=(2, 2),
                resolution=(per_cm / d, per_cm / d),
                resolutionunit="CENTIMETER",
                subfiletype=0 if d == 1 else 1,
            )
    return mpp


def _built_mpp() -> float:
    """µm/px of the built slides: that of the SVS whose crop they repeat."""
    from unipipe.slide import open_slide

    with open_slide(CASES["CMU-1-Small-Region.svs"]) as svs:
        return svs.mpp


def _in_fresh_process(
    kind: str, slide_path: Path, mpp: float | None, *, stage: str = "", out: Path | None = None
) -> dict:
    cmd = [sys.executable, __file__, f"--child-{kind}", str(slide_path)]
    if mpp is not None:
        cmd += ["--mpp", str(mpp)]
    if stage:
        cmd += ["--stage", stage, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} on {slide_path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(name: str, size: str, chain: dict, floor: dict) -> str:
    rate = chain["patches"] / chain["cpu_s"]
    if floor.get("floor_s") and chain["patches"]:
        floor_rate = chain["patches"] / floor["floor_s"]
        floor_txt, share = f"{floor_rate:,.0f}", f"{rate / floor_rate:.1%}"
    else:
        floor_txt = share = "-"
    return (
        f"| {name} | {size} | {chain['thumb_mpix']:.2f} | {chain['patches']} | "
        f"{chain['cpu_s']:.1f} | {rate:.1f} | {floor_txt} | {share} | "
        f"{chain['peak_rss_mib']:.0f} |"
    )


def _stage_row(name: str, size: str, chain: dict) -> str:
    cells = [
        f"{s['cpu_s']:.1f} / {s['peak_rss_mib']:.0f} (+{s['peak_rss_mib'] - s['base_rss_mib']:.0f})"
        for s in chain["stages"].values()
    ]
    return f"| {name} | {size} | {chain['thumb_mpix']:.2f} | " + " | ".join(cells) + " |"


def _slide_rows(name: str, size: str, path: Path, mpp: float | None, rows: list[str]) -> None:
    chain = run_chain_stages(path, mpp)
    print(_row(name, size, chain, _in_fresh_process("floor", path, mpp)), flush=True)
    rows.append(_stage_row(name, size, chain))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", nargs="*", default=list(CASES), help="names in resources")
    parser.add_argument("--sizes", nargs="*", type=int, default=[20480, 40960],
                        help="sides (px) of the large built slides; none to skip")  # fmt: skip
    parser.add_argument("--built-dir", type=Path, default=None,
                        help="keep the built slides here and reuse them on the next run")  # fmt: skip
    parser.add_argument("--child-stage", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mpp", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_stage:
        print(json.dumps(child_stage(args.stage, args.child_stage, args.out, args.mpp)))
        return
    if args.child_floor:
        print(json.dumps(child_floor(args.child_floor, args.mpp)))
        return

    print(f"load: {os.getloadavg()}")
    print("| slide | size px | thumb MPix | patches | cpu s | patches/core-s | floor | "
          "of floor | peak RSS MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    stage_rows: list[str] = []
    for name in args.slides:
        path = CASES[name]
        from unipipe.slide import open_slide

        with open_slide(path) as slide:
            size = "x".join(map(str, slide.dimensions))
        _slide_rows(name, size, path, None, stage_rows)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.built_dir or Path(tmp)
        for side in args.sizes:
            path = folder / f"repeat-{side}.tif"
            if path.exists():  # --built-dir: built by an earlier run (e.g. of older code)
                mpp = _built_mpp()
            else:
                start = time.perf_counter()
                mpp = write_large_slide(path, side)
                print(f"(built {path.name}: {path.stat().st_size / 2**20:.0f} MiB in "
                      f"{time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
            _slide_rows("CMU-1 crop repeated", f"{side}x{side}", path, mpp, stage_rows)
            if not args.built_dir:
                path.unlink()
    print("\nPer stage: CPU s / peak RSS MiB (+ above the imports)")
    print("| slide | size px | thumb MPix | " + " | ".join(STAGES) + " |")
    print("|---|---|---|" + "---|" * len(STAGES))
    print("\n".join(stage_rows))
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
