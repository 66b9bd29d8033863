"""Snakemake script for rule report."""

from unipipe.logs import stage_logging
from unipipe.report import run_report
from unipipe.runtime import limit_threads

sm = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(sm.log[0]):
    limit_threads(sm.threads)
    run_report(
        metrics_jsons=list(sm.input.metrics),
        compare_jsons=list(sm.input.compare),
        curate_dirs=list(sm.params.curate_dirs),
        train_metrics_csv=sm.input.train_metrics,
        out_dir=sm.params.out_dir,
        tasks_yaml=sm.input.tasks,
        data_root=sm.params.data_root,
    )
