"""Snakemake script for rule render_heatmaps."""

from unipipe.logs import stage_logging
from unipipe.report.heatmaps import render_slide_heatmaps

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    render_slide_heatmaps(
        sm.input.heatmaps,
        {slide_id: path for slide_id, (path, _) in sm.params.slides.items()},
        sm.output.images,
        mpp={slide_id: mpp for slide_id, (_, mpp) in sm.params.slides.items() if mpp},
    )
