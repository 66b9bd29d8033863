"""Tests of k-means patch selection, its budget allocation and outputs on real slides."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.cluster import KMeans

from unipipe.curate import selection
from unipipe.curate.features import FEATURE_NAMES
from unipipe.curate.selection import (
    SelectionParams,
    balanced_quota,
    cluster_features,
    run_select_patches,
    select_rows,
)
from unipipe.curate.tiling import (
    FEATURE_SIZE_COLUMN,
    TilingParams,
    grid_origins,
    mask_fractions,
    run_tile_slide,
)
from unipipe.errors import ConfigError, UnipipeError
from unipipe.provenance import write_parquet
from unipipe.slide import open_slide


def _tiles(slide_path: Path, size_px: int = 128, mpp: float = 0.5) -> pd.DataFrame:
    """A tiles.parquet-like grid kept where a saturation mask of real pixels covers half a tile."""
    with open_slide(slide_path, slide_id="s1") as slide:
        thumb = slide.read_thumbnail(4.0)
        width, height = slide.dimensions
        footprint = size_px * mpp / slide.mpp
    tissue = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[..., 1] > 20
    gx, gy = grid_origins(width, footprint, footprint), grid_origins(height, footprint, footprint)
    ys, xs = (a.ravel() for a in np.meshgrid(gy, gx, indexing="ij"))
    scale = (tissue.shape[1] / width, tissue.shape[0] / height)
    fraction = mask_fractions(tissue, scale, xs, ys, footprint)
    return pd.DataFrame(
        {
            "slide_id": "s1",
            "x": xs,
            "y": ys,
            "size_px": size_px,
            "mpp": mpp,
            "tissue_fraction": fraction,
            "keep": fraction >= 0.5,
        }
    )


@pytest.fixture(scope="module")
def svs_tiles(svs_path: Path) -> pd.DataFrame:
    """The 128 px @ 0.5 mpp grid of CMU-1-Small-Region (about 140 kept tiles)."""
    return _tiles(svs_path)


@pytest.mark.parametrize(
    ("sizes", "budget", "expected"),
    [
        ([10, 2, 1], 9, [6, 2, 1]),
        ([10, 10, 10], 9, [3, 3, 3]),
        ([10, 10, 10], 2, [1, 1, 0]),
        ([4, 1, 9], 2, [1, 0, 1]),
        ([5, 5], 20, [5, 5]),
        ([7, 0, 3], 6, [3, 0, 3]),
    ],
)
def test_balanced_quota_equal_shares_with_leftovers(sizes, budget, expected) -> None:
    """Each cluster gets an equal share; what small clusters cannot take goes to the others."""
    assert balanced_quota(np.array(sizes), budget).tolist() == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [("budget", 0), ("n_clusters", 1.5), ("strategy", "farthest"), ("feature_size_px", 4)],
)
def test_selectionparams_rejects_bad_values(field: str, value) -> None:
    """Bad budgets, k, strategies and sizes raise ConfigError naming the key."""
    with pytest.raises(ConfigError, match=f"curate.selection.{field}"):
        SelectionParams(**{field: value})


def test_cluster_features_numbers_clusters_by_size() -> None:
    """Cluster 0 is the largest; a single row makes a single cluster."""
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.1, (30, 3)), rng.normal(5, 0.1, (10, 3))])
    labels = cluster_features(features, 2, seed=0, n_init=4)
    assert np.bincount(labels).tolist() == [30, 10]
    assert cluster_features(features[:1], 8, seed=0, n_init=4).tolist() == [0]


def test_select_rows_budget_and_seed(svs_path: Path, svs_tiles: pd.DataFrame) -> None:
    """Exactly ``budget`` kept rows are picked; the same seed repeats, another seed differs."""
    params = SelectionParams(budget=24, feature_size_px=64)
    with open_slide(svs_path, slide_id="s1") as slide:
        first = select_rows(slide, svs_tiles, params, seed=3)
        again = select_rows(slide, svs_tiles, params, seed=3)
        other = select_rows(slide, svs_tiles, params, seed=4)
    assert len(first) == 24
    assert first[["x", "y"]].merge(svs_tiles[svs_tiles["keep"]], on=["x", "y"]).shape[0] == 24
    pd.testing.assert_frame_equal(first, again)
    assert not first[["x", "y"]].equals(other[["x", "y"]])
    assert set(FEATURE_NAMES) <= set(first.columns)
    assert first["cluster"].nunique() == 8


def test_select_rows_keeps_more_distinct_tissue_than_uniform(
    svs_path: Path, svs_tiles: pd.DataFrame
) -> None:
    """Over 10 seeds, cluster-balanced picks cover more clusters and feature space than uniform.

    Measures on the ~140 kept tiles at a budget of 24: k-means clusters hit (k=8), cells hit
    of an independent k=16 partition, and the mean and worst distance from any kept tile to
    its nearest pick in standardised feature space (lower = better coverage).
    """
    kept = svs_tiles[svs_tiles["keep"]].reset_index(drop=True)
    with open_slide(svs_path, slide_id="s1") as slide:
        features = selection._spec_features(slide, kept, 64)
    z = (features - features.mean(axis=0)) / features.std(axis=0)
    reference = KMeans(16, n_init=10, random_state=1234).fit_predict(z)
    scores = {name: [] for name in selection.STRATEGIES}
    for seed in range(10):
        labels = cluster_features(features, 8, seed=seed, n_init=10)
        for name, strategy in selection.STRATEGIES.items():
            pick = strategy(labels, 24, np.random.default_rng(seed))
            nearest = np.linalg.norm(z[:, None, :] - z[None, pick, :], axis=2).min(axis=1)
            scores[name].append(
                [len(set(labels[pick])), len(set(reference[pick])), nearest.mean(), nearest.max()]
            )
    balanced, uniform = np.mean(scores["cluster_balanced"], 0), np.mean(scores["uniform"], 0)
    print(f"cluster_balanced {balanced.round(3)} uniform {uniform.round(3)}")  # reported figures
    assert balanced[0] == 8
    assert balanced[0] > uniform[0]
    assert balanced[1] > uniform[1]
    assert balanced[2] < uniform[2]
    assert balanced[3] < uniform[3]


def test_select_rows_without_kept_tiles(svs_path: Path, svs_tiles: pd.DataFrame) -> None:
    """No kept tiles gives an empty table that still has the cluster and feature columns."""
    with open_slide(svs_path, slide_id="s1") as slide:
        empty = select_rows(slide, svs_tiles.assign(keep=False), SelectionParams(), seed=0)
    assert len(empty) == 0
    assert {"cluster", *FEATURE_NAMES, "x", "y"} <= set(empty.columns)


@pytest.mark.parametrize("slide_fixture", ["svs_path", "ome_tiff_path"])
def test_run_select_patches_rerun_byte_identical(
    slide_fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """selected.parquet, the mosaic and the sidecar are byte-identical on rerun; mosaic rows = clusters."""
    slide_path = request.getfixturevalue(slide_fixture)
    write_parquet(_tiles(slide_path), tmp_path / "tiles.parquet")
    params = SelectionParams(budget=20, n_clusters=4, feature_size_px=64, mosaic_tile_px=48)
    outputs = ("selected.parquet", "mosaic.jpg", "selected.json")
    digests = []
    for _ in range(2):
        run_select_patches(
            slide_path,
            tmp_path / "tiles.parquet",
            slide_id="s1",
            mpp=None,
            params=params,
            seed=7,
            selected_parquet=tmp_path / outputs[0],
            mosaic_jpg=tmp_path / outputs[1],
            sidecar=tmp_path / outputs[2],
        )
        digests.append([(tmp_path / name).read_bytes() for name in outputs])
    assert digests[0] == digests[1]

    selected = pd.read_parquet(tmp_path / "selected.parquet")
    assert len(selected) == min(20, int(_tiles(slide_path)["keep"].sum()))
    n_rows = selected["cluster"].nunique()
    with Image.open(tmp_path / "mosaic.jpg") as mosaic:
        assert mosaic.height == n_rows * (48 + 4) + 4
    sidecar = json.loads(digests[0][2])
    assert sidecar["extra"]["n_selected"] == len(selected)
    assert sidecar["extra"]["seed"] == 7


@pytest.fixture(scope="module")
def staged_tiles(tmp_path_factory: pytest.TempPathFactory, segment_and_detect):
    """tiles.parquet of a slide from the real segment -> artefacts -> tile stages, with features."""
    made: dict[Path, Path] = {}

    def make(slide_path: Path) -> Path:
        if slide_path not in made:
            out = tmp_path_factory.mktemp("staged")
            segment_and_detect(slide_path, out)
            run_tile_slide(slide_path, out / "tissue.png", out / "artefacts.png", slide_id="s1",
                           mpp=None, params=TilingParams(specs=[(256, 0.5), (512, 0.5)]),
                           tiles_parquet=out / "tiles.parquet", sidecar=out / "tiles.json",
                           feature_size_px=64)  # fmt: skip
            made[slide_path] = out / "tiles.parquet"
        return made[slide_path]

    return make


class _NoPixels:
    """A slide stand-in that fails on any pixel read."""

    slide_id = "s1"

    def read_region(self, *args, **kwargs):
        raise AssertionError("selection read pixels")

    read_regions = read_region


@pytest.mark.parametrize("slide_fixture", ["svs_path", "ome_tiff_path"])
def test_run_select_patches_stored_features_give_same_bytes(
    slide_fixture: str, request: pytest.FixtureRequest, staged_tiles, tmp_path: Path
) -> None:
    """selected.parquet and the mosaic from tile_slide's features equal those of reading pixels."""
    slide_path = request.getfixturevalue(slide_fixture)
    stored = pd.read_parquet(staged_tiles(slide_path))
    assert stored["keep"].sum() > 0
    read = stored.drop(columns=[FEATURE_SIZE_COLUMN, *FEATURE_NAMES])
    params = SelectionParams(budget=12, n_clusters=3, feature_size_px=64, mosaic_tile_px=32)
    outputs = {}
    for name, tiles in {"stored": stored, "read": read}.items():
        out = tmp_path / name
        out.mkdir()
        write_parquet(tiles, out / "tiles.parquet")
        run_select_patches(slide_path, out / "tiles.parquet", slide_id="s1", mpp=None,
                           params=params, seed=5, selected_parquet=out / "selected.parquet",
                           mosaic_jpg=out / "mosaic.jpg", sidecar=out / "selected.json")  # fmt: skip
        outputs[name] = [(out / f).read_bytes() for f in ("selected.parquet", "mosaic.jpg")]
    assert outputs["stored"] == outputs["read"]
    selected = pd.read_parquet(tmp_path / "stored" / "selected.parquet")
    assert FEATURE_SIZE_COLUMN not in selected.columns
    assert list(selected.columns[-len(FEATURE_NAMES) - 1 :]) == ["cluster", *FEATURE_NAMES]


def test_select_rows_with_stored_features_reads_no_pixels(svs_path: Path, staged_tiles) -> None:
    """Given tile_slide's features, selection never touches the slide."""
    tiles = pd.read_parquet(staged_tiles(svs_path))
    params = SelectionParams(budget=10, n_clusters=3, feature_size_px=64)
    picked = select_rows(_NoPixels(), tiles, params, seed=0)
    assert len(picked) == min(10, int((tiles["keep"] & tiles["size_px"].eq(256)).sum())) + min(
        10, int((tiles["keep"] & tiles["size_px"].eq(512)).sum())
    )


def test_select_rows_refuses_features_of_another_size(svs_path: Path, staged_tiles) -> None:
    """Features stored at 64 px while selection asks for 128 px fail naming the config key."""
    tiles = pd.read_parquet(staged_tiles(svs_path))
    with pytest.raises(ConfigError, match=r"curate.selection.feature_size_px is 128"):
        select_rows(_NoPixels(), tiles, SelectionParams(feature_size_px=128), seed=0)


def test_select_rows_refuses_kept_tiles_without_features(svs_path: Path, staged_tiles) -> None:
    """A kept tile whose stored features are NaN (an edited table) fails, saying to rerun tiling."""
    tiles = pd.read_parquet(staged_tiles(svs_path))
    tiles.loc[tiles.index[tiles["keep"]][0], FEATURE_NAMES[0]] = np.nan
    with pytest.raises(UnipipeError, match="rerun tile_slide"):
        select_rows(_NoPixels(), tiles, SelectionParams(feature_size_px=64), seed=0)
