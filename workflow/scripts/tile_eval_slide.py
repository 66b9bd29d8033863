"""Snakemake script for rule tile_eval_slide."""

from pathlib import Path

from unipipe.config import build_params
from unipipe.curate.artefacts import ArtefactParams
from unipipe.curate.tiling import TilingParams
from unipipe.curate.tissue import TissueParams
from unipipe.embed.tiles import run_tile_wsi
from unipipe.evaluate.slide_manifest import task_manifest_path
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_tile_wsi(
        sm.input.slide,
        slide_id=sm.wildcards.wsi,
        # Errors name the task's slides.csv, where this WSI's row is.
        manifest_csv=task_manifest_path(
            sm.config["tasks"],
            sm.wildcards.task,
            data_root=sm.config["evaluate"].get("data_root", "."),
        ),
        mpp=sm.params.mpp,
        tissue=build_params(TissueParams, sm.params.tissue, "curate.tissue"),
        artefacts=build_params(ArtefactParams, sm.params.artefacts, "curate.artefacts"),
        tiling=build_params(TilingParams, sm.params.tiling, "curate.tiling"),
        out_dir=Path(sm.output.tiles).parent,
    )
