"""Tests of open_slide: reader choice, metadata mpp and dimensions, and the error messages."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile

from unipipe.errors import MissingMppError, SlideNotFoundError, UnsupportedSlideError
from unipipe.slide import READERS, open_slide

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"


@pytest.mark.parametrize(
    ("name", "reader", "mpp", "dimensions", "n_levels"),
    [
        ("CMU-1-Small-Region.svs", "openslide", 0.499, (2220, 2967), 1),
        ("CMU-1-Small-Region-dicom", "openslide", 0.499, (2220, 2967), 12),
        ("CMU-1-Small-Region-dicom/level-6-frames-0-1.dcm", "openslide", 0.499, (2220, 2967), 12),
        ("OS-1-detail.ome.tif", "tifffile", 0.2271, (1101, 1101), 1),
        ("OS-2-ndpi.ome.tif", "tifffile", 0.2271, (2202, 2202), 1),
        ("small_dicom.dcm", "pydicom", 15000 / 3236, (3236, 2638), 1),
    ],
)
def test_open_slide_picks_reader_mpp_and_dimensions(name, reader, mpp, dimensions, n_levels):
    """Every bundled slide opens with the expected reader, mpp, level-0 size and level count."""
    with open_slide(SLIDES / name) as slide:
        assert slide.reader == reader
        assert slide.mpp == pytest.approx(mpp, rel=1e-3)
        assert slide.dimensions == dimensions
        assert len(slide.level_dimensions) == n_levels


def test_open_slide_mpp_override_wins():
    """The manifest mpp replaces the metadata value."""
    with open_slide(SLIDES / "OS-1-detail.ome.tif", slide_id="os1", mpp=0.25) as slide:
        assert slide.mpp == 0.25
        assert slide.slide_id == "os1"


def test_open_slide_missing_path_names_slide_and_fix(tmp_path):
    """A missing file raises SlideNotFoundError naming the id, the path and the manifest column."""
    missing = tmp_path / "nope.svs"
    with pytest.raises(SlideNotFoundError) as info:
        open_slide(missing, slide_id="S1")
    message = str(info.value)
    assert "'S1'" in message
    assert str(missing) in message
    assert "`path` column of the slide manifest (config/slides.tsv" in message


def test_open_slide_text_file_is_unsupported(tmp_path):
    """A text file renamed .svs is refused by all three readers, and the message says so."""
    fake = tmp_path / "fake.svs"
    fake.write_text("this is not a slide\n")
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(fake, slide_id="fake")
    message = str(info.value)
    assert "'fake'" in message
    assert str(fake) in message
    for reader in READERS:
        assert reader in message.lower()
    assert "remove its row from the slide manifest (config/slides.tsv" in message


def _crop_of_svs() -> np.ndarray:
    with open_slide(SLIDES / "CMU-1-Small-Region.svs") as slide:
        return slide.read_region(600, 900, 512, slide.mpp)


def test_open_slide_tiff_without_resolution_needs_mpp(tmp_path):
    """An RGB TIFF without resolution tags raises MissingMppError, and opens with an override."""
    path = tmp_path / "no_mpp.tif"
    pixels = _crop_of_svs()
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(256, 256))
    with pytest.raises(MissingMppError) as info:
        open_slide(path, slide_id="nompp")
    assert "'nompp'" in str(info.value)
    assert str(path) in str(info.value)
    assert "add an `mpp` column to the slide manifest (config/slides.tsv" in str(info.value)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.reader in {"openslide", "tifffile"}  # OpenSlide reads tiled generic TIFF
        np.testing.assert_array_equal(slide.read_region(0, 0, 512, 0.5), pixels)


def test_open_slide_tiff_resolution_tags_give_mpp(tmp_path):
    """XResolution in pixels per centimetre of a striped TIFF (tifffile reads it) becomes µm/px."""
    path = tmp_path / "res.tif"
    tifffile.imwrite(
        path,
        _crop_of_svs(),
        photometric="rgb",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as slide:
        assert slide.reader == "tifffile"
        assert slide.mpp == pytest.approx(0.5)


def test_open_slide_dicom_without_width_needs_mpp(tmp_path):
    """small_dicom.dcm without ImagedVolumeWidth has no mpp left, so it raises MissingMppError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(SLIDES / "small_dicom.dcm")
        del ds.ImagedVolumeWidth
        path = tmp_path / "small_no_width.dcm"
        ds.save_as(path)
    with pytest.raises(MissingMppError, match="add an `mpp` column"):
        open_slide(path)
    with open_slide(path, mpp=4.6) as slide:
        assert slide.reader == "pydicom"


@pytest.mark.parametrize(
    ("shape", "dtype", "photometric", "tile", "reason"),
    [
        ((480, 640), np.uint16, "minisblack", None, "16-bit greyscale"),
        ((3, 480, 640), np.uint8, "minisblack", None, "multichannel fluorescence"),
        # Tiled: OpenSlide opens these as generic-tiff and would render them as RGB.
        ((512, 768), np.uint16, "minisblack", (256, 256), "16-bit greyscale"),
        ((3, 512, 768), np.uint16, "minisblack", (256, 256), "multichannel fluorescence"),
    ],
)
def test_open_slide_rejects_non_rgb_tiff(tmp_path, shape, dtype, photometric, tile, reason):
    """Greyscale and multichannel TIFFs raise UnsupportedSlideError that says what they are."""
    path = tmp_path / "fluo.tif"
    grey = _crop_of_svs()[:480, :480, 1].astype(dtype)
    data = np.zeros(shape, dtype)
    data[..., :480, :480] = grey
    tifffile.imwrite(path, data, photometric=photometric, planarconfig="separate", tile=tile)
    with pytest.raises(UnsupportedSlideError, match=reason):
        open_slide(path, slide_id="fluo", mpp=0.5)


def test_open_slide_dicom_folder_without_dcm_is_unsupported(tmp_path):
    """A folder holding no .dcm file is refused with a message naming it."""
    folder = tmp_path / "empty_dicom"
    folder.mkdir()
    shutil.copy(SLIDES / "OS-1-detail.ome.tif", folder / "readme.tif")
    with pytest.raises(UnsupportedSlideError, match="folder without .dcm"):
        open_slide(folder)


def test_read_region_damaged_tiles_name_slide_and_box(tmp_path):
    """A slide whose JPEG tiles are overwritten fails with SlideReadError naming slide and box."""
    from unipipe.errors import SlideReadError

    damaged = tmp_path / "damaged.svs"
    shutil.copyfile(SLIDES / "CMU-1-Small-Region.svs", damaged)
    with tifffile.TiffFile(damaged) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    rng = np.random.default_rng(0)
    with open(damaged, "r+b") as fh:
        for offset, count in zip(offsets, counts, strict=True):
            fh.seek(offset)
            fh.write(rng.integers(0, 256, count, dtype=np.uint8).tobytes())
    slide = open_slide(damaged, slide_id="damaged")
    with pytest.raises(SlideReadError, match=r"slide 'damaged' .* cannot be decoded") as info:
        slide.read_region(512, 512, 256, 0.5)
    slide.close()
    assert "remove its row" in str(info.value)
