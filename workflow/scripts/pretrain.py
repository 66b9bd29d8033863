"""Snakemake script for rule pretrain."""

from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads
from unipipe.ssl import PretrainConfig, run_pretrain

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_pretrain(
        sm.input.index,
        config=PretrainConfig.from_yaml(sm.input.config, sm.params.overrides),
        out_dir=sm.params.out_dir,
        encoder_safetensors=sm.output.weights,
        encoder_json=sm.output.encoder,
        metrics_csv=sm.output.metrics,
        sidecar=sm.output.sidecar,
        seed=sm.params.seed,
    )
