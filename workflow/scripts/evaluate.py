"""Snakemake script for rule evaluate."""

from unipipe.evaluate import run_evaluate
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_evaluate(
        sm.input.features,
        task=sm.params.task,
        protocol=sm.wildcards.protocol,
        params=sm.params.protocol_params,
        seed=sm.params.seed,
        metrics_json=sm.output.metrics,
        predictions_parquet=sm.output.predictions,
        sidecar=sm.output.sidecar,
    )
