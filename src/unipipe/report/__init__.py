"""The final report: summary.csv and a static index.html with curation, training and metrics.

The names below load their modules on first use: the workflow reads
``unipipe.report.compare`` when it parses the Snakefile, and matplotlib need not come with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unipipe.lazy import lazy_getattr

if TYPE_CHECKING:
    from unipipe.report.compare import comparison_table, run_compare_encoders
    from unipipe.report.heatmaps import render_slide_heatmaps
    from unipipe.report.run import run_report

_HOMES = {
    "comparison_table": "unipipe.report.compare",
    "run_compare_encoders": "unipipe.report.compare",
    "render_slide_heatmaps": "unipipe.report.heatmaps",
    "run_report": "unipipe.report.run",
}

__all__ = ["comparison_table", "render_slide_heatmaps", "run_compare_encoders", "run_report"]

__getattr__ = lazy_getattr(__name__, _HOMES)
