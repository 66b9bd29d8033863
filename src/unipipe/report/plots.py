"""Training-curve figure for the report, drawn with matplotlib's Agg backend."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from unipipe.errors import ConfigError  # noqa: E402
from unipipe.provenance import atomic_path  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["LOSS_COLUMNS", "plot_fewshot_curves", "plot_training_curve"]

# The headline loss column, first one present wins (unipipe.ssl writes `total`).
LOSS_COLUMNS = ("loss", "total", "train/loss", "train_loss")
# Loss components drawn thinner under the headline when present.
_COMPONENTS = ("dino", "ibot", "koleo")


def plot_training_curve(
    metrics_csv: str | os.PathLike[str], out_png: str | os.PathLike[str]
) -> None:
    """Draw loss (and its components) against step, and lr below when logged.

    Args:
        metrics_csv: one row per logged step with a ``step`` column and a loss column
            (``LOSS_COLUMNS``); other columns are ignored unless they are loss components
            (``dino``, ``ibot``, ``koleo``, ``*_loss``) or ``lr``. Blank cells are skipped.
        out_png: the figure; written without a timestamp so reruns are byte-identical.
    """
    table = pd.read_csv(metrics_csv)
    loss_col = next((c for c in LOSS_COLUMNS if c in table.columns), None)
    if "step" not in table.columns or loss_col is None:
        raise ConfigError(
            f"{os.fspath(metrics_csv)}: needs a `step` column and one of {LOSS_COLUMNS}; "
            f"has {list(table.columns)}"
        )
    parts = [
        c for c in table.columns if c in _COMPONENTS or (c.endswith("_loss") and c != loss_col)
    ]
    has_lr = "lr" in table.columns and table["lr"].notna().any()

    fig, axes = plt.subplots(2 if has_lr else 1, 1, figsize=(6, 4.5 if has_lr else 3.2),
                             sharex=True, squeeze=False)  # fmt: skip
    ax = axes[0, 0]
    for col in [loss_col, *parts]:
        series = table[["step", col]].apply(pd.to_numeric, errors="coerce").dropna()
        ax.plot(series["step"], series[col], lw=2.0 if col == loss_col else 0.8, label=col)
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if has_lr:
        lr = table[["step", "lr"]].apply(pd.to_numeric, errors="coerce").dropna()
        axes[1, 0].plot(lr["step"], lr["lr"], color="grey")
        axes[1, 0].set_ylabel("lr")
        axes[1, 0].grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    logger.info("training curve from %s rows of %s", len(table), metrics_csv)


def plot_fewshot_curves(
    records: Sequence[Mapping[str, Any]], out_png: str | os.PathLike[str], *,
    metric: str = "balanced_accuracy",
) -> None:  # fmt: skip
    """Few-shot curves of one task: ``metric`` mean against K (log2), one line per encoder.

    Args:
        records: metrics.json contents of protocol ``fewshot`` or ``abmil_fewshot``
            (``extra.curve``), all of one task and protocol.
        out_png: the figure, written without a timestamp.
        metric: which curve metric to draw; the band is the 2.5-97.5% episode range.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for rec in sorted(records, key=lambda r: str(r.get("encoder"))):
        curve = rec["extra"]["curve"]
        shots = sorted(curve, key=int)
        k = [int(s) for s in shots]
        mean = [curve[s][metric]["mean"] for s in shots]
        ax.plot(k, mean, marker="o", ms=3, label=str(rec.get("encoder")))
        ax.fill_between(k, [curve[s][metric]["q025"] for s in shots],
                        [curve[s][metric]["q975"] for s in shots], alpha=0.2)  # fmt: skip
    ax.set_xscale("log", base=2)
    slides = bool(records) and records[0].get("protocol") == "abmil_fewshot"
    ax.set_xlabel(f"labelled {'slides' if slides else 'ROIs'} per class (K)")
    ax.set_ylabel(metric)
    ax.set_title(str(records[0].get("task")) if records else "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
