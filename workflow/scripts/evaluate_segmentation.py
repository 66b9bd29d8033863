"""Snakemake script for rule evaluate_segmentation."""

from unipipe.evaluate.segmentation import run_segmentation_probe
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_segmentation_probe(
        sm.params.task,
        encoder_name=sm.wildcards.encoder,
        encoder_spec=sm.params.encoder_spec,
        params=sm.params.protocol_params,
        seed=sm.params.seed,
        metrics_json=sm.output.metrics,
        sidecar=sm.output.sidecar,
    )
