"""Tests of the fold, glass and staining detectors on real pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from unipipe.curate import artefact_stain
from unipipe.curate.artefact_fold import FoldParams, detect_fold
from unipipe.curate.artefact_glass import GlassParams, detect_glass
from unipipe.curate.artefact_stain import (
    StainParams,
    block_optical_density,
    detect_overstain,
    detect_understain,
    estimate_stain_type,
    hed_optical_density,
    optical_density,
)
from unipipe.errors import ConfigError

TILES = Path(__file__).resolve().parents[2] / "resources" / "qc" / "tiles"
CLEAN = "medium-nuclei-score-level1-2.png"


def _rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(TILES / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _everywhere(rgb: np.ndarray) -> np.ndarray:
    return np.ones(rgb.shape[:2], bool)


def test_fold_flags_crease_but_not_clean_tissue():
    """The dark crease of the red-pen tile is a fold; clean tumour tissue has none."""
    crease = _rgb("high-nuclei-score-red-pen-level1.png")
    clean = _rgb(CLEAN)
    found = detect_fold(crease, _everywhere(crease), mpp=1.0, params=FoldParams())
    assert found.mean() > 0.01
    assert found[200:320].mean() > 5 * found.mean() / 2  # the crease crosses rows ~230-300
    assert detect_fold(clean, _everywhere(clean), mpp=1.0, params=FoldParams()).mean() == 0.0


@pytest.mark.parametrize(
    ("name", "low", "high"), [("no-tissue.png", 0.95, 1.0), (CLEAN, 0.0, 0.01)]
)
def test_glass_on_empty_and_clean_tiles(name, low, high):
    """A glass tile is all glass when taken for tissue; clean tissue has (almost) none."""
    rgb = _rgb(name)
    fraction = detect_glass(rgb, _everywhere(rgb), mpp=1.0, params=GlassParams()).mean()
    assert low <= fraction <= high


def test_glass_stays_inside_tissue():
    """Glass is only reported where the tissue mask is set."""
    rgb = _rgb("no-tissue.png")
    tissue = np.zeros(rgb.shape[:2], bool)
    tissue[:, :256] = True
    found = detect_glass(rgb, tissue, mpp=1.0, params=GlassParams())
    assert not found[:, 256:].any()
    assert found[:, :256].mean() > 0.9


def _darken(rgb: np.ndarray) -> np.ndarray:
    """Simulated overstaining: transmission to the 4th power, i.e. 4x the optical density."""
    transmission = rgb.astype(np.float32) / 255.0
    return np.clip(transmission**4 * 255.0, 0, 255).astype(np.uint8)


def _bleach(rgb: np.ndarray) -> np.ndarray:
    """Simulated understaining: the tissue colour washed 90% towards white."""
    return np.clip(0.1 * rgb.astype(np.float32) + 0.9 * 245.0, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("transform", "over", "under"),
    [(lambda x: x, False, False), (_darken, True, False), (_bleach, False, True)],
    ids=["original", "darkened", "bleached"],
)
def test_stain_detectors_on_real_tile(transform, over, under):
    """The real tile is neither; darkened it is overstained, bleached it is understained."""
    rgb = transform(_rgb(CLEAN))
    tissue = _everywhere(rgb)
    params = StainParams(block_um=128.0)
    assert bool(detect_overstain(rgb, tissue, mpp=1.0, params=params).mean() > 0.9) == over
    assert bool(detect_understain(rgb, tissue, mpp=1.0, params=params).mean() > 0.9) == under


@pytest.mark.parametrize(("stain", "column"), [("haematoxylin", 0), ("eosin", 1), ("dab", 2)])
def test_hed_optical_density_separates_pure_stains(stain, column):
    """A colour made of 0.5 OD of one reference stain deconvolves to that stain alone."""
    vectors = {
        "haematoxylin": [0.65, 0.70, 0.29],
        "eosin": [0.07, 0.99, 0.11],
        "dab": [0.27, 0.57, 0.78],
    }
    od = 0.5 * np.asarray(vectors[stain]) / np.linalg.norm(vectors[stain])
    rgb = np.round(256.0 * 10.0**-od - 1.0).astype(np.uint8)[None, :]
    expected = np.zeros(3)
    expected[column] = 0.5
    np.testing.assert_allclose(hed_optical_density(rgb)[0], expected, atol=0.02)


def test_stain_type_of_real_tile_is_he():
    """A real H&E tile reads as H&E; with ``max_dab_fraction`` 0 its few brown pixels make it IHC."""
    rgb = _rgb(CLEAN)
    tissue = _everywhere(rgb)
    assert estimate_stain_type(rgb, tissue, params=StainParams()).label == "he"
    strict = estimate_stain_type(rgb, tissue, params=StainParams(max_dab_fraction=0.0))
    assert strict.label == "ihc"
    assert strict.reason.startswith("stain looks like IHC (DAB fraction")
    assert estimate_stain_type(rgb, ~tissue, params=StainParams()).label == "unknown"


@pytest.mark.parametrize(
    ("field", "value"),
    [("dab_min_od", 0.0), ("max_dab_fraction", 1.5), ("min_eosin_fraction", -0.1)],
)
def test_stain_params_reject_bad_stain_type_thresholds(field, value):
    """Stain-type thresholds out of range raise ConfigError naming the key."""
    with pytest.raises(ConfigError, match=f"curate.artefacts.stain.{field}"):
        StainParams(**{field: value})


@pytest.mark.parametrize("band_px", [1, 97, 1 << 20])
def test_stain_type_in_bands_equals_all_pixels_at_once(band_px, monkeypatch):
    """Judging the tissue in bands of rows gives the shares of judging every pixel at once."""
    rgb = _rgb(CLEAN)
    tissue = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1] > 30  # real, irregular tissue mask
    hed = hed_optical_density(rgb[tissue])
    params = StainParams()
    monkeypatch.setattr(artefact_stain, "_STAIN_BAND_PX", band_px)
    stain = estimate_stain_type(rgb, tissue, params=params)
    assert stain.dab_fraction == float(
        np.mean((hed[:, 2] > params.dab_min_od) & (hed[:, 1] <= 0.0))
    )
    assert stain.eosin_fraction == float(np.mean(hed[:, 1] > 0.0))


def test_block_optical_density_matches_masked_copy():
    """Block ODs equal those of the tissue colour masked and padded the direct way."""
    rgb = _rgb(CLEAN)
    tissue = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1] > 30
    params = StainParams(block_um=45.0)
    got, block = block_optical_density(rgb, tissue, mpp=1.0, params=params)
    h, w = tissue.shape
    pad = (0, -h % block, 0, -w % block)
    weight = cv2.copyMakeBorder(tissue.astype(np.uint8) * 255, *pad, cv2.BORDER_CONSTANT, value=0)
    colour = cv2.copyMakeBorder(
        cv2.bitwise_and(rgb, rgb, mask=weight[:h, :w]), *pad, cv2.BORDER_CONSTANT, value=0
    )
    rows, cols = weight.shape[0] // block, weight.shape[1] // block
    mean_w = cv2.resize(weight, (cols, rows), interpolation=cv2.INTER_AREA) / np.float32(255)
    mean_c = cv2.resize(colour, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
    judged = mean_w >= params.min_block_tissue
    od = optical_density(mean_c / np.maximum(mean_w, 1e-6)[..., None])
    np.testing.assert_array_equal(got, np.where(judged, od, np.nan).astype(np.float32))
    assert np.isfinite(got).any()
    assert np.isnan(got).any()
