"""Tests of direct tile reads: pixel-exact against OpenSlide (SVS) and tifffile (OME-TIFF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from unipipe.slide import open_slide
from unipipe.slide.openslide_reader import open_with_openslide
from unipipe.slide.tiff_tiles import TiledPage, tiled_page_supported

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"
SVS = SLIDES / "CMU-1-Small-Region.svs"


def _boxes(width: int, height: int, n: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    boxes = [(0, 0, width, height), (width - 7, height - 5, 7, 5)]
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(1, 700, 2))
        boxes.append((int(rng.integers(0, width - w)), int(rng.integers(0, height - h)), w, h))
    return boxes


def test_svs_direct_tiles_equal_openslide():
    """Aperio tiles decoded directly (RGB-coded JPEG) give OpenSlide's pixels exactly."""
    reference = openslide.OpenSlide(SVS)
    with open_slide(SVS) as slide:
        assert slide.fast_levels == (0,)
        for x, y, w, h in _boxes(*slide.dimensions, n=40):
            expected = np.asarray(reference.read_region((x, y), 0, (w, h)))[..., :3]
            np.testing.assert_array_equal(slide._read_level(0, x, y, w, h), expected)


def test_svs_fast_and_openslide_paths_agree_at_half_mpp():
    """read_region at 0.5 mpp is the same with and without direct tile reads."""
    with open_slide(SVS) as fast:
        slow = open_with_openslide(SVS, slide_id="slow", mpp=None, fast_tiles=False)
        assert slow.fast_levels == ()
        for x, y, _, _ in _boxes(1900, 2600, n=10, seed=1):
            np.testing.assert_array_equal(
                fast.read_region(x, y, 256, 0.5), slow.read_region(x, y, 256, 0.5)
            )
        slow.close()


@pytest.mark.parametrize("subsampling", [(2, 2), (1, 1)])
def test_ycbcr_jpeg_tiff_direct_tiles_equal_openslide(tmp_path, subsampling):
    """YCbCr JPEG tiles (most scanners' choice) of a generic tiled TIFF equal OpenSlide's."""
    with open_slide(SVS) as svs:
        pixels = svs.read_region(0, 0, (1024, 1536), svs.mpp)
    path = tmp_path / "ycbcr.tif"
    tifffile.imwrite(
        path,
        pixels,
        tile=(256, 256),
        compression="jpeg",
        photometric="ycbcr",
        subsampling=subsampling,
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    reference = openslide.OpenSlide(path)
    with open_slide(path) as slide:
        assert slide.reader == "openslide"
        assert slide.fast_levels == (0,)
        for x, y, w, h in _boxes(*slide.dimensions, n=15):
            expected = np.asarray(reference.read_region((x, y), 0, (w, h)))[..., :3]
            np.testing.assert_array_equal(slide._read_level(0, x, y, w, h), expected)


@pytest.mark.parametrize("name", ["OS-1-detail.ome.tif", "OS-2-ndpi.ome.tif"])
@pytest.mark.parametrize("cache_bytes", [1 << 20, 128 << 20])
def test_ome_tiled_page_equals_tifffile(name, cache_bytes):
    """YCbCr-JFIF OME tiles read directly equal tifffile's full decode, with any cache size."""
    with tifffile.TiffFile(SLIDES / name) as tif:
        page = tif.pages[0]
        assert tiled_page_supported(page)
        full = page.asarray()
        tiles = TiledPage(tif, page, cache_bytes=cache_bytes)
        for x, y, w, h in _boxes(tiles.width, tiles.height, n=25):
            np.testing.assert_array_equal(tiles.read(x, y, w, h), full[y : y + h, x : x + w, :3])
