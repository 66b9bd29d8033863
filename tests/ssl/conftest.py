"""Shared fixtures: small real-pixel patch stores cut from the bundled Aperio slide.

Each store holds both of the demo curation's tile specs (config/config.yaml): 256 px and
512 px at 0.5 mpp, as write_shards writes them (the 512-px spec in a sub-group).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from unipipe.curate.dataset import run_build_dataset
from unipipe.curate.shards import ShardParams, write_store
from unipipe.slide import open_slide

ROOT = Path(__file__).parents[2]
SLIDE = ROOT / "resources" / "slides" / "CMU-1-Small-Region.svs"
TINY_YAML = ROOT / "config" / "pretrain" / "tiny_cpu.yaml"
UNI_YAML = ROOT / "config" / "pretrain" / "uni_vitl16.yaml"
TCGA_ZIP = ROOT / "resources" / "tiles" / "tcga_luadlusc.zip"
PATCH_PX = 256
PATCH_MPP = 0.5
HIGHRES_PX = 512
HIGHRES_SPEC = "512px_0.5mpp"


def grid(offset_px: int, step_px: int = PATCH_PX, size_px: int = PATCH_PX) -> pd.DataFrame:
    """Level-0 top-left corners of size_px patches (at 0.5 mpp) on a grid over the slide."""
    w, h = 2220, 2967
    rows = [
        {"x": x, "y": y, "size_px": size_px, "mpp": PATCH_MPP, "cluster": 0}
        for y in range(offset_px, h - size_px + 1, step_px)
        for x in range(offset_px, w - size_px + 1, step_px)
    ]
    return pd.DataFrame(rows)


def write_stores(
    root: Path, offsets: tuple[int, ...] = (0, 128), sizes: tuple[int, ...] = (256, 512)
) -> list[Path]:
    """One patch store per grid offset, with a tile spec per size (0.5 mpp, grid step =
    size), written with curate's own shard writer."""
    stores = []
    for i, offset in enumerate(offsets):
        store = root / f"cmu_{i}.zarr"
        rows = pd.concat([grid(offset, size, size) for size in sizes], ignore_index=True)
        with open_slide(SLIDE, slide_id=f"cmu_{i}") as slide:
            write_store(slide, rows, store, ShardParams(patches_per_shard=32))
        stores.append(store)
    return stores


@pytest.fixture(scope="session")
def shard_index(tmp_path_factory) -> Path:
    """build_dataset's index parquet over two stores of real patches: 88 + 88 of 256 px
    (the root spec) and 20 + 20 of 512 px (spec 512px_0.5mpp)."""
    root = tmp_path_factory.mktemp("shards")
    stores = write_stores(root)
    index = root / "index.parquet"
    run_build_dataset(
        stores, index_parquet=index, summary_png=root / "summary.png", sidecar=root / "s.json"
    )
    return index


@pytest.fixture(scope="session")
def store_without_highres(tmp_path_factory) -> Path:
    """A store curated with the 256-px spec only (8 patches): it has no 512px_0.5mpp."""
    store = tmp_path_factory.mktemp("no_highres") / "cmu_256only.zarr"
    with open_slide(SLIDE, slide_id="cmu_256only") as slide:
        write_store(slide, grid(0).head(8), store, ShardParams(patches_per_shard=8))
    return store
