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
        bags=sm.params.bags,
    )
    if hasattr(sm.output, "images"):
        # Imported here: without the report package the rule declares no images.
        from unipipe.report.heatmaps import render_slide_heatmaps

        slides = sm.params.heatmap_slides
        render_slide_heatmaps(
            sm.output.heatmaps,
            {slide_id: path for slide_id, (path, _) in slides.items()},
            sm.output.images,
            mpp={slide_id: mpp for slide_id, (_, mpp) in slides.items() if mpp},
        )
