"""Snakemake script for rule list_slide_bags."""

from unipipe.evaluate.slide_manifest import write_bag_manifest
from unipipe.logs import stage_logging

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    write_bag_manifest(
        sm.input.manifest,
        sm.output.manifest,
        encoder=sm.wildcards.encoder,
        bags=sm.params.bags,
    )
