"""Tests of unipipe.evaluate.metrics against scikit-learn on fixed arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from unipipe.errors import ConfigError
from unipipe.evaluate.metrics import (
    METRICS,
    MetricInput,
    auroc,
    balanced_accuracy,
    bootstrap_ci,
    compute_metrics,
    quadratic_weighted_kappa,
    top_k_accuracy,
    weighted_f1,
)


def _fixed(n: int, k: int, seed: int) -> MetricInput:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    pred[:3] = (pred[:3] + 1) % k  # some extra errors
    return MetricInput(y_true=y, y_pred=pred, probs=probs)


CASES = [(60, 2, 0), (90, 3, 1), (200, 5, 2), (40, 4, 3)]


@pytest.mark.parametrize(("n", "k", "seed"), CASES)
def test_balanced_accuracy_matches_sklearn(n: int, k: int, seed: int) -> None:
    """Balanced accuracy equals sklearn.balanced_accuracy_score."""
    inp = _fixed(n, k, seed)
    expected = skm.balanced_accuracy_score(inp.y_true, inp.y_pred)
    assert balanced_accuracy(inp) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "k", "seed"), CASES)
def test_weighted_f1_matches_sklearn(n: int, k: int, seed: int) -> None:
    """Weighted F1 equals sklearn f1_score(average='weighted')."""
    inp = _fixed(n, k, seed)
    expected = skm.f1_score(inp.y_true, inp.y_pred, average="weighted", zero_division=0)
    assert weighted_f1(inp) == pytest.approx(expected, abs=1e-12)


def test_weighted_f1_unpredicted_class_counts_zero() -> None:
    """A class never predicted scores F1 0, as sklearn with zero_division=0."""
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1])
    inp = MetricInput(y_true=y, y_pred=pred, probs=np.full((6, 3), 1 / 3))
    expected = skm.f1_score(y, pred, average="weighted", zero_division=0)
    assert weighted_f1(inp) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "k", "seed"), CASES)
def test_auroc_matches_sklearn(n: int, k: int, seed: int) -> None:
    """AUROC: binary on class-1 prob, else one-vs-one macro, as sklearn."""
    inp = _fixed(n, k, seed)
    if k == 2:
        expected = skm.roc_auc_score(inp.y_true, inp.probs[:, 1])
    else:
        expected = skm.roc_auc_score(inp.y_true, inp.probs, multi_class="ovo", average="macro")
    assert auroc(inp) == pytest.approx(expected, abs=1e-12)


def test_auroc_handles_tied_scores() -> None:
    """Tied scores count one half, as sklearn."""
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.5, 0.5, 0.2, 0.9, 0.2, 0.1])
    inp = MetricInput(y_true=y, y_pred=(s > 0.5).astype(int), probs=np.c_[1 - s, s])
    assert auroc(inp) == pytest.approx(skm.roc_auc_score(y, s))


@pytest.mark.parametrize(("n", "k", "seed"), CASES)
def test_qwk_matches_sklearn(n: int, k: int, seed: int) -> None:
    """QWK equals cohen_kappa_score(weights='quadratic')."""
    inp = _fixed(n, k, seed)
    expected = skm.cohen_kappa_score(inp.y_true, inp.y_pred, weights="quadratic")
    assert quadratic_weighted_kappa(inp) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("top", [1, 2, 3])
def test_top_k_accuracy_matches_sklearn(top: int) -> None:
    """Top-k accuracy equals sklearn.top_k_accuracy_score on untied scores."""
    inp = _fixed(120, 5, 7)
    expected = skm.top_k_accuracy_score(inp.y_true, inp.probs, k=top, labels=range(5))
    assert top_k_accuracy(inp, top) == pytest.approx(expected)


def test_weights_equal_repeated_rows() -> None:
    """Integer weights give the metric of the multiset with rows repeated."""
    inp = _fixed(50, 3, 4)
    w = np.random.default_rng(0).integers(0, 4, 50)
    rep = np.repeat(np.arange(50), w)
    weighted = MetricInput(y_true=inp.y_true, y_pred=inp.y_pred, probs=inp.probs, weights=w)
    repeated = MetricInput(y_true=inp.y_true[rep], y_pred=inp.y_pred[rep], probs=inp.probs[rep])
    for name, fn in METRICS.items():
        assert fn(weighted) == pytest.approx(fn(repeated), abs=1e-12), name


def test_bootstrap_ci_brackets_value_and_is_seeded() -> None:
    """The 95% interval brackets the point value, repeats with a seed, moves with another."""
    inp = _fixed(200, 3, 5)
    a = bootstrap_ci(inp, balanced_accuracy, n_resamples=1000, seed=1)
    b = bootstrap_ci(inp, balanced_accuracy, n_resamples=1000, seed=1)
    c = bootstrap_ci(inp, balanced_accuracy, n_resamples=1000, seed=2)
    assert a == b
    assert a != c
    assert a[0] < balanced_accuracy(inp) < a[1]
    assert 0.02 < a[1] - a[0] < 0.3


def test_bootstrap_ci_logs_undefined_resamples_out_of_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The count of undefined resamples is given out of the resamples, not the test size."""
    inp = _fixed(6, 2, 0)  # few samples: some resamples draw one class and AUROC is undefined
    with caplog.at_level("INFO", logger="unipipe.evaluate.metrics"):
        bootstrap_ci(inp, auroc, n_resamples=400, seed=0)
    assert any(m.endswith("of 400 resamples undefined") for m in caplog.messages), caplog.messages


def test_compute_metrics_rejects_unknown_name() -> None:
    """An unknown metric name raises ConfigError listing the known ones."""
    inp = _fixed(20, 2, 0)
    with pytest.raises(ConfigError, match="balanced_accuracy"):
        compute_metrics(inp.y_true, inp.y_pred, inp.probs, names=["accuracy_typo"])


def test_compute_metrics_skips_top_k_above_classes() -> None:
    """top5 is omitted for a 3-class task, top1 kept."""
    inp = _fixed(30, 3, 0)
    out = compute_metrics(inp.y_true, inp.y_pred, inp.probs, names=["top1", "top5"], n_resamples=10)
    assert set(out) == {"top1"}


@pytest.mark.parametrize(("n", "k", "seed"), CASES)
def test_bootstrap_auroc_fast_path_equals_plain_loop(n: int, k: int, seed: int) -> None:
    """The vectorised AUROC bootstrap gives the per-resample loop's interval exactly."""
    from unipipe.evaluate import metrics

    inp = _fixed(n, k, seed)
    fast = bootstrap_ci(inp, auroc, n_resamples=200, seed=3)
    plain = bootstrap_ci(inp, lambda x: auroc(x), n_resamples=200, seed=3)
    assert auroc in metrics._BATCHED
    assert fast == pytest.approx(plain, abs=1e-12)
