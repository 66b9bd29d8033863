"""Snakemake script for rule segment_tissue."""

from unipipe.config import build_params
from unipipe.curate.tissue import TissueParams, run_segment_tissue
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_segment_tissue(
        sm.params.slide_path,
        slide_id=sm.wildcards.slide,
        mpp=sm.params.mpp,
        params=build_params(TissueParams, sm.params.tissue, "curate.tissue"),
        mask_png=sm.output.mask,
        geojson=sm.output.geojson,
        preview_jpg=sm.output.preview,
        sidecar=sm.output.sidecar,
    )
