"""Snakemake script for rule embed_slide."""

from unipipe.embed.slides import run_embed_wsi
from unipipe.evaluate.slide_manifest import task_manifest_path
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_embed_wsi(
        sm.input.slide,
        sm.input.tiles,
        slide_id=sm.wildcards.wsi,
        # Errors name the task's slides.csv, where this WSI's row is.
        manifest_csv=task_manifest_path(
            sm.config["tasks"],
            sm.wildcards.task,
            data_root=sm.config["evaluate"].get("data_root", "."),
        ),
        mpp=sm.params.mpp,
        encoder_name=sm.wildcards.encoder,
        encoder_spec=sm.params.encoder_spec,
        out_h5=sm.output.bag,
        sidecar=sm.output.sidecar,
        batch_size=sm.params.embed["batch_size"],
        img_size=sm.params.embed["img_size"],
    )
