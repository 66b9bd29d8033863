"""Snakemake script for rule detect_artefacts."""

from unipipe.config import build_params
from unipipe.curate.artefacts import ArtefactParams, run_detect_artefacts
from unipipe.logs import stage_logging
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_detect_artefacts(
        sm.params.slide_path,
        sm.input.tissue,
        slide_id=sm.wildcards.slide,
        mpp=sm.params.mpp,
        params=build_params(ArtefactParams, sm.params.artefacts, "curate.artefacts"),
        mask_png=sm.output.mask,
        qc_json=sm.output.qc,
        preview_jpg=sm.output.preview,
        sidecar=sm.output.sidecar,
    )
