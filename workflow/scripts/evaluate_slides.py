"""Snakemake script for rule evaluate_slides."""

from unipipe.evaluate.slides import run_evaluate_slides
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_evaluate_slides(
        sm.input.manifest,
        task=sm.params.task,
        params=sm.params.protocol_params,
        seed=sm.params.seed,
        metrics_json=sm.output.metrics,
        predictions_parquet=sm.output.predictions,
        sidecar=sm.output.sidecar,
        encoder_name=sm.wildcards.encoder,
        protocol=sm.wildcards.protocol,
        heatmaps_parquet=sm.output.heatmaps,
    )
