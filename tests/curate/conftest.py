"""Fixtures shared by the curation tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from unipipe.curate.artefacts import ArtefactParams, run_detect_artefacts
from unipipe.curate.tissue import TissueParams, run_segment_tissue


def _segment_and_detect(slide_path: Path, out: Path) -> tuple[Path, Path]:
    """Run the real segment_tissue and detect_artefacts stages of a slide into ``out``."""
    run_segment_tissue(slide_path, slide_id="s1", mpp=None, params=TissueParams(),
                       mask_png=out / "tissue.png", geojson=out / "tissue.geojson",
                       preview_jpg=out / "tissue.jpg", sidecar=out / "tissue.json")  # fmt: skip
    run_detect_artefacts(slide_path, out / "tissue.png", slide_id="s1", mpp=None,
                         params=ArtefactParams(), mask_png=out / "artefacts.png",
                         qc_json=out / "qc.json", preview_jpg=out / "artefacts.jpg",
                         sidecar=out / "artefacts.json")  # fmt: skip
    return out / "tissue.png", out / "artefacts.png"


@pytest.fixture(scope="session")
def segment_and_detect() -> Callable[[Path, Path], tuple[Path, Path]]:
    """(slide, folder) -> (tissue.png, artefacts.png) written there by the real stages."""
    return _segment_and_detect
