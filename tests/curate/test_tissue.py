"""Tests of tissue segmentation on the bundled slides and the histolab QC tiles."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from unipipe.config import build_params
from unipipe.curate.tissue import TissueParams, run_segment_tissue, segment_tissue
from unipipe.curate.tissue_morph import filter_components
from unipipe.errors import ConfigError
from unipipe.slide import open_slide

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
SLIDES = RESOURCES / "slides"
TILES = RESOURCES / "qc" / "tiles"

# Tissue fraction of the whole slide area, checked by eye on the previews.
SLIDE_FRACTIONS = [
    ("CMU-1-Small-Region.svs", 0.30, 0.45),
    ("small_dicom.dcm", 0.40, 0.60),
    ("OS-1-detail.ome.tif", 0.95, 1.0),
    ("OS-2-ndpi.ome.tif", 0.70, 0.90),
]


def _tile(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(TILES / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _segment(tmp_path: Path, name: str, params: TissueParams, tag: str = "a") -> dict[str, Path]:
    out = {
        key: tmp_path / f"{tag}_{key}"
        for key in ("mask.png", "tissue.geojson", "preview.jpg", "sidecar.json")
    }
    run_segment_tissue(
        SLIDES / name,
        slide_id=name.split(".")[0],
        mpp=None,
        params=params,
        mask_png=out["mask.png"],
        geojson=out["tissue.geojson"],
        preview_jpg=out["preview.jpg"],
        sidecar=out["sidecar.json"],
    )
    return out


@pytest.mark.parametrize(("name", "low", "high"), SLIDE_FRACTIONS)
def test_run_segment_tissue_fraction_and_polygons_in_bounds(tmp_path, name, low, high):
    """Each slide's mask has the thumbnail shape, a sane tissue fraction and in-bounds polygons."""
    params = TissueParams()
    out = _segment(tmp_path, name, params)
    mask = cv2.imread(str(out["mask.png"]), cv2.IMREAD_UNCHANGED)
    with open_slide(SLIDES / name) as slide:
        assert mask.shape == slide.thumbnail_size(params.thumb_mpp)[::-1]
        width, height = slide.dimensions
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert low <= (mask > 0).mean() <= high

    collection = json.loads(out["tissue.geojson"].read_text())
    assert collection["type"] == "FeatureCollection"
    assert collection["features"]
    for feature in collection["features"]:
        assert feature["geometry"]["type"] == "Polygon"
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"]["name"] == "Tissue"
        for ring in feature["geometry"]["coordinates"]:
            points = np.asarray(ring)
            assert (points >= 0).all()
            assert (points[:, 0] <= width).all()
            assert (points[:, 1] <= height).all()
            assert ring[0] == ring[-1]
    sidecar = json.loads(out["sidecar.json"].read_text())
    assert sidecar["stage"] == "segment_tissue"
    assert sidecar["params"]["thumb_mpp"] == params.thumb_mpp
    assert cv2.imread(str(out["preview.jpg"])) is not None


def test_run_segment_tissue_is_byte_identical_on_rerun(tmp_path):
    """Two runs with the same parameters write the same bytes to every output."""
    first = _segment(tmp_path, "CMU-1-Small-Region.svs", TissueParams(), tag="a")
    second = _segment(tmp_path, "CMU-1-Small-Region.svs", TissueParams(), tag="b")
    for key, path in first.items():
        assert path.read_bytes() == second[key].read_bytes(), key


def test_geojson_polygons_redraw_the_mask(tmp_path):
    """The level-0 polygons, scaled back to the mask grid, cover the same pixels (IoU > 0.95)."""
    params = TissueParams()
    out = _segment(tmp_path, "small_dicom.dcm", params)
    mask = cv2.imread(str(out["mask.png"]), cv2.IMREAD_UNCHANGED) > 0
    with open_slide(SLIDES / "small_dicom.dcm") as slide:
        per_px = params.thumb_mpp / slide.mpp
    drawn = np.zeros(mask.shape, np.uint8)
    for feature in json.loads(out["tissue.geojson"].read_text())["features"]:
        rings = [
            np.round(np.asarray(r) / per_px - 0.5).astype(np.int32)
            for r in feature["geometry"]["coordinates"]
        ]
        cv2.fillPoly(drawn, rings, 1)
    drawn = drawn > 0
    assert (drawn & mask).sum() / (drawn | mask).sum() > 0.95


@pytest.mark.parametrize(
    "name",
    [
        "no-tissue.png",
        "no-tissue2.png",
        "no-tissue-line.png",
        "no-tissue-green-pen.png",
        "no-tissue-red-pen.png",
        "almost-white-1.png",
    ],
)
def test_segment_tissue_finds_none_on_glass_and_ink(name):
    """Glass, debris, a scratch line and ink on glass are not tissue."""
    result = segment_tissue(_tile(name), mpp=1.0, params=TissueParams())
    assert result.tissue_fraction < 0.02


@pytest.mark.parametrize(
    "name",
    [
        "tissue-level0-4302-10273-4814-10785.png",
        "medium-nuclei-score-level1-2.png",
        "high-nuclei-score-red-pen-level1.png",
        "medium-nuclei-score-green-pen-level1.png",
    ],
)
def test_segment_tissue_keeps_tissue_tiles(name):
    """Tiles full of tissue (with or without ink on it) are mostly tissue."""
    result = segment_tissue(_tile(name), mpp=1.0, params=TissueParams())
    assert result.tissue_fraction > 0.85


def test_segment_tissue_without_pen_exclusion_takes_ink_for_tissue():
    """The ink rule is what rejects ink on glass: switched off, the green-pen tile is 'tissue'."""
    params = TissueParams(exclude_pen=False, min_texture=0)
    result = segment_tissue(_tile("no-tissue-green-pen.png"), mpp=1.0, params=params)
    assert result.tissue_fraction > 0.5


def test_segment_tissue_otsu_threshold_is_clipped():
    """Otsu's threshold stays within [saturation_threshold, otsu_max_threshold]."""
    params = TissueParams(threshold_method="otsu", saturation_threshold=15, otsu_max_threshold=40)
    with open_slide(SLIDES / "OS-1-detail.ome.tif") as slide:
        thumb = slide.read_thumbnail(params.thumb_mpp)
    assert 15 <= segment_tissue(thumb, mpp=params.thumb_mpp, params=params).threshold <= 40


def test_filter_components_drops_small_and_fills_holes():
    """Pieces below the area limit vanish, holes below the hole limit are filled, others stay."""
    mask = np.zeros((60, 60), bool)
    mask[5:45, 5:45] = True  # big piece
    mask[10:13, 10:13] = False  # small hole (9 px): filled
    mask[20:35, 20:35] = False  # large hole (225 px): kept
    mask[50:53, 50:53] = True  # small piece (9 px): removed
    out, pieces = filter_components(mask, min_area_px=50, min_hole_px=50)
    assert out[11, 11]
    assert not out[27, 27]
    assert not out[51, 51]
    assert len(pieces) == 1
    assert len(pieces[0]) == 2


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"thumb_mpp": 0}, "curate.tissue.thumb_mpp"),
        ({"threshold_method": "kmeans"}, "curate.tissue.threshold_method"),
        ({"min_hole_area_um2": -1}, "curate.tissue.min_hole_area_um2"),
    ],
)
def test_tissue_params_reject_bad_values(section, key):
    """Invalid config values raise ConfigError naming the config key."""
    with pytest.raises(ConfigError, match=key):
        build_params(TissueParams, section, "curate.tissue")


def test_filter_components_leaves_its_input_and_returns_bool(svs_path: Path) -> None:
    """Contours are traced on a view of the caller's mask: it is not changed, the result is bool."""
    with open_slide(svs_path) as slide:
        thumb = slide.read_thumbnail(4.0)
    mask = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[..., 1] > 20
    before = mask.copy()
    kept, pieces = filter_components(mask, min_area_px=50, min_hole_px=20)
    np.testing.assert_array_equal(mask, before)
    assert kept.dtype == bool
    assert pieces
    assert kept.any()
