"""Tests of the dataset index over real patch stores and its summary plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unipipe.curate.dataset import INDEX_COLUMNS, INDEX_DTYPES, run_build_dataset
from unipipe.curate.shards import PatchDataset, ShardParams, run_write_shards
from unipipe.provenance import write_parquet
from unipipe.slide import open_slide


def _store(
    slide_path: Path, out: Path, slide_id: str, counts: dict[int, int], tissue_type: str = ""
) -> Path:
    """A patch store of ``counts[size_px]`` tiles per spec at 0.5 mpp along the slide diagonal."""
    with open_slide(slide_path, slide_id=slide_id) as slide:
        (width, height), slide_mpp = slide.dimensions, slide.mpp
    rows = []
    for size_px, n in counts.items():
        footprint = size_px * 0.5 / slide_mpp
        for i in range(n):
            t = i / max(n - 1, 1)
            x, y = int(t * (width - footprint)), int(t * (height - footprint))
            rows.append({"slide_id": slide_id, "x": x, "y": y, "size_px": size_px, "mpp": 0.5,
                         "cluster": i % 2, "tissue_fraction": 1.0})  # fmt: skip
    write_parquet(pd.DataFrame(rows), out / f"{slide_id}.parquet")
    run_write_shards(
        slide_path,
        out / f"{slide_id}.parquet",
        slide_id=slide_id,
        mpp=None,
        params=ShardParams(patches_per_shard=4),
        shard_zarr=out / f"{slide_id}.zarr",
        sidecar=out / f"{slide_id}.json",
        tissue_type=tissue_type,
    )
    return out / f"{slide_id}.zarr"


@pytest.fixture(scope="module")
def stores(svs_path: Path, ome_tiff_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two real stores: the SVS with 256 and 512 px specs, the OME-TIFF with 256 px only."""
    out = tmp_path_factory.mktemp("stores")
    return [
        _store(svs_path, out, "svs", {256: 9, 512: 3}, tissue_type="skin"),
        _store(ome_tiff_path, out, "ome", {256: 5}),
    ]


def _build(stores: list[Path], out: Path) -> tuple[bytes, bytes, bytes]:
    run_build_dataset(
        stores,
        index_parquet=out / "index.parquet",
        summary_png=out / "summary.png",
        sidecar=out / "dataset.json",
    )
    return tuple((out / n).read_bytes() for n in ("index.parquet", "summary.png", "dataset.json"))


def test_run_build_dataset_counts_per_slide_and_spec(stores: list[Path], tmp_path: Path) -> None:
    """One row per (store, spec) with the patch and shard counts stored and the tissue type."""
    _build(stores, tmp_path)
    index = pd.read_parquet(tmp_path / "index.parquet")
    assert list(index.columns) == list(INDEX_COLUMNS)
    got = {(r.slide_id, r.spec): (r.n_patches, r.n_shards) for r in index.itertuples()}
    assert got == {
        ("ome", "256px_0.5mpp"): (5, 2),
        ("svs", "256px_0.5mpp"): (9, 3),
        ("svs", "512px_0.5mpp"): (3, 1),
    }
    assert (index["shard_bytes"] > 0).all()
    assert index.set_index("slide_id")["tissue_type"].to_dict() == {"ome": "", "svs": "skin"}
    with Image.open(tmp_path / "summary.png") as png:
        assert png.format == "PNG"
        assert np.asarray(png.convert("L")).std() > 0  # something was drawn


def test_run_build_dataset_feeds_patchdataset(stores: list[Path], tmp_path: Path) -> None:
    """PatchDataset over the index reads every patch of the chosen spec, slide by slide."""
    _build(stores, tmp_path)
    default = PatchDataset(tmp_path / "index.parquet")
    big = PatchDataset(tmp_path / "index.parquet", spec="512px_0.5mpp")
    assert len(default) == 14
    assert default.metadata["slide_id"].tolist() == ["ome"] * 5 + ["svs"] * 9
    assert len(big) == 3
    assert big[2].shape == (512, 512, 3)
    np.testing.assert_array_equal(default[5], PatchDataset([stores[0]])[0])


def test_run_build_dataset_empty_keeps_schema(tmp_path: Path) -> None:
    """No stores still gives an index with every column and its dtype, and a plot."""
    _build([], tmp_path)
    index = pd.read_parquet(tmp_path / "index.parquet")
    assert len(index) == 0
    assert index.dtypes.astype(str).to_dict() == INDEX_DTYPES


def test_run_build_dataset_rerun_byte_identical(stores: list[Path], tmp_path: Path) -> None:
    """Index parquet, summary PNG and sidecar are byte-identical on rerun."""
    assert _build(stores, tmp_path) == _build(stores, tmp_path)
