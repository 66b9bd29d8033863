"""Snakemake script for rule tile_slide."""

from unipipe.config import build_params
from unipipe.curate.tiling import TilingParams, run_tile_slide
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_tile_slide(
        sm.params.slide_path,
        sm.input.tissue,
        sm.input.artefacts,
        slide_id=sm.wildcards.slide,
        mpp=sm.params.mpp,
        params=build_params(TilingParams, sm.params.tiling, "curate.tiling"),
        tiles_parquet=sm.output.tiles,
        sidecar=sm.output.sidecar,
        feature_size_px=sm.params.feature_size_px,
    )
