"""Tests of the per-patch blur score on real slide pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from unipipe.curate.artefact_blur import BlurParams, blur_score, is_blurred
from unipipe.slide import open_slide

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"


@pytest.mark.parametrize(
    ("name", "x", "y"),
    [("CMU-1-Small-Region.svs", 700, 1400), ("OS-1-detail.ome.tif", 300, 300)],
)
@pytest.mark.parametrize("sigma_px", [1.5, 3.0])
def test_blur_score_separates_sharp_from_blurred(name, x, y, sigma_px):
    """A real 256-px patch at 0.5 mpp passes; the same patch Gaussian-blurred fails."""
    with open_slide(SLIDES / name) as slide:
        patch = slide.read_region(x, y, 256, 0.5)
    blurred = cv2.GaussianBlur(patch, (0, 0), sigma_px)
    params = BlurParams()
    assert blur_score(patch) > params.min_score > blur_score(blurred)
    assert not is_blurred(patch, params)
    assert is_blurred(blurred, params)
