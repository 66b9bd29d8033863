"""Tests of Slide.read_regions_multi: several geometries per origin from one read, same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unipipe.slide import open_slide

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"

# Target patch, selection-feature patch of the same area, a larger tile, and an upsampled read.
GEOMETRIES = [(256, 0.5), (128, 1.0), (512, 0.5), (128, 2.0), (64, 0.37)]


def _origins(slide, n: int = 24, seed: int = 0) -> np.ndarray:
    """Row-major level-0 origins, some reaching past the top, left, right and bottom edges."""
    w, h = slide.dimensions
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.integers(-200, w - 50, n), rng.integers(-200, h - 50, n)], 1)
    return xy[np.lexsort((xy[:, 0], xy[:, 1]))]


@pytest.mark.parametrize(
    "name",
    [
        "CMU-1-Small-Region.svs",
        "OS-1-detail.ome.tif",
        "OS-2-ndpi.ome.tif",
        "CMU-1-Small-Region-dicom/level-0-frames-0-30.dcm",
        "small_dicom.dcm",
    ],
)
def test_read_regions_multi_equals_single_reads(name: str) -> None:
    """Each geometry's patch equals read_regions and read_region for it, pixel for pixel."""
    with open_slide(SLIDES / name) as slide:
        origins = _origins(slide)
        multi = list(slide.read_regions_multi(origins, GEOMETRIES))
        assert len(multi) == len(origins)
        for j, (size_px, mpp) in enumerate(GEOMETRIES):
            batched = list(slide.read_regions(origins, size_px, mpp))
            for (x, y), one in zip(origins[:4], batched[:4], strict=True):
                np.testing.assert_array_equal(slide.read_region(int(x), int(y), size_px, mpp), one)
            for one, many in zip(batched, multi, strict=True):
                assert many[j].shape == (size_px, size_px, 3)
                np.testing.assert_array_equal(many[j], one)


def test_read_regions_multi_spans_pyramid_levels() -> None:
    """On a pyramid the geometries fall on several levels, and every patch is still exact."""
    with open_slide(SLIDES / "CMU-1-Small-Region-dicom" / "level-0-frames-0-30.dcm") as slide:
        levels = {slide.best_level(mpp) for _, mpp in GEOMETRIES}
        assert len(levels) >= 2
        origins = _origins(slide, n=8, seed=1)
        for patches, (x, y) in zip(
            slide.read_regions_multi(origins, GEOMETRIES), origins, strict=True
        ):
            for patch, (size_px, mpp) in zip(patches, GEOMETRIES, strict=True):
                np.testing.assert_array_equal(
                    patch, slide.read_region(int(x), int(y), size_px, mpp)
                )


def test_read_regions_multi_patches_outlive_the_next_read() -> None:
    """Patches kept from earlier origins are not overwritten by later reads (no shared buffer)."""
    with open_slide(SLIDES / "OS-2-ndpi.ome.tif") as slide:
        origins = _origins(slide, n=6, seed=2)
        kept = list(slide.read_regions_multi(origins, [(256, slide.mpp), (64, 1.0)]))
        for (x, y), (full, small) in zip(origins, kept, strict=True):
            np.testing.assert_array_equal(full, slide.read_region(int(x), int(y), 256, slide.mpp))
            np.testing.assert_array_equal(small, slide.read_region(int(x), int(y), 64, 1.0))


def test_read_regions_multi_bad_geometry_fails_at_call() -> None:
    """A non-positive mpp fails when the read is asked for, not at the first patch."""
    with (
        open_slide(SLIDES / "CMU-1-Small-Region.svs") as slide,
        pytest.raises(ValueError, match="mpp must be positive"),
    ):
        slide.read_regions_multi([(0, 0)], [(256, 0.5), (64, 0.0)])


def test_read_regions_multi_wanted_reads_only_what_each_origin_needs() -> None:
    """Geometries an origin does not want are None; the wanted ones stay exact."""
    with open_slide(SLIDES / "CMU-1-Small-Region-dicom" / "level-0-frames-0-30.dcm") as slide:
        origins = _origins(slide, n=10, seed=3)
        wanted = np.random.default_rng(3).random((len(origins), len(GEOMETRIES))) > 0.5
        wanted[0] = False  # an origin that wants nothing
        reads = slide.read_regions_multi(origins, GEOMETRIES, wanted=wanted)
        for (x, y), row, patches in zip(origins, wanted, reads, strict=True):
            for want, patch, (size_px, mpp) in zip(row, patches, GEOMETRIES, strict=True):
                if not want:
                    assert patch is None
                    continue
                np.testing.assert_array_equal(
                    patch, slide.read_region(int(x), int(y), size_px, mpp)
                )
        with pytest.raises(ValueError, match="wanted must be"):
            slide.read_regions_multi(origins, GEOMETRIES, wanted=wanted[:, :2])
