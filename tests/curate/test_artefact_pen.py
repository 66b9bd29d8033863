"""Tests of the pen-ink detector against HistoQC's ground truth and on real tiles and slides."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from unipipe.config import build_params
from unipipe.curate.artefact_pen import PenParams, detect_pen, pen_colour_masks
from unipipe.errors import ConfigError
from unipipe.slide import open_slide

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
QC = RESOURCES / "qc"

# HistoQC's 1k thumbnails show whole slides ~1000 px wide: about 16 µm/px.
GROUND_TRUTH_MPP = 16.0


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize(("colour", "min_iou"), [("green", 0.88), ("red", 0.72), ("black", 0.95)])
def test_pen_colour_iou_against_histoqc_masks(colour, min_iou):
    """Each colour's mask overlaps HistoQC's hand-made pen mask (IoU 0.92 / 0.77 / 0.97 now)."""
    image = _rgb(QC / "pen" / f"pen_{colour}.png")
    truth = cv2.imread(str(QC / "pen" / f"pen_{colour}_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    found = pen_colour_masks(image, mpp=GROUND_TRUTH_MPP, params=PenParams())[colour]
    assert _iou(found, truth) >= min_iou


@pytest.mark.parametrize(
    ("name", "colour", "min_fraction"),
    [
        ("no-tissue-green-pen.png", "green", 0.5),
        ("medium-nuclei-score-green-pen-level1.png", "green", 0.2),
        ("no-tissue-red-pen.png", "red", 0.3),
        ("high-nuclei-score-red-pen-level1.png", "red", 0.03),
        ("very-low-nuclei-score-red-pen-level1.png", "red", 0.1),
    ],
)
def test_pen_tiles_are_flagged(name, colour, min_fraction):
    """Histolab's pen tiles show their ink colour over at least the expected area."""
    masks = pen_colour_masks(_rgb(QC / "tiles" / name), mpp=1.0, params=PenParams())
    assert masks[colour].mean() >= min_fraction


@pytest.mark.parametrize(
    "name",
    [
        "tissue-level0-4302-10273-4814-10785.png",
        "medium-nuclei-score-level1-2.png",
        "almost-white-2.png",
        "no-tissue-line.png",
    ],
)
def test_clean_tiles_have_no_pen(name):
    """Clean tissue, glass and a scratch line carry no ink."""
    assert detect_pen(_rgb(QC / "tiles" / name), mpp=1.0, params=PenParams()).mean() < 0.005


def test_blue_pen_on_dicom_slide_but_not_ihc_nuclei():
    """Blue marker on small_dicom is found; blue haematoxylin nuclei of the Ki67 slide are not."""
    with open_slide(RESOURCES / "slides" / "small_dicom.dcm") as slide:
        dicom = slide.read_thumbnail(8.0)
    with open_slide(RESOURCES / "slides" / "OS-2-ndpi.ome.tif") as slide:
        ihc = slide.read_thumbnail(2.0)
    assert pen_colour_masks(dicom, mpp=8.0, params=PenParams())["blue"].mean() > 0.005
    assert detect_pen(ihc, mpp=2.0, params=PenParams()).mean() < 0.001


def test_pen_params_reject_unknown_colour():
    """An unknown ink colour raises ConfigError naming the key and the choices."""
    with pytest.raises(ConfigError, match=r"curate\.artefacts\.pen\.colours.*purple"):
        build_params(PenParams, {"colours": ["green", "purple"]}, "curate.artefacts.pen")
