"""Snakemake script for rule embed_rois."""

from unipipe.embed import run_embed_rois
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_embed_rois(
        sm.params.dataset,
        encoder_name=sm.wildcards.encoder,
        encoder_spec=sm.params.encoder_spec,
        out_h5=sm.output.features,
        sidecar=sm.output.sidecar,
        batch_size=sm.params.embed["batch_size"],
        num_workers=sm.params.embed["num_workers"],
        img_size=sm.params.embed["img_size"],
    )
