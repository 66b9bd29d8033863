"""The tissue tiles of a slide-task WSI: curation's tissue, artefact and tiling stages in one job."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from unipipe.curate.artefacts import ArtefactParams, run_detect_artefacts
from unipipe.curate.tiling import TilingParams, run_tile_slide
from unipipe.curate.tissue import TissueParams, run_segment_tissue
from unipipe.errors import SlideError
from unipipe.slide.messages import in_slide_task

logger = logging.getLogger(__name__)

__all__ = ["WSI_TILE_FILES", "run_tile_wsi"]

# What run_tile_wsi writes into its folder, by role; the names are curation's.
WSI_TILE_FILES = {
    "tissue": "tissue.png",
    "geojson": "tissue.geojson",
    "preview": "tissue_preview.jpg",
    "tissue_sidecar": "segment_tissue.json",
    "artefacts": "artefacts.png",
    "qc": "qc.json",
    "artefacts_preview": "artefacts_preview.jpg",
    "artefacts_sidecar": "detect_artefacts.json",
    "tiles": "tiles.parquet",
    "sidecar": "tile_slide.json",
}


def run_tile_wsi(
    slide_path: str | os.PathLike[str],
    *,
    slide_id: str,
    mpp: float | None,
    tissue: TissueParams,
    artefacts: ArtefactParams,
    tiling: TilingParams,
    out_dir: str | os.PathLike[str],
    manifest_csv: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Segment, QC and tile one WSI of a slide task, writing curation's files to ``out_dir``.

    Only the first tile spec of ``tiling`` is gridded (UNI embeds slides at 256 px, 0.5 µm/px);
    the keep rules (tissue, artefact and blur limits) are curation's. Every kept tile of
    tiles.parquet is embedded later, not a clustered selection.

    Args:
        slide_path: the WSI (a DICOM folder or any of its files also works).
        slide_id: the slide's id in the task's slides.csv.
        mpp: level-0 µm/px from slides.csv, overriding the file (None: the file's metadata).
        tissue: tissue segmentation parameters (config ``curate.tissue``).
        artefacts: artefact detector parameters (config ``curate.artefacts``).
        tiling: grid and keep rules (config ``curate.tiling``); specs after the first ignored.
        out_dir: folder of the outputs, named as in ``WSI_TILE_FILES``.
        manifest_csv: the task's slides.csv, named in the fix of a slide error.

    Returns:
        Role -> path of each file written.

    Raises:
        SlideError: the WSI cannot be opened or read; the message names the task's
            slides.csv (not config/slides.tsv) as where to fix or remove its row.
    """
    out = Path(out_dir)
    files = {role: out / name for role, name in WSI_TILE_FILES.items()}
    first = dataclasses.replace(tiling, specs=tiling.specs[:1])
    logger.info("tile_wsi %s at %s (first of %s specs)", slide_id, first.specs[0].name,
                len(tiling.specs))  # fmt: skip
    try:
        run_segment_tissue(slide_path, slide_id=slide_id, mpp=mpp, params=tissue,
                           mask_png=files["tissue"], geojson=files["geojson"],
                           preview_jpg=files["preview"], sidecar=files["tissue_sidecar"])  # fmt: skip
        run_detect_artefacts(slide_path, files["tissue"], slide_id=slide_id, mpp=mpp,
                             params=artefacts, mask_png=files["artefacts"], qc_json=files["qc"],
                             preview_jpg=files["artefacts_preview"],
                             sidecar=files["artefacts_sidecar"])  # fmt: skip
        run_tile_slide(slide_path, files["tissue"], files["artefacts"], slide_id=slide_id,
                       mpp=mpp, params=first, tiles_parquet=files["tiles"],
                       sidecar=files["sidecar"])  # fmt: skip
    except SlideError as err:
        raise in_slide_task(err, manifest_csv) from err
    return files
