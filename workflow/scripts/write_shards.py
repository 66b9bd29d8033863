"""Snakemake script for rule write_shards."""

from pathlib import Path

from unipipe.config import build_params
from unipipe.curate.shards import ShardParams, run_write_shards
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_write_shards(
        sm.params.slide_path,
        sm.input.selected,
        slide_id=sm.wildcards.slide,
        mpp=sm.params.mpp,
        params=build_params(ShardParams, sm.params.shards, "curate.shards"),
        shard_zarr=Path(sm.output.shard).parent,  # output.shard is the store's zarr.json
        sidecar=sm.output.sidecar,
        tissue_type=sm.params.tissue_type,
    )
