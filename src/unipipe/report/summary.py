"""The metric summary table: one row per encoder x task x protocol, with UNI's figure."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

import pandas as pd

from unipipe.evaluate.tasks import Task

logger = logging.getLogger(__name__)

__all__ = ["SUMMARY_METRICS", "summary_table", "uni_figure"]

# Metric columns of summary.csv, in order; each also has _ci_low, _ci_high and uni_ columns.
SUMMARY_METRICS = (
    "balanced_accuracy", "weighted_f1", "auroc", "qwk", "top1", "top5",
    "acc_at_1", "acc_at_3", "acc_at_5", "mvacc_at_5",
)  # fmt: skip


def uni_figure(
    task: Task | None, protocol: str, metric: str, *, img_size: int | None = None
) -> float | None:
    """UNI's published value for (task, protocol, metric), primary cohort, at ``img_size``.

    With several cohorts the first one listed (the in-domain test set) is used; a figure
    without ``img_size`` stands for 224 px.
    """
    if task is None:
        return None
    for fig in task.uni:
        same_size = (fig.img_size or 224) == (img_size or 224)
        if fig.protocol == protocol and fig.metric == metric and same_size:
            return fig.value
    return None


def summary_table(
    metrics_jsons: Iterable[str | os.PathLike[str]], tasks: Sequence[Task] = ()
) -> pd.DataFrame:
    """Read metrics.json files into a table sorted by (encoder, task, protocol, img_size).

    Columns: encoder, task, protocol, img_size, n_train, n_test, then for each metric of
    ``SUMMARY_METRICS`` present in any file: value, ``_ci_low``, ``_ci_high`` and ``uni_``.
    """
    by_id = {t.id: t for t in tasks}
    rows = []
    for path in metrics_jsons:
        with open(path) as fh:
            m = json.load(fh)
        row = {k: m.get(k) for k in ("encoder", "task", "protocol", "img_size", "n_train",
                                      "n_test")}  # fmt: skip
        for name in SUMMARY_METRICS:
            if name not in m:
                continue
            row[name] = m[name]
            row[f"{name}_ci_low"] = m.get(f"{name}_ci_low")
            row[f"{name}_ci_high"] = m.get(f"{name}_ci_high")
            row[f"uni_{name}"] = uni_figure(
                by_id.get(m.get("task")), m.get("protocol"), name, img_size=m.get("img_size")
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=["encoder", "task", "protocol", "img_size", "n_train",
                                     "n_test"])  # fmt: skip
    keys = ["encoder", "task", "protocol", "img_size"]
    table = table.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)
    logger.info("summary: %s rows from %s encoders", len(table), table["encoder"].nunique())
    return table
