"""Tests of the tile grid, mask fractions and keep rules on real slides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unipipe.config import build_params
from unipipe.curate import tiling
from unipipe.curate.artefacts import (
    ARTEFACT_CLASSES,
    blur_score,
)
from unipipe.curate.features import FEATURE_NAMES, patch_features
from unipipe.curate.tiling import (
    FEATURE_SIZE_COLUMN,
    TileSpec,
    TilingParams,
    grid_origins,
    mask_fractions,
    summed_area,
    table_fractions,
)
from unipipe.errors import ConfigError, SlideError
from unipipe.slide import open_slide


@pytest.fixture(scope="module")
def masks(tmp_path_factory: pytest.TempPathFactory, segment_and_detect):
    """Tissue and artefact class masks of a slide from CURATE-A's stages, made once per slide."""
    made: dict[Path, tuple[Path, Path]] = {}

    def make(slide_path: Path) -> tuple[Path, Path]:
        if slide_path not in made:
            out = tmp_path_factory.mktemp("masks")
            segment_and_detect(slide_path, out)
            made[slide_path] = (out / "tissue.png", out / "artefacts.png")
        return made[slide_path]

    return make


def _run(
    slide_path: Path,
    out: Path,
    params: TilingParams,
    masks: tuple[Path, Path],
    feature_size_px: int | None = None,
) -> pd.DataFrame:
    tissue_png, classes_png = masks
    tiling.run_tile_slide(
        slide_path,
        tissue_png,
        classes_png,
        slide_id="s1",
        mpp=None,
        params=params,
        tiles_parquet=out / "tiles.parquet",
        sidecar=out / "tiles.json",
        feature_size_px=feature_size_px,
    )
    return pd.read_parquet(out / "tiles.parquet")


@pytest.mark.parametrize(
    ("size_px", "mpp"), [(4, 0.5), (256.0, 0.5), (256, 0), (256, -1.0), (True, 0.5)]
)
def test_tilespec_rejects_bad_values(size_px, mpp) -> None:
    """Sizes below 8 px, non-int sizes and non-positive mpp raise ConfigError."""
    with pytest.raises(ConfigError, match="curate.tiling.specs"):
        TileSpec(size_px, mpp)


def test_tilingparams_reads_config_specs() -> None:
    """Specs given as YAML mappings become TileSpecs via build_params."""
    section = {"specs": [{"size_px": 256, "mpp": 0.5}, {"size_px": 512, "mpp": 0.5}]}
    params = build_params(TilingParams, section, "curate.tiling")
    assert params.specs == (TileSpec(256, 0.5), TileSpec(512, 0.5))
    assert [s.name for s in params.specs] == ["256px_0.5mpp", "512px_0.5mpp"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_tissue_fraction", 1.5),
        ("max_artefact_fraction", -0.1),
        ("overlap_fraction", 1.0),
        ("min_blur_score", -1.0),
        ("specs", []),
        ("specs", [(256, 0.5), (256, 0.5)]),
        ("max_class_fraction", {"pen": 2.0}),
    ],
)
def test_tilingparams_rejects_bad_values(field: str, value) -> None:
    """Out-of-range knobs raise ConfigError naming the config key."""
    with pytest.raises(ConfigError, match="curate.tiling"):
        TilingParams(**{field: value})


@pytest.mark.parametrize(
    ("length", "footprint", "stride", "expected"),
    [
        (1000, 256, 256, [0, 256, 512, 744]),
        (1000, 256, 128, [0, 128, 256, 384, 512, 640, 744]),
        (1024, 256, 256, [0, 256, 512, 768]),
        (1000, 256.5, 256.5, [0, 256, 513, 743]),
        (256, 256, 256, [0]),
        (100, 256, 256, []),
    ],
)
def test_grid_origins_tiles_fit_inside(length, footprint, stride, expected) -> None:
    """Starts step by the stride, a last tile ends at the edge, and every tile fits inside."""
    origins = grid_origins(length, footprint, stride)
    assert origins.tolist() == expected
    assert (origins + footprint <= length).all()


def test_mask_fractions_match_direct_count() -> None:
    """Summed-area fractions equal the mean of the mask pixels each tile covers."""
    rng = np.random.default_rng(0)
    mask = rng.random((50, 40)) > 0.3
    xs, ys = np.array([0, 40, 80]), np.array([0, 80, 120])  # level 0, scale 0.25
    got = mask_fractions(mask, (0.25, 0.25), xs, ys, 80.0)
    want = [
        mask[y // 4 : y // 4 + 20, x // 4 : x // 4 + 20].mean() for x, y in zip(xs, ys, strict=True)
    ]
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("dtype", [bool, np.uint8])
def test_summed_area_counts_true_pixels(dtype) -> None:
    """Entry [i, j] of the table counts true pixels of mask[:i, :j] (uint8 0/255 counts as bool)."""
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) > 0.6
    table = summed_area(mask.astype(dtype) * (255 if dtype is np.uint8 else True))
    assert table.shape == (38, 54)
    for i, j in [(0, 0), (1, 1), (10, 40), (37, 53), (37, 0), (5, 53)]:
        assert table[i, j] == mask[:i, :j].sum()
    xs, ys = np.array([0, 30, 100]), np.array([4, 60, 120])
    np.testing.assert_array_equal(
        table_fractions(table, (0.25, 0.25), xs, ys, 64.0),
        mask_fractions(mask, (0.25, 0.25), xs, ys, 64.0),
    )


def test_run_tile_slide_coordinates_follow_mpp(svs_path: Path, tmp_path: Path, masks) -> None:
    """At 1.0 mpp on a 0.499 mpp slide the grid steps by 1.0/0.499 x 256 level-0 px."""
    tiles = _run(svs_path, tmp_path, TilingParams(specs=[TileSpec(256, 1.0)]), masks(svs_path))
    footprint = 256 * 1.0 / 0.499  # 513.03 level-0 px
    steps = {int(np.floor(i * footprint)) for i in range(5)}  # 0, 513, 1026, 1539, 2052
    assert len(tiles) > 5
    assert set(tiles["x"]) <= steps | {int(2220 - footprint)}  # + the tile ending at the edge
    assert set(tiles["y"]) <= steps | {int(2967 - footprint)}
    assert tiles["mpp"].eq(1.0).all()
    assert tiles["size_px"].eq(256).all()


def test_run_tile_slide_level_from_pyramid(dicom_path: Path, tmp_path: Path, masks) -> None:
    """On the 12-level DICOM pyramid a 1.0 mpp tile is read from level 1, 0.5 from level 0."""
    params = TilingParams(specs=[(256, 0.5), (256, 1.0)])
    tiles = _run(dicom_path, tmp_path, params, masks(dicom_path))
    levels = tiles.groupby("mpp")["level"].unique()
    assert levels[0.5].tolist() == [0]
    assert levels[1.0].tolist() == [1]


def test_run_tile_slide_columns(svs_path: Path, tmp_path: Path, masks) -> None:
    """tiles.parquet has the contract's columns and one fraction per artefact class."""
    tiles = _run(svs_path, tmp_path, TilingParams(), masks(svs_path))
    artefacts = [f"{name}_fraction" for name, code in ARTEFACT_CLASSES.items() if code >= 2]
    assert list(tiles.columns) == [
        "slide_id", "x", "y", "size_px", "mpp", "level", "tissue_fraction",
        *artefacts, "blur_score", "keep",
    ]  # fmt: skip
    assert tiles["slide_id"].eq("s1").all()
    assert tiles["x"].dtype == np.int64
    assert tiles["keep"].dtype == bool


@pytest.mark.parametrize(
    ("slide_fixture", "sizes"),
    [("svs_path", {256, 512}), ("dicom_path", {256, 512}), ("ome_tiff_path", {256})],
)
def test_run_tile_slide_features_equal_separate_reads(
    slide_fixture: str, sizes: set[int], request: pytest.FixtureRequest, tmp_path: Path, masks
) -> None:
    """Stored features equal patch_features of the tile read alone at the feature size."""
    slide_path = request.getfixturevalue(slide_fixture)
    params = TilingParams(specs=[(256, 0.5), (512, 0.5)], max_artefact_fraction=1.0)
    tiles = _run(slide_path, tmp_path, params, masks(slide_path), feature_size_px=64)
    assert list(tiles.columns[-len(FEATURE_NAMES) - 1 :]) == [FEATURE_SIZE_COLUMN, *FEATURE_NAMES]
    assert tiles[FEATURE_SIZE_COLUMN].eq(64).all()
    kept = tiles["keep"]
    assert tiles.loc[kept, list(FEATURE_NAMES)].notna().all().all()
    assert tiles.loc[~kept, list(FEATURE_NAMES)].isna().all().all()
    rows = pd.concat([g.head(3) for _, g in tiles[kept].groupby("size_px")])
    assert set(rows["size_px"]) == sizes  # OS-1 (250 µm wide) has no 512 px tile
    with open_slide(slide_path) as slide:
        for row in rows.itertuples():
            patch = slide.read_region(row.x, row.y, 64, row.mpp * row.size_px / 64)
            stored = np.array([getattr(row, name) for name in FEATURE_NAMES])
            np.testing.assert_array_equal(stored, patch_features(patch))


def test_run_tile_slide_features_only_for_sharp_tiles(
    svs_path: Path, tmp_path: Path, masks
) -> None:
    """Tiles the blur rule drops get no features (they are never clustered)."""
    params = TilingParams(specs=[TileSpec(256, 0.5)], min_blur_score=1900.0)  # about half
    tiles = _run(svs_path, tmp_path, params, masks(svs_path), feature_size_px=64)
    blurred = tiles["blur_score"].notna() & ~tiles["keep"]
    assert blurred.any()
    assert tiles["keep"].any()
    assert tiles.loc[blurred, list(FEATURE_NAMES)].isna().all().all()
    assert tiles.loc[tiles["keep"], list(FEATURE_NAMES)].notna().all().all()


def test_run_tile_slide_without_feature_size_stores_no_features(
    svs_path: Path, tmp_path: Path, masks
) -> None:
    """Without feature_size_px (the embedding tiler's call) no feature column is written."""
    tiles = _run(svs_path, tmp_path, TilingParams(), masks(svs_path))
    assert not {FEATURE_SIZE_COLUMN, *FEATURE_NAMES} & set(tiles.columns)


@pytest.mark.parametrize("value", [4, 64.0, True])
def test_run_tile_slide_rejects_bad_feature_size(
    value, svs_path: Path, tmp_path: Path, masks
) -> None:
    """A feature size that selection would refuse fails naming its config key."""
    with pytest.raises(ConfigError, match="curate.selection.feature_size_px"):
        _run(svs_path, tmp_path, TilingParams(), masks(svs_path), feature_size_px=value)


def test_run_tile_slide_keep_rules(svs_path: Path, tmp_path: Path, masks) -> None:
    """keep is exactly tissue >= min, each artefact <= max and blur >= min; blur read iff masks pass."""
    params = TilingParams(
        specs=[TileSpec(128, 0.5)],
        min_tissue_fraction=0.6,
        max_artefact_fraction=0.2,
        min_blur_score=1.0,
    )
    tiles = _run(svs_path, tmp_path, params, masks(svs_path))
    artefact_cols = [f"{n}_fraction" for n in tiling._artefact_classes()]
    masks_ok = (tiles["tissue_fraction"] >= 0.6) & (tiles[artefact_cols] <= 0.2).all(axis=1)
    assert tiles["blur_score"].notna().eq(masks_ok).all()
    assert tiles["keep"].eq(masks_ok & (tiles["blur_score"] >= 1.0)).all()
    assert 0 < tiles["keep"].sum() < len(tiles)
    assert tiles[artefact_cols].to_numpy().max() > 0.2  # the artefact rule dropped something


def test_run_tile_slide_blur_at_target_mpp(dicom_path: Path, tmp_path: Path, masks) -> None:
    """blur_score is the score of the patch read at the tile's mpp and level-0 (x, y)."""
    params = TilingParams(specs=[TileSpec(256, 1.0)], max_artefact_fraction=1.0)
    tiles = _run(dicom_path, tmp_path, params, masks(dicom_path))
    row = tiles[tiles["blur_score"].notna()].iloc[0]
    with open_slide(dicom_path, slide_id="s1") as slide:
        patch = slide.read_region(int(row["x"]), int(row["y"]), 256, 1.0)
    assert row["blur_score"] == pytest.approx(blur_score(patch))


def test_run_tile_slide_other_format(ome_tiff_path: Path, tmp_path: Path, masks) -> None:
    """The OME-TIFF (0.2271 mpp, tifffile) tiles at 0.5 mpp with 128/0.5*0.2271 px steps."""
    params = TilingParams(specs=[TileSpec(128, 0.5)])
    tiles = _run(ome_tiff_path, tmp_path, params, masks(ome_tiff_path))
    footprint = 128 * 0.5 / 0.2271
    assert tiles["x"].max() + footprint <= 1101
    columns = np.unique(tiles["x"])
    assert set(np.diff(columns[:-1])) <= {int(footprint), int(footprint) + 1}
    assert columns[-1] == int(1101 - footprint)  # the last column ends at the slide's edge
    assert tiles["keep"].any()


def test_run_tile_slide_rerun_byte_identical(svs_path: Path, tmp_path: Path, masks) -> None:
    """A rerun writes the same tiles.parquet and sidecar bytes."""
    params = TilingParams(specs=[(256, 0.5), (512, 0.5)], overlap_fraction=0.25)
    _run(svs_path, tmp_path, params, masks(svs_path))
    first = ((tmp_path / "tiles.parquet").read_bytes(), (tmp_path / "tiles.json").read_bytes())
    _run(svs_path, tmp_path, params, masks(svs_path))
    assert (
        (tmp_path / "tiles.parquet").read_bytes(),
        (tmp_path / "tiles.json").read_bytes(),
    ) == first
    sidecar = json.loads(first[1])
    assert sidecar["params"]["specs"] == [
        {"size_px": 256, "mpp": 0.5},
        {"size_px": 512, "mpp": 0.5},
    ]


def test_run_tile_slide_rejects_unknown_class_limit(svs_path: Path, tmp_path: Path, masks) -> None:
    """A per-class limit for a class the registry does not have raises ConfigError."""
    with pytest.raises(ConfigError, match="coffee_stain"):
        _run(
            svs_path,
            tmp_path,
            TilingParams(max_class_fraction={"coffee_stain": 0.1}),
            masks(svs_path),
        )


def test_run_tile_slide_leaves_nothing_on_failure(svs_path: Path, tmp_path: Path, masks) -> None:
    """Masks of different grids raise SlideError and leave no output or temp file."""
    tissue_png, _ = masks(svs_path)
    small = tmp_path / "small.png"
    Image.fromarray(np.ones((10, 10), np.uint8)).save(small)
    out = tmp_path / "out"
    with pytest.raises(SlideError, match="differ"):
        _run(svs_path, out, TilingParams(), (tissue_png, small))
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("slide_name", "spec"),
    [("CMU-1-Small-Region.svs", TileSpec(256, 0.5)), ("OS-1-detail.ome.tif", TileSpec(256, 0.5))],
)
def test_run_tile_slide_grid_reaches_right_and_bottom_edges(
    slide_name: str, spec: TileSpec, tmp_path: Path, masks
) -> None:
    """Every tissue pixel of the mask lies in a listed tile, the last column and row included."""
    slide_path = Path(__file__).resolve().parents[2] / "resources" / "slides" / slide_name
    params = TilingParams(specs=[spec], min_candidate_tissue_fraction=0.0)
    tiles = _run(slide_path, tmp_path, params, masks(slide_path))
    tissue = np.asarray(Image.open(masks(slide_path)[0])) > 0
    with open_slide(slide_path) as slide:
        width, height = slide.dimensions
        footprint = spec.size_px * spec.mpp / slide.mpp
    sy, sx = tissue.shape[0] / height, tissue.shape[1] / width
    covered = np.zeros_like(tissue)
    for x, y in zip(tiles["x"], tiles["y"], strict=True):
        covered[int(y * sy) : int(np.ceil((y + footprint) * sy)), int(x * sx) : int(np.ceil((x + footprint) * sx))] = True  # fmt: skip
    assert tissue[:, -1].any() or tissue[-1].any()  # the slide has tissue at an edge strip
    assert not (tissue & ~covered).any()
    assert (tiles["x"] + footprint <= width).all()
    assert (tiles["y"] + footprint <= height).all()
