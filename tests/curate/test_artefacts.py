"""Tests of the artefact registry, the class mask, qc.json and the verdict on real slides."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from unipipe.config import build_params
from unipipe.curate.artefact_stain import StainType
from unipipe.curate.artefact_verdict import VerdictParams, judge
from unipipe.curate.artefacts import (
    ARTEFACT_CLASSES,
    DETECTORS,
    ArtefactParams,
    classify,
    run_detect_artefacts,
)
from unipipe.curate.tiling import TilingParams
from unipipe.curate.tissue import TissueParams, run_segment_tissue
from unipipe.errors import ConfigError, SlideError
from unipipe.slide import open_slide

SLIDES = Path(__file__).resolve().parents[2] / "resources" / "slides"
TILES = Path(__file__).resolve().parents[2] / "resources" / "qc" / "tiles"
OUTPUTS = ("artefacts.png", "qc.json", "preview.jpg", "sidecar.json")


@pytest.fixture(scope="module")
def tissue_pngs(tmp_path_factory) -> dict[str, Path]:
    """Tissue masks of CMU-1-Small-Region and small_dicom, made once for the module."""
    out = tmp_path_factory.mktemp("tissue")
    masks = {}
    for name in ("CMU-1-Small-Region.svs", "small_dicom.dcm"):
        masks[name] = out / f"{name}.png"
        run_segment_tissue(
            SLIDES / name,
            slide_id=name,
            mpp=None,
            params=TissueParams(),
            mask_png=masks[name],
            geojson=out / f"{name}.geojson",
            preview_jpg=out / f"{name}.jpg",
            sidecar=out / f"{name}.json",
        )
    return masks


def _detect(name: str, tissue_png: Path, out: Path, params: ArtefactParams) -> dict[str, Path]:
    paths = {key: out / key for key in OUTPUTS}
    run_detect_artefacts(
        SLIDES / name,
        tissue_png,
        slide_id=name,
        mpp=None,
        params=params,
        mask_png=paths["artefacts.png"],
        qc_json=paths["qc.json"],
        preview_jpg=paths["preview.jpg"],
        sidecar=paths["sidecar.json"],
    )
    return paths


def test_artefact_classes_registry_codes():
    """Background is 0, clean tissue 1, and every detector has its own code >= 2."""
    assert ARTEFACT_CLASSES["background"] == 0
    assert ARTEFACT_CLASSES["tissue"] == 1
    codes = [d.code for d in DETECTORS.values()]
    assert len(set(codes)) == len(codes)
    assert min(codes) >= 2
    assert all(ARTEFACT_CLASSES[name] == d.code for name, d in DETECTORS.items())


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_stays_inside_tissue(name):
    """Each registered detector returns a bool mask of the grid's shape, False outside tissue."""
    rgb = cv2.cvtColor(cv2.imread(str(TILES / "no-tissue-red-pen.png")), cv2.COLOR_BGR2RGB)
    tissue = np.zeros(rgb.shape[:2], bool)
    tissue[:, : rgb.shape[1] // 2] = True
    detector = DETECTORS[name]
    group = getattr(ArtefactParams(), detector.params_field)
    found = detector.detect(rgb, tissue, mpp=1.0, params=group)
    assert found.shape == tissue.shape
    assert found.dtype == bool
    assert not found[~tissue].any()


def test_classify_first_detector_wins():
    """Pixels both ink and dark get the pen class, the first in priority order."""
    rgb = cv2.cvtColor(cv2.imread(str(TILES / "no-tissue-red-pen.png")), cv2.COLOR_BGR2RGB)
    tissue = np.ones(rgb.shape[:2], bool)
    classes = classify(rgb, tissue, mpp=1.0, params=ArtefactParams())
    fold_only = classify(rgb, tissue, mpp=1.0, params=ArtefactParams(detectors=("fold",)))
    both = (fold_only == ARTEFACT_CLASSES["fold"]) & (classes == ARTEFACT_CLASSES["pen"])
    assert both.any()
    assert set(np.unique(classes)) <= set(ARTEFACT_CLASSES.values())


def test_run_detect_artefacts_on_inked_dicom(tissue_pngs, tmp_path):
    """small_dicom's green/blue marker makes it 'warn' with a pen reason; mask on tissue grid."""
    paths = _detect("small_dicom.dcm", tissue_pngs["small_dicom.dcm"], tmp_path, ArtefactParams())
    classes = cv2.imread(str(paths["artefacts.png"]), cv2.IMREAD_UNCHANGED)
    tissue = cv2.imread(str(tissue_pngs["small_dicom.dcm"]), cv2.IMREAD_UNCHANGED)
    assert classes.shape == tissue.shape
    np.testing.assert_array_equal(classes > 0, tissue > 0)
    qc = json.loads(paths["qc.json"].read_text())
    assert 0.05 < qc["fractions"]["pen"] < 0.4
    assert sum(qc["fractions"].values()) + qc["clean_fraction"] == pytest.approx(1.0, abs=1e-5)
    assert qc["verdict"] == "warn"
    assert any(reason.startswith("pen covers") for reason in qc["reasons"])
    assert qc["grid_mpp"] == pytest.approx(TissueParams().thumb_mpp, rel=1e-3)
    assert json.loads(paths["sidecar.json"].read_text())["stage"] == "detect_artefacts"


def test_run_detect_artefacts_clean_slide_passes_and_reruns_identically(tissue_pngs, tmp_path):
    """CMU-1-Small-Region passes; a second run writes the same bytes."""
    name = "CMU-1-Small-Region.svs"
    first = _detect(name, tissue_pngs[name], tmp_path / "a", ArtefactParams())
    second = _detect(name, tissue_pngs[name], tmp_path / "b", ArtefactParams())
    qc = json.loads(first["qc.json"].read_text())
    assert qc["verdict"] == "pass"
    assert qc["fractions"]["pen"] < 0.01
    for key in OUTPUTS:
        assert first[key].read_bytes() == second[key].read_bytes(), key


def test_run_detect_artefacts_rejects_foreign_mask(tissue_pngs, tmp_path):
    """A tissue mask made for another slide is refused with a message naming both."""
    with pytest.raises(SlideError, match="rerun segment_tissue"):
        _detect("OS-1-detail.ome.tif", tissue_pngs["small_dicom.dcm"], tmp_path, ArtefactParams())


def test_artefact_params_from_nested_config():
    """Sub-sections of curate.artefacts become their dataclasses; unknown keys are named."""
    params = build_params(
        ArtefactParams,
        {
            "detectors": ["pen", "fold"],
            "pen": {"min_area_um2": 100.0},
            "verdict": {"warn_fraction": 0.1},
        },
        "curate.artefacts",
    )
    assert params.pen.min_area_um2 == 100.0
    assert params.verdict.warn_fraction == 0.1
    assert params.detectors == ("pen", "fold")
    with pytest.raises(ConfigError, match=r"curate\.artefacts\.fold.*smooth"):
        build_params(ArtefactParams, {"fold": {"smoth_um": 3}}, "curate.artefacts")
    with pytest.raises(ConfigError, match="registered"):
        build_params(ArtefactParams, {"detectors": ["bubbles"]}, "curate.artefacts")


@pytest.mark.parametrize(
    ("fractions", "tissue_mm2", "verdict"),
    [
        ({"pen": 0.01, "fold": 0.0}, 1.0, "pass"),
        ({"pen": 0.10, "fold": 0.0}, 1.0, "warn"),
        ({"pen": 0.60, "fold": 0.0}, 1.0, "fail"),
        ({"pen": 0.04, "fold": 0.04, "glass": 0.14}, 1.0, "warn"),
        ({"pen": 0.0}, 0.01, "fail"),
    ],
)
def test_judge_verdicts(fractions, tissue_mm2, verdict):
    """Per-class and total limits and the minimum tissue area decide the verdict."""
    got, reasons = judge(fractions, tissue_mm2, VerdictParams())
    assert got == verdict
    assert bool(reasons) == (verdict != "pass")


def test_grid_thumbnail_matches_mask_shape(tissue_pngs):
    """The thumbnail re-read on the mask's grid has exactly the mask's shape."""
    from unipipe.curate.artefacts import _read_grid_thumbnail

    mask = cv2.imread(str(tissue_pngs["CMU-1-Small-Region.svs"]), cv2.IMREAD_UNCHANGED)
    with open_slide(SLIDES / "CMU-1-Small-Region.svs") as slide:
        thumb, mpp = _read_grid_thumbnail(slide, mask.shape, "tissue.png")
    assert thumb.shape[:2] == mask.shape
    assert mpp == pytest.approx(TissueParams().thumb_mpp, rel=1e-2)


@pytest.mark.parametrize(
    ("name", "stain_type", "verdict", "stain_reasons"),
    [
        ("CMU-1-Small-Region.svs", "he", "pass", []),
        ("OS-1-detail.ome.tif", "he", "pass", []),
        ("OS-2-ndpi.ome.tif", "ihc", "warn", ["stain looks like IHC (DAB fraction 0.13 > 0.08)"]),
    ],
)
def test_run_detect_artefacts_stain_type(name, stain_type, verdict, stain_reasons, tmp_path):
    """The Ki67 IHC slide is flagged as IHC with its DAB fraction; the H&E slides are not."""
    run_segment_tissue(SLIDES / name, slide_id=name, mpp=None, params=TissueParams(),
                       mask_png=tmp_path / "tissue.png", geojson=tmp_path / "tissue.geojson",
                       preview_jpg=tmp_path / "tissue.jpg", sidecar=tmp_path / "tissue.json")  # fmt: skip
    paths = _detect(name, tmp_path / "tissue.png", tmp_path, ArtefactParams())
    qc = json.loads(paths["qc.json"].read_text())
    assert qc["stain"]["type"] == stain_type
    assert qc["verdict"] == verdict
    assert [r for r in qc["reasons"] if r.startswith("stain looks")] == stain_reasons
    # H&E: little DAB, eosin almost everywhere; the IHC slide: the reverse.
    he = stain_type == "he"
    assert (qc["stain"]["dab_fraction"] < 0.05) == he
    assert (qc["stain"]["eosin_fraction"] > 0.8) == he


@pytest.mark.parametrize(
    ("switch", "verdict"), [("ignore", "pass"), ("warn", "warn"), ("fail", "fail")]
)
def test_judge_non_he_stain_switch(switch, verdict):
    """verdict.non_he_stain decides what a non-H&E stain does to an otherwise clean slide."""
    stain = StainType("ihc", 0.13, 0.0, "stain looks like IHC (DAB fraction 0.13 > 0.08)")
    got, reasons = judge({"pen": 0.0}, 1.0, VerdictParams(non_he_stain=switch), stain=stain)
    assert got == verdict
    assert (stain.reason in reasons) == (switch != "ignore")
    assert judge({"pen": 0.0}, 1.0, VerdictParams(non_he_stain="fail"))[0] == "pass"
    with pytest.raises(ConfigError, match="non_he_stain"):
        VerdictParams(non_he_stain="exclude")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"verdict": {"class_warn_fraction": {"fodl": 0.1}}}, "verdict.class_warn_fraction"),
        ({"verdict": {"class_fail_fraction": {"glass": 0.6, "pne": 0.2}}}, "class_fail_fraction"),
    ],
)
def test_artefact_params_unknown_class_in_verdict_limits(section, key):
    """A misspelt class in a per-class verdict limit is refused, listing the classes."""
    with pytest.raises(ConfigError, match=key) as info:
        build_params(ArtefactParams, section, "curate.artefacts")
    assert "unknown artefact class" in str(info.value)
    assert all(name in str(info.value) for name in DETECTORS)


def test_tiling_params_unknown_class_in_max_class_fraction():
    """curate.tiling.max_class_fraction keyed by a misspelt class is refused at build time."""
    with pytest.raises(ConfigError, match=r"max_class_fraction names unknown .*\['pne'\]"):
        build_params(TilingParams, {"max_class_fraction": {"pne": 0.0}}, "curate.tiling")
    assert build_params(TilingParams, {"max_class_fraction": {"pen": 0.0}}, "curate.tiling")
