"""Tests of unipipe.evaluate.stats.paired_permutation_test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate.stats import paired_permutation_test


def _preds(acc_a: float, acc_b: float, n: int = 300, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < acc_a, y, (y + 1) % 3)
    b = np.where(rng.random(n) < acc_b, y, (y + 2) % 3)
    return y, a, b


def test_permutation_detects_clear_difference() -> None:
    """0.9 vs 0.6 accuracy on 300 samples gives p < 0.01 and a positive difference."""
    y, a, b = _preds(0.9, 0.6)
    res = paired_permutation_test(y, a, b, n_permutations=500, seed=0)
    assert res.difference > 0.2
    assert res.p_value < 0.01


def test_permutation_identical_encoders_p_is_one() -> None:
    """Identical predictions give difference 0 and p = 1."""
    y, a, _ = _preds(0.8, 0.8)
    res = paired_permutation_test(y, a, a.copy(), n_permutations=200)
    assert res.difference == 0.0
    assert res.p_value == 1.0


def test_permutation_null_p_is_not_small() -> None:
    """Two encoders of equal accuracy give p > 0.05 here, and the test is seeded."""
    y, a, b = _preds(0.7, 0.7, seed=3)
    r1 = paired_permutation_test(y, a, b, n_permutations=300, seed=5)
    r2 = paired_permutation_test(y, a, b, n_permutations=300, seed=5)
    assert r1 == r2
    assert r1.p_value > 0.05


def test_permutation_auroc_uses_scores() -> None:
    """AUROC comparison with class scores runs and the p-value lies in (0, 1]."""
    y, a, b = _preds(0.9, 0.6)
    pa, pb = np.eye(3)[a] * 0.8 + 0.2 / 3, np.eye(3)[b] * 0.8 + 0.2 / 3
    res = paired_permutation_test(y, a, b, probs_a=pa, probs_b=pb, metric="auroc",
                                  n_permutations=100)  # fmt: skip
    assert 0 < res.p_value <= 1


def test_permutation_rejects_unknown_metric() -> None:
    """Unknown metric names raise ConfigError listing the known ones."""
    y, a, b = _preds(0.9, 0.6)
    with pytest.raises(ConfigError, match="balanced_accuracy"):
        paired_permutation_test(y, a, b, metric="acc")


def test_compare_predictions_linear_vs_knn_files(
    demo_h5: Path, demo_task: dict, tmp_path: Path
) -> None:
    """Two real run_evaluate outputs compare; a file against itself gives p = 1."""
    from unipipe.evaluate.run import run_evaluate
    from unipipe.evaluate.stats import compare_predictions

    for protocol in ("linear", "knn"):
        out = tmp_path / protocol
        run_evaluate(demo_h5, task=demo_task, protocol=protocol,
                     params={"bootstrap": {"n_resamples": 0}}, seed=0,
                     metrics_json=out / "m.json", predictions_parquet=out / "p.parquet",
                     sidecar=out / "s.json")  # fmt: skip
    res = compare_predictions(tmp_path / "linear" / "p.parquet", tmp_path / "knn" / "p.parquet",
                              n_permutations=200)  # fmt: skip
    assert 0 < res.p_value <= 1
    same = compare_predictions(tmp_path / "knn" / "p.parquet", tmp_path / "knn" / "p.parquet",
                               n_permutations=50)  # fmt: skip
    assert same.p_value == 1.0
