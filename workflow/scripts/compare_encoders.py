"""Snakemake script for rule compare_encoders."""

from unipipe.logs import stage_logging
from unipipe.report import run_compare_encoders
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_compare_encoders(
        sm.input.a,
        sm.input.b,
        sm.output[0],
        task=sm.wildcards.task,
        protocol=sm.wildcards.protocol,
        encoder_a=sm.wildcards.a,
        encoder_b=sm.wildcards.b,
        metric=sm.params.metric,
        n_permutations=sm.params.n_permutations,
        seed=sm.params.seed,
    )
