"""The final report: summary.csv and a static index.html with curation, training and metrics."""

from unipipe.report.compare import comparison_table, run_compare_encoders
from unipipe.report.heatmaps import render_slide_heatmaps
from unipipe.report.run import run_report

__all__ = ["comparison_table", "render_slide_heatmaps", "run_compare_encoders", "run_report"]
