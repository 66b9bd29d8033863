"""The static HTML report page (inline CSS, no scripts), built from already-copied assets."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from unipipe.report.summary import SUMMARY_METRICS

logger = logging.getLogger(__name__)

__all__ = ["SlideAssets", "render_page"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
.slide { margin: 1em 0 2em; } .row { display: flex; gap: 1em; flex-wrap: wrap; }
figure { margin: 0; } figure img { max-height: 260px; max-width: 380px; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; } .missing { color: #a33; font-style: italic; }
table { border-collapse: collapse; font-size: .85em; } th, td { padding: .3em .6em; }
th { background: #f0f0f0; text-align: left; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .uni { color: #666; }
"""


@dataclass(frozen=True, kw_only=True)
class SlideAssets:
    """One slide's report images, as paths relative to the report folder (None if absent).

    Attributes:
        slide_id: the slide's id (its results/curate/{slide} folder name).
        images: (caption, relative path or None) in display order.
        verdict: QC verdict from qc.json (pass / warn / fail) when available.
    """

    slide_id: str
    images: tuple[tuple[str, str | None], ...]
    verdict: str | None = None


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _count(value: object) -> str:
    """A whole number; pandas turns an int column with a gap (slide rows' img_size) to float."""
    text = _fmt(value)
    return str(int(value)) if text and isinstance(value, float) else text


def _figure(caption: str, src: str | None) -> str:
    if src is None:
        return f'<figure><p class="missing">{html.escape(caption)}: not produced</p></figure>'
    s = html.escape(src, quote=True)
    return (f'<figure><a href="{s}"><img src="{s}" alt="{html.escape(caption)}"></a>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _curation(slides: Sequence[SlideAssets]) -> str:
    if not slides:
        return '<p class="missing">No curated slides given.</p>'
    parts = []
    for slide in slides:
        verdict = f" - QC {html.escape(slide.verdict)}" if slide.verdict else ""
        figures = "".join(_figure(c, s) for c, s in slide.images)
        parts.append(f'<div class="slide"><h3>{html.escape(slide.slide_id)}{verdict}</h3>'
                     f'<div class="row">{figures}</div></div>')  # fmt: skip
    return "\n".join(parts)


def _metric_table(summary: pd.DataFrame) -> str:
    if summary.empty:
        return '<p class="missing">No evaluation results given.</p>'
    metrics = [m for m in SUMMARY_METRICS if m in summary.columns]
    # The cohort column appears only when some run reports per-cohort test sets.
    keys = ["encoder", "task", "protocol"]
    if "cohort" in summary.columns and summary["cohort"].notna().any():
        keys.append("cohort")
    head = [*keys, "img px", "n train", "n test"]
    head += [f"{m} [95% CI] <span class='uni'>(UNI)</span>" for m in metrics]
    rows = []
    for rec in summary.to_dict("records"):
        cells = [f"<td>{_fmt(rec.get(k))}</td>" for k in keys]
        cells += [f'<td class="num">{_count(rec.get(k))}</td>'
                  for k in ("img_size", "n_train", "n_test")]  # fmt: skip
        for m in metrics:
            value, lo, hi, uni = (rec.get(m), rec.get(f"{m}_ci_low"), rec.get(f"{m}_ci_high"),
                                  rec.get(f"uni_{m}"))  # fmt: skip
            text = _fmt(value)
            if text and _fmt(lo):
                text += f" [{_fmt(lo)}, {_fmt(hi)}]"
            if _fmt(uni):
                text += f' <span class="uni">({_fmt(uni)})</span>'
            cells.append(f'<td class="num">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f"<table><tr>{header}</tr>\n" + "\n".join(rows) + "</table>"


def _heatmaps(groups: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> str:
    if not groups:
        return ""
    parts = [
        "<h3 id='heatmaps'>Heatmaps</h3><p>Per-patch scores over each test slide's "
        "thumbnail (ABMIL attention or MI-SimpleShot similarity), rescaled to the range "
        "of that slide: red marks the patches that weigh most in its prediction.</p>"
    ]
    for title, images in groups:
        figures = "".join(_figure(caption, src) for caption, src in images)
        parts.append(f"<h4>{html.escape(title)}</h4><div class='row'>{figures}</div>")
    return "\n".join(parts)


def _comparisons(table: pd.DataFrame | None) -> str:
    if table is None or table.empty:
        return ""
    head = ["task", "protocol", "encoder A", "encoder B", "metric", "A - B", "p-value", "n test",
            "permutations"]  # fmt: skip
    rows = []
    for rec in table.to_dict("records"):
        cells = [f"<td>{_fmt(rec.get(k))}</td>"
                 for k in ("task", "protocol", "encoder_a", "encoder_b", "metric")]  # fmt: skip
        cells.append(f'<td class="num">{rec["difference"]:+.3f}</td>')
        cells += [f'<td class="num">{_fmt(rec.get(k))}</td>'
                  for k in ("p_value", "n_test", "n_permutations")]  # fmt: skip
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return ("<h3 id='comparisons'>Encoder comparisons</h3><p>Two-sided paired permutation test "
            "on the shared test set: each permutation swaps the two encoders' outputs on a "
            "random half of the samples. The difference is metric(A) - metric(B); p is "
            "(1 + extreme permutations) / (1 + permutations), so it is never below "
            "1 / (1 + permutations).</p>"
            f"<table><tr>{header}</tr>\n" + "\n".join(rows) + "</table>")  # fmt: skip


def _skipped(skipped: Sequence[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{html.escape(r)}</td></tr>"
                   for t, r in skipped)  # fmt: skip
    return ("<h2 id='skipped'>Skipped tasks</h2><table><tr><th>task</th><th>reason</th></tr>"
            f"{rows}</table>")  # fmt: skip


def render_page(
    *,
    slides: Sequence[SlideAssets],
    loss_png: str | None,
    summary: pd.DataFrame,
    skipped: Sequence[tuple[str, str]] = (),
    fewshot: Sequence[tuple[str, str]] = (),
    heatmaps: Sequence[tuple[str, Sequence[tuple[str, str]]]] = (),
    comparisons: pd.DataFrame | None = None,
) -> str:
    """The whole index.html text; every src/href is a path relative to the report folder.

    Args:
        slides: curation images per slide.
        loss_png: relative path of the training curve, or None when no metrics.csv was given.
        summary: the summary table (``summary_table``).
        skipped: (task id, reason) of tasks whose data or adapter is missing.
        fewshot: (task id, relative png path) of few-shot curve figures.
        heatmaps: (group title, [(slide caption, relative jpg path)]) per evaluation run.
        comparisons: one row per encoder pair (``comparison_table``), or None.
    """
    curves = "".join(_figure(f"few-shot curve, {task}", src) for task, src in fewshot)
    curves = f'<h3>Few-shot</h3><div class="row">{curves}</div>' if fewshot else ""
    training = (_figure("training loss", loss_png) if loss_png
                else '<p class="missing">No training metrics given.</p>')  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>unipipe report</title>
<style>{_CSS}</style></head><body>
<h1>unipipe report</h1>
<p><a href="#curation">Curation</a> | <a href="#training">Pretraining</a> |
<a href="#evaluation">Evaluation</a> | <a href="summary.csv">summary.csv</a></p>
<h2 id="curation">Curation</h2>
{_curation(slides)}
<h2 id="training">Pretraining</h2>
{training}
<h2 id="evaluation">Evaluation</h2>
<p>Point estimate, 95% bootstrap interval over test-set resamples, and UNI's published
figure in parentheses where one exists (arXiv 2308.15474). Few-shot rows differ: the mean
over episodes at the largest K per class that the training set allows, with the 2.5-97.5%
spread over episodes; the whole curve is plotted below.</p>
{_metric_table(summary)}
{curves}
{_heatmaps(heatmaps)}
{_comparisons(comparisons)}
{_skipped(skipped)}
</body></html>
"""
