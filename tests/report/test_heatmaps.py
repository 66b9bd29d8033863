"""Tests of unipipe.report.heatmaps: patch scores drawn over a real slide's thumbnail."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unipipe.errors import ConfigError
from unipipe.report.heatmaps import BAG_MPP, render_slide_heatmaps
from unipipe.slide import open_slide

THUMB_MPP = 8.0
TILE_L0 = 256


def _grid(slide_id: str, width: int, height: int, *, size_col: bool) -> pd.DataFrame:
    """A tile grid over the slide; the score rises along the reading order of the tiles."""
    xs, ys = np.meshgrid(np.arange(0, width - TILE_L0, TILE_L0),
                         np.arange(0, height - TILE_L0, TILE_L0))  # fmt: skip
    n = xs.size
    table = pd.DataFrame({"slide_id": slide_id, "patch": np.arange(n), "x": xs.ravel(),
                          "y": ys.ravel(), "score": np.linspace(-3.0, 5.0, n)})  # fmt: skip
    if size_col:
        table["size_l0"] = TILE_L0
    return table


def _mean_in_box(image: np.ndarray, x0: int, y0: int, side_l0: int, scale: float) -> np.ndarray:
    """Mean RGB inside a level-0 box, one thumbnail pixel in from its edges (JPEG ringing)."""
    a, b = int(x0 * scale) + 1, int(y0 * scale) + 1
    side = int(side_l0 * scale) - 2
    return image[b : b + side, a : a + side].reshape(-1, 3).astype(float).mean(axis=0)


@pytest.fixture(scope="module")
def svs_grid(svs_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Heatmaps parquet of a tile grid over CMU-1-Small-Region, rendered once."""
    with open_slide(svs_path) as slide:
        width, height = slide.dimensions
        thumb = slide.read_thumbnail(THUMB_MPP)
        scale = slide.mpp / THUMB_MPP
    root = tmp_path_factory.mktemp("heat")
    table = _grid("CMU-1-Small-Region", width, height, size_col=True)
    table.to_parquet(root / "heatmaps.parquet")
    paths = render_slide_heatmaps(root / "heatmaps.parquet", {"CMU-1-Small-Region": svs_path},
                                  root / "out", thumb_mpp=THUMB_MPP)  # fmt: skip
    return {"paths": paths, "thumb": thumb, "scale": scale, "table": table, "root": root}


def test_render_slide_heatmaps_thumbnail_size(svs_grid: dict) -> None:
    """One JPEG per slide, named by id, with exactly the thumbnail's size."""
    assert [p.name for p in svs_grid["paths"]] == ["CMU-1-Small-Region.jpg"]
    image = np.asarray(Image.open(svs_grid["paths"][0]))
    assert image.shape == svs_grid["thumb"].shape


@pytest.mark.parametrize(("pick", "end"), [("idxmax", 1.0), ("idxmin", 0.0)])
def test_render_slide_heatmaps_colour_direction(svs_grid: dict, pick: str, end: float) -> None:
    """Under the top (bottom) patch the pixels move from the thumbnail toward the map's end."""
    table, thumb, scale = svs_grid["table"], svs_grid["thumb"], svs_grid["scale"]
    row = table.loc[getattr(table["score"], pick)()]
    image = np.asarray(Image.open(svs_grid["paths"][0]))
    before = _mean_in_box(thumb, row["x"], row["y"], TILE_L0, scale)
    after = _mean_in_box(image, row["x"], row["y"], TILE_L0, scale)
    target = np.asarray(matplotlib.colormaps["coolwarm"](end)[:3]) * 255
    # alpha 0.5 halves the distance to the colour map's end; JPEG keeps most of that.
    assert np.linalg.norm(after - target) < 0.65 * np.linalg.norm(before - target)
    assert np.dot(after - before, target - before) > 0


def test_render_slide_heatmaps_untouched_outside_patches(svs_grid: dict) -> None:
    """The strip right of the last grid column keeps the thumbnail's pixels."""
    table, thumb, scale = svs_grid["table"], svs_grid["thumb"], svs_grid["scale"]
    image = np.asarray(Image.open(svs_grid["paths"][0])).astype(int)
    right = int(np.ceil((table["x"].max() + TILE_L0) * scale)) + 2
    assert right < thumb.shape[1]
    assert np.abs(image[:, right:] - thumb[:, right:].astype(int)).mean() < 4


def test_render_slide_heatmaps_rerun_byte_identical(svs_grid: dict, svs_path: Path) -> None:
    """A second render writes the same bytes."""
    again = render_slide_heatmaps(svs_grid["root"] / "heatmaps.parquet",
                                  {"CMU-1-Small-Region": svs_path}, svs_grid["root"] / "again",
                                  thumb_mpp=THUMB_MPP)  # fmt: skip
    assert again[0].read_bytes() == svs_grid["paths"][0].read_bytes()


def test_render_slide_heatmaps_canvas_without_slide(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bags without a slide draw on white sized from coords; -1 rows skip; ids sorted, capped."""
    tables = [_grid(s, 2048, 1536, size_col=False) for s in ("c", "a", "b")]
    tables[2]["size_l0"] = -1  # not recorded in the bag: patch_size_l0 stands in
    tables[1].loc[0, ["x", "y"]] = -1
    pd.concat(tables).to_parquet(tmp_path / "h.parquet")
    with caplog.at_level(logging.WARNING, logger="unipipe.report.heatmaps"):
        paths = render_slide_heatmaps(tmp_path / "h.parquet", {"a": None}, tmp_path / "out",
                                      max_slides=2, patch_size_l0=TILE_L0)  # fmt: skip
    assert [p.name for p in paths] == ["a.jpg", "b.jpg"]
    assert "1 of 35 patches" in caplog.text
    scale = BAG_MPP / THUMB_MPP
    image = np.asarray(Image.open(paths[1]))
    # Grid of 7 x 5 tiles of 256 px (the last column/row stop short of the 2048 x 1536 edge).
    assert image.shape == (int(np.ceil(5 * TILE_L0 * scale)), int(np.ceil(7 * TILE_L0 * scale)), 3)
    assert (image.reshape(-1, 3).astype(int).sum(axis=1) < 3 * 250).mean() > 0.9


def test_render_slide_heatmaps_missing_column(tmp_path: Path) -> None:
    """A table without scores is refused, naming the file and the columns."""
    pd.DataFrame({"slide_id": ["a"], "x": [0], "y": [0]}).to_parquet(tmp_path / "h.parquet")
    with pytest.raises(ConfigError, match=r"h\.parquet lacks columns \['score'\]"):
        render_slide_heatmaps(tmp_path / "h.parquet", {}, tmp_path / "out")
