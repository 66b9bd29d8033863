"""Tests of batched patch reads (Slide.read_regions): same pixels, caller's order, bounded cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from unipipe.errors import SlideReadError
from unipipe.slide import open_slide
from unipipe.slide.batch import BatchStats
from unipipe.slide.tiff_tiles import TiledPage

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"
SVS = SLIDES / "CMU-1-Small-Region.svs"
SVS_TILE_BYTES = 240 * 240 * 3


def _origins(slide, size_px: int, mpp: float, n: int, seed: int = 0) -> np.ndarray:
    """Random level-0 origins, some reaching past every edge of the slide."""
    w, h = slide.dimensions
    margin = int(size_px * mpp / slide.mpp)
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(-margin // 2, w, n), rng.integers(-margin // 2, h, n)], 1)


def _grid(slide, size_px: int, mpp: float) -> np.ndarray:
    """Row-major origins of a non-overlapping grid inside the slide, as tiling lays it out."""
    step = size_px * mpp / slide.mpp
    w, h = slide.dimensions
    xs = np.floor(np.arange(int((w - step) // step) + 1) * step).astype(int)
    ys = np.floor(np.arange(int((h - step) // step) + 1) * step).astype(int)
    return np.array([(x, y) for y in ys for x in xs])


@pytest.mark.parametrize(
    "name",
    [
        "CMU-1-Small-Region.svs",
        "OS-1-detail.ome.tif",
        "OS-2-ndpi.ome.tif",
        "CMU-1-Small-Region-dicom",
        "small_dicom.dcm",
    ],
)
@pytest.mark.parametrize("at", ["half", "native"])
def test_read_regions_equal_read_region(name, at):
    """Each batched patch equals read_region's, at 0.5 mpp (resized) and the slide's own mpp."""
    with open_slide(SLIDES / name) as slide:
        mpp = 0.5 if at == "half" else slide.mpp
        origins = _origins(slide, 256, mpp, n=25)
        patches = list(slide.read_regions(origins, 256, mpp))
        assert len(patches) == len(origins)
        for (x, y), patch in zip(origins, patches, strict=True):
            np.testing.assert_array_equal(patch, slide.read_region(int(x), int(y), 256, mpp))


def test_read_regions_svs_equal_openslide():
    """On the Aperio slide (RGB-coded JPEG tiles) batched reads give OpenSlide's own pixels."""
    reference = openslide.OpenSlide(SVS)
    with open_slide(SVS) as slide:
        w, h = slide.dimensions
        origins = [(x, y) for x, y in _origins(slide, 300, slide.mpp, n=30) if x >= 0 and y >= 0]
        origins = [(x, y) for x, y in origins if x + 300 <= w and y + 200 <= h]
        stats = BatchStats()
        patches = slide.read_regions(origins, (300, 200), slide.mpp, stats=stats)
        for (x, y), patch in zip(origins, patches, strict=True):
            expected = np.asarray(reference.read_region((int(x), int(y)), 0, (300, 200)))
            np.testing.assert_array_equal(patch, expected[..., :3])
    assert stats.tiles_decoded > 0  # the direct tile path was taken, not OpenSlide's


def test_read_regions_keep_the_callers_order():
    """Shuffled origins come back in the shuffled order, each tile still decoded once."""
    with open_slide(SVS) as slide:
        grid = _grid(slide, 256, 0.5)
        in_order = list(slide.read_regions(grid, 256, 0.5))
        shuffle = np.random.default_rng(3).permutation(len(grid))
        stats = BatchStats()
        shuffled = list(slide.read_regions(grid[shuffle], 256, 0.5, stats=stats))
    for k, i in enumerate(shuffle):
        np.testing.assert_array_equal(shuffled[k], in_order[i])
    assert stats.boxes == len(grid)
    assert stats.tiles_decoded == stats.tiles_touched


def test_row_major_grid_decodes_each_tile_once_within_two_tile_rows(monkeypatch):
    """A grid pass decodes every tile it touches exactly once with a cache of two tile rows."""
    decoded: list[int] = []
    original = TiledPage.decode_tile

    def counting(self, index):
        decoded.append(index)
        return original(self, index)

    monkeypatch.setattr(TiledPage, "decode_tile", counting)
    with open_slide(SVS) as slide:
        grid = _grid(slide, 256, 0.5)
        row_bytes = -(-slide.dimensions[0] // 240) * SVS_TILE_BYTES
        stats = BatchStats()
        for _ in slide.read_regions(grid, 256, 0.5, cache_bytes=2 * row_bytes, stats=stats):
            pass
    assert sorted(decoded) == sorted(set(decoded))  # no tile twice
    assert len(decoded) == stats.tiles_touched == stats.tiles_decoded
    assert stats.peak_cache_bytes <= 2 * row_bytes


@pytest.mark.parametrize("cache_bytes", [0, SVS_TILE_BYTES // 2, 3 * SVS_TILE_BYTES])
def test_small_cache_gives_same_pixels_and_respects_its_bound(cache_bytes):
    """Below one tile (or a few) the cache never holds more than its budget; pixels are equal."""
    with open_slide(SVS) as slide:
        origins = _origins(slide, 256, 0.5, n=40, seed=5)
        expected = list(slide.read_regions(origins, 256, 0.5))
        stats = BatchStats()
        got = list(slide.read_regions(origins, 256, 0.5, cache_bytes=cache_bytes, stats=stats))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert stats.peak_cache_bytes <= cache_bytes
    assert stats.tiles_decoded > stats.tiles_touched  # the budget forced re-decodes


def test_cache_drops_the_tile_needed_last():
    """Cycling over 5 tiles with room for 4: dropping the tile needed furthest ahead (Belady)
    decodes about one tile per cycle, where least-recently-used would decode all 50."""
    with open_slide(SVS) as slide:
        centres = [(240 * col + 100, 100) for col in range(5)]  # 16 px inside tiles 0..4
        stats = BatchStats()
        cycle = centres * 10
        got = list(
            slide.read_regions(cycle, 16, slide.mpp, cache_bytes=4 * SVS_TILE_BYTES, stats=stats)
        )
        for (x, y), patch in zip(cycle, got, strict=True):
            np.testing.assert_array_equal(patch, slide.read_region(x, y, 16, slide.mpp))
    assert stats.tiles_touched == 5
    assert stats.tiles_decoded <= 5 + 10 + 2


def test_ome_resized_reads_equal_whole_page_decode():
    """On the OME-TIFF (YCbCr JFIF tiles) native-mpp batched reads equal tifffile's decode."""
    full = tifffile.imread(SLIDES / "OS-2-ndpi.ome.tif")
    with open_slide(SLIDES / "OS-2-ndpi.ome.tif") as slide:
        grid = _grid(slide, 500, slide.mpp)
        for (x, y), patch in zip(grid, slide.read_regions(grid, 500, slide.mpp), strict=True):
            np.testing.assert_array_equal(patch, full[y : y + 500, x : x + 500])


def test_read_regions_damaged_tiles_name_slide_and_box(tmp_path):
    """A batched read of overwritten JPEG tiles raises SlideReadError naming slide and box."""
    damaged = tmp_path / "damaged.svs"
    shutil.copyfile(SVS, damaged)
    with tifffile.TiffFile(damaged) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    rng = np.random.default_rng(0)
    with open(damaged, "r+b") as fh:
        for offset, count in zip(offsets, counts, strict=True):
            fh.seek(offset)
            fh.write(rng.integers(0, 256, count, dtype=np.uint8).tobytes())
    with open_slide(damaged, slide_id="damaged") as slide:
        patches = slide.read_regions([(512, 512), (0, 0)], 256, 0.5)
        with pytest.raises(SlideReadError, match=r"slide 'damaged' .* box x=512 y=512") as info:
            next(patches)
    assert "remove its row" in str(info.value)


def test_read_regions_refuse_bad_mpp_before_reading():
    """A non-positive mpp fails at the call, not at the first patch."""
    with open_slide(SVS) as slide, pytest.raises(ValueError, match="mpp must be positive"):
        slide.read_regions([(0, 0)], 256, 0.0)


def test_open_slide_sets_the_batched_read_budget():
    """open_slide's read_cache_bytes is the default budget of read_regions; bad values fail."""
    with open_slide(SVS, read_cache_bytes=0) as slide:
        stats = BatchStats()
        for _ in slide.read_regions(_grid(slide, 256, 0.5), 256, 0.5, stats=stats):
            pass
    assert stats.peak_cache_bytes == 0
    assert stats.tiles_decoded > stats.tiles_touched
    with pytest.raises(ValueError, match="read_cache_bytes must be an int >= 0"):
        open_slide(SVS, read_cache_bytes=-1)
