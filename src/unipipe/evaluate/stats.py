"""Comparing two encoders on the same test set: the two-sided paired permutation test."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from unipipe.errors import ConfigError
from unipipe.evaluate.metrics import METRICS, MetricInput

logger = logging.getLogger(__name__)

__all__ = ["PermutationResult", "compare_predictions", "paired_permutation_test"]


@dataclass(frozen=True, kw_only=True)
class PermutationResult:
    """Outcome of a paired permutation test.

    Attributes:
        metric: the metric compared.
        difference: metric(A) - metric(B) on the real pairing.
        p_value: two-sided, (1 + #|d_perm| >= |d_obs|) / (1 + n_permutations).
        n_permutations: random relabellings drawn.
    """

    metric: str
    difference: float
    p_value: float
    n_permutations: int


def paired_permutation_test(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    *,
    probs_a: np.ndarray | None = None,
    probs_b: np.ndarray | None = None,
    metric: str = "balanced_accuracy",
    n_permutations: int = 1000,
    seed: int = 0,
) -> PermutationResult:
    """Test H0 "A and B are exchangeable" by swapping their outputs per test sample.

    Each permutation swaps A's and B's prediction (and scores) on a random half of the
    samples (a fair coin per sample) and recomputes metric(A') - metric(B').

    Args:
        y_true: (N,) true labels of the shared test set.
        pred_a: (N,) predictions of encoder A (same sample order as B).
        pred_b: (N,) predictions of encoder B.
        probs_a: (N, K) class scores of A, needed for score-based metrics (AUROC).
        probs_b: (N, K) class scores of B.
        metric: a key of ``METRICS``.
        n_permutations: random swaps drawn (seeded).
        seed: numpy PCG64 seed.
    """
    if metric not in METRICS:
        raise ConfigError(f"evaluate.compare.metric {metric!r}; known: {sorted(METRICS)}")
    if not (len(y_true) == len(pred_a) == len(pred_b)):
        raise ConfigError("paired test needs the same test samples for both encoders")
    k = int(max(y_true.max(), pred_a.max(), pred_b.max())) + 1
    pa = probs_a if probs_a is not None else np.eye(k)[pred_a]
    pb = probs_b if probs_b is not None else np.eye(k)[pred_b]
    fn = METRICS[metric]

    def diff(swap: np.ndarray) -> float:
        a_pred, b_pred = np.where(swap, pred_b, pred_a), np.where(swap, pred_a, pred_b)
        a_prob, b_prob = np.where(swap[:, None], pb, pa), np.where(swap[:, None], pa, pb)
        return fn(MetricInput(y_true=y_true, y_pred=a_pred, probs=a_prob)) - fn(
            MetricInput(y_true=y_true, y_pred=b_pred, probs=b_prob)
        )

    observed = diff(np.zeros(len(y_true), dtype=bool))
    rng = np.random.default_rng(seed)
    null = np.array([diff(rng.random(len(y_true)) < 0.5) for _ in range(n_permutations)])
    extreme = int(np.sum(np.abs(null) >= abs(observed) - 1e-12))
    p_value = (1 + extreme) / (1 + n_permutations)
    logger.info("permutation test on %s: diff %.4f, p %.4f", metric, observed, p_value)
    return PermutationResult(
        metric=metric, difference=float(observed), p_value=p_value, n_permutations=n_permutations
    )


def compare_predictions(
    parquet_a: str | os.PathLike[str],
    parquet_b: str | os.PathLike[str],
    *,
    metric: str = "balanced_accuracy",
    n_permutations: int = 1000,
    seed: int = 0,
) -> PermutationResult:
    """Paired permutation test of two predictions.parquet files of the same task.

    Rows are matched on ``path`` (ROI tasks) or ``slide_id`` (slide tasks); both files must
    hold the same test samples with the same labels.
    """
    a, b = pd.read_parquet(parquet_a), pd.read_parquet(parquet_b)
    key = "path" if "path" in a.columns else "slide_id"
    a, b = a.sort_values(key, kind="stable"), b.sort_values(key, kind="stable")
    if a[key].tolist() != b[key].tolist() or a["label"].tolist() != b["label"].tolist():
        raise ConfigError(
            f"{os.fspath(parquet_a)} and {os.fspath(parquet_b)} do not hold the same test "
            "samples and labels; compare runs of the same task and split"
        )
    probs = [c for c in a.columns if c.startswith("prob_")]
    return paired_permutation_test(
        a["label"].to_numpy(), a["pred"].to_numpy(), b["pred"].to_numpy(),
        probs_a=a[probs].to_numpy(), probs_b=b[probs].to_numpy(), metric=metric,
        n_permutations=n_permutations, seed=seed,
    )  # fmt: skip
