"""Shared fixtures: paths to the real data bundled in resources/."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "resources"
SLIDES = RESOURCES / "slides"


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def resources() -> Path:
    """resources/: the real slides, tiles and QC images."""
    return RESOURCES


@pytest.fixture(scope="session")
def svs_path() -> Path:
    """The Aperio slide CMU-1-Small-Region (2220x2967, 0.499 mpp, one level)."""
    return SLIDES / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def ome_tiff_path() -> Path:
    """OS-1-detail, an OME-TIFF H&E crop at 0.2271 mpp that OpenSlide refuses."""
    return SLIDES / "OS-1-detail.ome.tif"


@pytest.fixture(scope="session")
def dicom_path() -> Path:
    """A file of the 12-level DICOM version of CMU-1-Small-Region."""
    return SLIDES / "CMU-1-Small-Region-dicom" / "level-0-frames-0-30.dcm"


@pytest.fixture(scope="session")
def tcga_zip() -> Path:
    """UNI's TCGA LUAD/LUSC tiles, shipped unmodified as a zip."""
    return RESOURCES / "tiles" / "tcga_luadlusc.zip"
