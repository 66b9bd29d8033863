"""Snakemake script for rule build_dataset."""

from pathlib import Path

from unipipe.curate.dataset import run_build_dataset
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_build_dataset(
        [Path(p).parent for p in sm.input.shards],  # each input is a store's zarr.json
        index_parquet=sm.output.index,
        summary_png=sm.output.summary,
        sidecar=sm.output.sidecar,
    )
