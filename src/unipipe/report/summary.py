"""The metric summary table: one row per encoder x task x protocol (x cohort), with UNI's figure."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

import pandas as pd

from unipipe.evaluate.tasks import Task

logger = logging.getLogger(__name__)

__all__ = ["KEY_COLUMNS", "SUMMARY_METRICS", "summary_table", "uni_figure"]

# Metric columns of summary.csv, in order; each also has _ci_low, _ci_high and uni_ columns.
# ``dice``/``iou`` are the segmentation probe's (no interval: pooled over every test pixel).
SUMMARY_METRICS = (
    "balanced_accuracy", "weighted_f1", "auroc", "qwk", "top1", "top3", "top5",
    "acc_at_1", "acc_at_3", "acc_at_5", "mvacc_at_5", "dice", "iou",
)  # fmt: skip
# Identifying columns of summary.csv; ``cohort`` is empty on the row of the whole test set.
KEY_COLUMNS = ("encoder", "task", "protocol", "img_size", "cohort", "n_train", "n_test")


def uni_figure(
    task: Task | None,
    protocol: str,
    metric: str,
    *,
    img_size: int | None = None,
    cohort: str | None = None,
    pooled: bool = False,
) -> float | None:
    """UNI's published value for (task, protocol, metric) at ``img_size``, for one cohort.

    A figure without ``img_size`` stands for 224 px. With ``cohort`` only a figure of that
    cohort matches. Without it, a figure that names no cohort is preferred; failing that
    the first one listed (the in-domain test set) is used, unless ``pooled`` says the row
    is the pooled test set of a run that also reports its cohorts (no figure is pooled).
    """
    if task is None:
        return None
    same = [fig for fig in task.uni if fig.protocol == protocol and fig.metric == metric
            and (fig.img_size or 224) == (img_size or 224)]  # fmt: skip
    if cohort is not None:
        same = [fig for fig in same if fig.cohort == cohort]
    else:
        same = [fig for fig in same if fig.cohort is None] or ([] if pooled else same)
    return same[0].value if same else None


def _row(m: dict, task: Task | None, scores: dict, *, cohort: str | None, pooled: bool) -> dict:
    """One summary row: the run's keys, then each metric with its interval and UNI figure."""
    row = {k: m.get(k) for k in KEY_COLUMNS}
    row["cohort"] = cohort
    row["n_test"] = scores.get("n_test", m.get("n_test"))
    for name in SUMMARY_METRICS:
        if name not in scores:
            continue
        row[name] = scores[name]
        row[f"{name}_ci_low"] = scores.get(f"{name}_ci_low")
        row[f"{name}_ci_high"] = scores.get(f"{name}_ci_high")
        row[f"uni_{name}"] = uni_figure(task, m.get("protocol"), name, img_size=m.get("img_size"),
                                        cohort=cohort, pooled=pooled)  # fmt: skip
    return row


def summary_table(
    metrics_jsons: Iterable[str | os.PathLike[str]], tasks: Sequence[Task] = ()
) -> pd.DataFrame:
    """Read metrics.json files into a table sorted by (encoder, task, protocol, img_size, cohort).

    Columns: ``KEY_COLUMNS``, then for each metric of ``SUMMARY_METRICS`` present in any file:
    value, ``_ci_low``, ``_ci_high`` and ``uni_``. A metrics.json with ``by_cohort`` (slide
    tasks tested on several cohorts) gives its pooled row and one row per cohort after it.
    """
    by_id = {t.id: t for t in tasks}
    rows = []
    for path in metrics_jsons:
        with open(path) as fh:
            m = json.load(fh)
        task = by_id.get(m.get("task"))
        cohorts = m.get("by_cohort") or {}
        rows.append(_row(m, task, m, cohort=None, pooled=bool(cohorts)))
        rows += [_row(m, task, scores, cohort=str(name), pooled=False)
                 for name, scores in sorted(cohorts.items())]  # fmt: skip
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=list(KEY_COLUMNS))
    keys = ["encoder", "task", "protocol", "img_size", "cohort"]
    table = table.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)
    logger.info("summary: %s rows from %s encoders", len(table), table["encoder"].nunique())
    return table
