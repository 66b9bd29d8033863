"""Shared fixtures: small real-pixel patch stores cut from the bundled Aperio slide."""

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


def grid(offset_px: int, step_px: int = PATCH_PX) -> pd.DataFrame:
    """Level-0 top-left corners of 256-px patches on a grid over the slide."""
    w, h = 2220, 2967
    rows = [
        {"x": x, "y": y, "size_px": PATCH_PX, "mpp": PATCH_MPP, "cluster": 0}
        for y in range(offset_px, h - PATCH_PX + 1, step_px)
        for x in range(offset_px, w - PATCH_PX + 1, step_px)
    ]
    return pd.DataFrame(rows)


def write_stores(root: Path, offsets: tuple[int, ...] = (0, 128)) -> list[Path]:
    """One patch store per grid offset, written with curate's own shard writer."""
    stores = []
    for i, offset in enumerate(offsets):
        store = root / f"cmu_{i}.zarr"
        with open_slide(SLIDE, slide_id=f"cmu_{i}") as slide:
            write_store(slide, grid(offset), store, ShardParams(patches_per_shard=32))
        stores.append(store)
    return stores


@pytest.fixture(scope="session")
def shard_index(tmp_path_factory) -> Path:
    """build_dataset's index parquet over two stores of real patches (88 + 88)."""
    root = tmp_path_factory.mktemp("shards")
    stores = write_stores(root)
    index = root / "index.parquet"
    run_build_dataset(
        stores, index_parquet=index, summary_png=root / "summary.png", sidecar=root / "s.json"
    )
    return index
