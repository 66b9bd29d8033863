"""Snakemake script for rule select_patches."""

from unipipe.config import build_params
from unipipe.curate.selection import SelectionParams, run_select_patches
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_select_patches(
        sm.params.slide_path,
        sm.input.tiles,
        slide_id=sm.wildcards.slide,
        mpp=sm.params.mpp,
        params=build_params(SelectionParams, sm.params.selection, "curate.selection"),
        seed=sm.params.seed,
        selected_parquet=sm.output.selected,
        mosaic_jpg=sm.output.mosaic,
        sidecar=sm.output.sidecar,
    )
