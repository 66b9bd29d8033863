"""Tests of Slide.read_region / read_thumbnail: level choice, resizing, padding, block reads."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile

from unipipe.slide import base, open_slide

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"
SVS = SLIDES / "CMU-1-Small-Region.svs"
DICOM = SLIDES / "CMU-1-Small-Region-dicom"
OME = SLIDES / "OS-1-detail.ome.tif"


@pytest.mark.parametrize(("x", "y"), [(0, 0), (1000, 1500), (1964, 2711), (123, 457)])
def test_read_region_svs_level0_is_pixel_exact(x, y):
    """At the slide's own mpp the pixels equal OpenSlide's read_region at level 0."""
    reference = openslide.OpenSlide(SVS)
    expected = np.asarray(reference.read_region((x, y), 0, (256, 256)))[..., :3]
    with open_slide(SVS) as slide:
        np.testing.assert_array_equal(slide.read_region(x, y, 256, slide.mpp), expected)


def test_read_region_ome_tiff_at_half_mpp_has_size_and_content():
    """256 px at 0.5 mpp on the 0.2271-mpp OME-TIFF cover ~564 level-0 px, area-resized.

    The fast two-stage resize (integer box average, then a bilinear warp) stays within
    ~2 grey levels of OpenCV's fractional INTER_AREA; a 1-px shift would cost ~8.
    """
    full = tifffile.imread(OME)
    with open_slide(OME) as slide:
        patch = slide.read_region(200, 300, 256, 0.5)
        wide = slide.read_region(200, 300, (300, 200), 0.5)
    assert patch.shape == (256, 256, 3)
    assert patch.dtype == np.uint8
    assert wide.shape == (200, 300, 3)
    side0 = round(256 * 0.5 / 0.2270972430394695)
    box = full[300 : 300 + side0, 200 : 200 + side0].astype(np.float32)
    expected = cv2.resize(box, (256, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(patch - expected).mean() < 3.0


@pytest.mark.parametrize(
    ("mpp", "level"), [(0.25, 0), (0.5, 0), (1.0, 1), (3.0, 2), (4.0, 3), (8.0, 4)]
)
def test_best_level_on_dicom_pyramid(mpp, level):
    """The coarsest level at least as fine as the request is chosen (1% tolerance: 8.015 ~ 8)."""
    with open_slide(DICOM) as slide:
        assert slide.best_level(mpp) == level


def test_read_region_outside_slide_is_white():
    """Pixels beyond the slide's edge read as white glass, inside ones are kept."""
    with open_slide(SVS) as slide:
        w, h = slide.dimensions
        patch = slide.read_region(w - 100, h - 100, 256, slide.mpp)
    assert (patch[100:, :] == 255).all()
    assert (patch[:, 100:] == 255).all()
    assert patch[:100, :100].mean() < 250


def test_dicom_colour_matches_svs_at_level0():
    """The DICOM copy (JFIF frames labelled RGB) reads in the same colours as the SVS."""
    with open_slide(SVS) as svs, open_slide(DICOM) as dicom:
        a = svs.read_region(500, 800, 512, svs.mpp).astype(int)
        b = dicom.read_region(500, 800, 512, dicom.mpp).astype(int)
    assert np.abs(a - b).mean() < 6.0  # JPEG re-encoding noise; unconverted YCbCr is ~60


@pytest.mark.parametrize("mpp", [4.0, 8.0])
def test_read_thumbnail_svs_and_dicom_near_identical(mpp):
    """The single-level SVS (resized here) and the DICOM pyramid (stored levels) agree."""
    with open_slide(SVS) as svs, open_slide(DICOM) as dicom:
        a = svs.read_thumbnail(mpp).astype(np.float32)
        b = dicom.read_thumbnail(mpp).astype(np.float32)
    assert a.shape == b.shape == (round(2967 * 0.499 / mpp), round(2220 * 0.499 / mpp), 3)
    # The two pyramids were resampled with different filters: compare after a light blur.
    blurred = np.abs(cv2.GaussianBlur(a, (0, 0), 2) - cv2.GaussianBlur(b, (0, 0), 2)).mean()
    assert blurred < 5.0
    assert np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() < 2.0


def test_read_thumbnail_blocks_bound_memory(monkeypatch):
    """With small blocks no read exceeds the block size, and the result matches one big read."""
    with open_slide(SVS) as slide:
        whole = slide.read_thumbnail(4.0)
        monkeypatch.setattr(base, "THUMBNAIL_BLOCK_PX", 512)
        sizes = []
        original = slide._read_level

        def spy(level, x, y, w, h):
            sizes.append((w, h))
            return original(level, x, y, w, h)

        monkeypatch.setattr(slide, "_read_level", spy)
        blocked = slide.read_thumbnail(4.0)
    assert len(sizes) > 4
    assert max(max(s) for s in sizes) <= 512 + 8
    assert blocked.shape == whole.shape
    # Blocks start at other phases of the box average: texture-level noise, but no seams.
    difference = np.abs(blocked.astype(np.float32) - whole).mean(axis=2)
    assert difference.mean() < 4.0
    seams = difference[:, 63::64].mean()
    assert seams < 2 * difference.mean()


def test_small_dicom_frames_join_without_seams():
    """Column-major frame order puts neighbours side by side: the frame seam is no edge."""
    with open_slide(SLIDES / "small_dicom.dcm") as slide:
        strip = slide.read_region(0, 0, (3236, 2638), slide.mpp).astype(np.float32).mean(2)
    column_steps = np.abs(np.diff(strip, axis=1)).mean(0)
    row_steps = np.abs(np.diff(strip, axis=0)).mean(1)
    seams_x = column_steps[[499, 999, 1499, 1999, 2499]]
    seams_y = row_steps[[499, 999, 1499, 1999]]
    assert seams_x.max() < 3 * np.median(column_steps) + 2
    assert seams_y.max() < 3 * np.median(row_steps) + 2
