"""Classification metrics (from confusion matrices and ranks) and seeded bootstrap intervals."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "MetricInput",
    "auroc",
    "balanced_accuracy",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "compute_metrics",
    "quadratic_weighted_kappa",
    "top_k_accuracy",
    "weighted_f1",
]


@dataclass(frozen=True, kw_only=True)
class MetricInput:
    """What every metric reads: labels, hard predictions and class scores of one test set.

    Attributes:
        y_true: (N,) int class indices in [0, n_classes).
        y_pred: (N,) int predicted class indices.
        probs: (N, K) class scores (probabilities for linear, vote fractions for k-NN).
        weights: (N,) sample weights; a bootstrap resample is integer counts, None = all 1.
        cache: weight-independent intermediates (score ranks) shared by the resamples of
            one bootstrap; leave empty.
    """

    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    weights: np.ndarray | None = None
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_classes(self) -> int:
        """Number of classes K (columns of ``probs``)."""
        return int(self.probs.shape[1])


def _confusion(inp: MetricInput) -> np.ndarray:
    """(K, K) weighted confusion matrix; rows are true classes, columns predictions."""
    k = inp.n_classes
    codes = inp.y_true.astype(np.int64) * k + inp.y_pred.astype(np.int64)
    counts = np.bincount(codes, weights=inp.weights, minlength=k * k)
    return counts.reshape(k, k).astype(np.float64)


def balanced_accuracy(inp: MetricInput) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    cm = _confusion(inp)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def weighted_f1(inp: MetricInput) -> float:
    """Per-class F1 averaged with weights = true-class support; F1 of an unpredicted class is 0."""
    cm = _confusion(inp)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(np.sum(f1 * support) / np.sum(support))


def quadratic_weighted_kappa(inp: MetricInput) -> float:
    """Cohen's kappa with quadratic disagreement weights (i - j)^2 on the class index grid."""
    cm = _confusion(inp)
    k = inp.n_classes
    grid = np.arange(k, dtype=np.float64)
    disagreement = (grid[:, None] - grid[None, :]) ** 2
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / cm.sum()
    denom = np.sum(disagreement * expected)
    if denom == 0:
        return float("nan")
    return float(1.0 - np.sum(disagreement * cm) / denom)


def _binary_auc(
    scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None,
    ranks: tuple[np.ndarray, int] | None = None,
) -> float:  # fmt: skip
    """Weighted Mann-Whitney AUC: P(score_pos > score_neg) + 0.5 P(tie); NaN if a side is empty.

    ``ranks`` = (inverse index into the sorted unique scores, number of unique scores)
    may be passed precomputed; it does not depend on the weights.
    """
    w = np.ones(len(scores)) if weights is None else weights.astype(np.float64)
    if ranks is None:
        uniq, inverse = np.unique(scores, return_inverse=True)
        ranks = (inverse, len(uniq))
    inverse, n_unique = ranks
    pos = np.bincount(inverse, weights=w * positive, minlength=n_unique)
    neg = np.bincount(inverse, weights=w * ~positive, minlength=n_unique)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (n_pos * n_neg))


def _ranks(inp: MetricInput, key: tuple, scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Unique-score ranks of ``scores``, cached in ``inp.cache`` under ``key``."""
    if key not in inp.cache:
        uniq, inverse = np.unique(scores, return_inverse=True)
        inp.cache[key] = (inverse, len(uniq))
    return inp.cache[key]


def auroc(inp: MetricInput) -> float:
    """Binary: AUC of the class-1 score. Multi-class: one-vs-one macro AUC (Hand and Till).

    Each class pair (a, b) uses only the samples of a or b and averages AUC(a vs b on score a)
    and AUC(b vs a on score b), as scikit-learn's ``multi_class="ovo", average="macro"`` does.
    """
    if inp.n_classes == 2:
        scores = inp.probs[:, 1]
        return _binary_auc(scores, inp.y_true == 1, inp.weights, _ranks(inp, ("b",), scores))
    pair_aucs = []
    for a in range(inp.n_classes):
        for b in range(a + 1, inp.n_classes):
            if ("mask", a, b) not in inp.cache:
                inp.cache[("mask", a, b)] = np.flatnonzero((inp.y_true == a) | (inp.y_true == b))
            rows = inp.cache[("mask", a, b)]
            w = None if inp.weights is None else inp.weights[rows]
            y = inp.y_true[rows]
            sa, sb = inp.probs[rows, a], inp.probs[rows, b]
            auc_a = _binary_auc(sa, y == a, w, _ranks(inp, ("a", a, b), sa))
            auc_b = _binary_auc(sb, y == b, w, _ranks(inp, ("b", a, b), sb))
            pair_aucs.append(0.5 * (auc_a + auc_b))
    return float(np.mean(pair_aucs))


def _binary_auc_batched(scores: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``_binary_auc`` for B weight vectors at once: w (B, N) -> (B,), NaN where undefined."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    pos = positive[order]
    ws = w[:, order]
    g_pos = np.add.reduceat(ws * pos, starts, axis=1)  # (B, U) positive weight per score
    g_neg = np.add.reduceat(ws * ~pos, starts, axis=1)
    below = np.cumsum(g_neg, axis=1) - g_neg
    num = np.sum(g_pos * (below + 0.5 * g_neg), axis=1)
    den = g_pos.sum(axis=1) * g_neg.sum(axis=1)
    return np.divide(num, den, out=np.full(len(w), np.nan), where=den > 0)


def _auroc_batched(inp: MetricInput, w: np.ndarray) -> np.ndarray:
    """``auroc`` for B weight vectors (B, N) at once (the bootstrap's fast path)."""
    if inp.n_classes == 2:
        return _binary_auc_batched(inp.probs[:, 1], inp.y_true == 1, w)
    pairs = []
    for a in range(inp.n_classes):
        for b in range(a + 1, inp.n_classes):
            rows = np.flatnonzero((inp.y_true == a) | (inp.y_true == b))
            y, wr = inp.y_true[rows], w[:, rows]
            auc_a = _binary_auc_batched(inp.probs[rows, a], y == a, wr)
            auc_b = _binary_auc_batched(inp.probs[rows, b], y == b, wr)
            pairs.append(0.5 * (auc_a + auc_b))
    return np.mean(pairs, axis=0)


def top_k_accuracy(inp: MetricInput, k: int) -> float:
    """Fraction (weighted) of samples whose true class is among the k highest scores.

    Equal scores are ordered by class index (lower first), a deterministic tie rule.
    """
    order = np.argsort(-inp.probs, axis=1, kind="stable")[:, :k]
    hit = (order == inp.y_true[:, None]).any(axis=1).astype(np.float64)
    w = np.ones(len(hit)) if inp.weights is None else inp.weights
    return float(np.sum(hit * w) / np.sum(w))


MetricFn = Callable[[MetricInput], float]

# Name used in config/tasks.yaml and metrics.json -> function.
METRICS: dict[str, MetricFn] = {
    "balanced_accuracy": balanced_accuracy,
    "weighted_f1": weighted_f1,
    "auroc": auroc,
    "qwk": quadratic_weighted_kappa,
    "top1": lambda inp: top_k_accuracy(inp, 1),
    "top3": lambda inp: top_k_accuracy(inp, 3),
    "top5": lambda inp: top_k_accuracy(inp, 5),
}


# Metrics with a vectorised path over a block of resamples; values equal the plain ones.
_BATCHED: dict[MetricFn, Callable[[MetricInput, np.ndarray], np.ndarray]] = {auroc: _auroc_batched}
# Resample block size is chosen so a (B, N) weight block holds about this many numbers.
_BLOCK_ELEMENTS = 4_000_000


def bootstrap_ci(
    inp: MetricInput,
    metric: MetricFn,
    *,
    n_resamples: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` over resamples of the test set.

    A resample draws N test samples with replacement (seeded numpy PCG64), expressed as
    integer weights so every metric is computed exactly on the resampled multiset.
    Resamples where the metric is undefined (e.g. AUROC with one class drawn) are dropped.

    Returns:
        (low, high) at the (1 - ci) / 2 and (1 + ci) / 2 quantiles; NaNs when undefined.
    """
    rng = np.random.default_rng(seed)
    n = len(inp.y_true)
    values = np.empty(n_resamples)
    cache: dict = {}
    # The batched path pays off with many class pairs; the binary case is faster per resample.
    batched = _BATCHED.get(metric) if inp.n_classes > 2 else None
    block = max(1, min(n_resamples, _BLOCK_ELEMENTS // max(n, 1)))
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        counts = np.stack(
            [np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(start, stop)]
        ).astype(np.float64)  # (B, N) resample multiplicities
        if batched is not None:
            values[start:stop] = batched(inp, counts)
            continue
        for i, w in enumerate(counts):
            resample = MetricInput(
                y_true=inp.y_true, y_pred=inp.y_pred, probs=inp.probs, weights=w, cache=cache
            )
            values[start + i] = metric(resample)
    finite = values[np.isfinite(values)]
    if len(finite) < n_resamples:
        logger.info("bootstrap: %s of %s resamples undefined", n_resamples - len(finite),
                    n_resamples)  # fmt: skip
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_mean_ci(
    values: np.ndarray, *, n_resamples: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-sample scores (e.g. retrieval hits).

    Draws the same resamples as ``bootstrap_ci`` for the same seed and N.
    """
    if n_resamples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = len(values)
    means = np.array([values[rng.integers(0, n, size=n)].mean() for _ in range(n_resamples)])
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def compute_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray,
    *,
    names: Sequence[str],
    n_resamples: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Each named metric with its bootstrap interval: ``{name: {value, ci_low, ci_high}}``.

    Args:
        y_true: (N,) true class indices.
        y_pred: (N,) predicted class indices.
        probs: (N, K) class scores.
        names: keys of ``METRICS``.
        n_resamples: bootstrap resamples; 0 skips the intervals (NaN bounds).
        ci: interval coverage, e.g. 0.95.
        seed: bootstrap seed; every metric reuses the same resamples.
    """
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ConfigError(
            f"unknown metric(s) {unknown} in task 'metrics'; known: {sorted(METRICS)}"
        )
    inp = MetricInput(
        y_true=np.asarray(y_true, dtype=np.int64),
        y_pred=np.asarray(y_pred, dtype=np.int64),
        probs=np.asarray(probs, dtype=np.float64),
    )
    out: dict[str, dict[str, float]] = {}
    for name in names:
        fn = METRICS[name]
        if name.startswith("top") and int(name[3:]) > inp.n_classes:
            continue
        low, high = (
            bootstrap_ci(inp, fn, n_resamples=n_resamples, ci=ci, seed=seed)
            if n_resamples > 0
            else (float("nan"), float("nan"))
        )
        out[name] = {"value": fn(inp), "ci_low": low, "ci_high": high}
    return out
