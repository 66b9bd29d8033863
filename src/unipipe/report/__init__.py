"""The final report: summary.csv and a static index.html with curation, training and metrics."""

from unipipe.report.run import run_report

__all__ = ["run_report"]
