"""Tests of unipipe.evaluate.fewshot: episodes, support sampling, the curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate.fewshot import FewShotParams, fewshot_protocol, sample_support
from unipipe.evaluate.run import run_evaluate


def test_sample_support_k_distinct_per_class() -> None:
    """Each episode holds exactly K distinct train rows of every class."""
    y = np.repeat(np.arange(3), 10)
    rng = np.random.default_rng(0)
    for k in (1, 4, 10):
        support = sample_support(y, 3, k, rng)
        assert len(np.unique(support)) == len(support) == 3 * k
        assert np.bincount(y[support], minlength=3).tolist() == [k, k, k]


def test_fewshot_support_never_touches_query(demo_h5: Path, demo_task: dict,
                                             tmp_path: Path) -> None:  # fmt: skip
    """Support rows are train rows only; the query is the whole test split (no overlap)."""
    from unipipe.evaluate.features import read_roi_features

    feats = read_roi_features(demo_h5)
    train, test = feats.subset("train"), feats.subset("test")
    assert not set(train) & set(test)
    rng = np.random.default_rng(0)
    support = train[sample_support(feats.labels[train], 2, 16, rng)]
    assert set(support) <= set(train)
    assert not set(support) & set(test)


def test_fewshot_skips_k_above_smallest_class() -> None:
    """K larger than the smallest class is skipped and listed; episodes are seeded."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    p = FewShotParams(shots=(1, 4, 32), n_episodes=5)
    a = fewshot_protocol(x, y, x[:10], n_classes=2, params=p, seed=0)
    b = fewshot_protocol(x, y, x[:10], n_classes=2, params=p, seed=0)
    assert a.extra["skipped_shots"] == [32]
    assert sorted(a.extra["episodes"]) == ["1", "4"]
    assert a.extra["episodes"]["4"].shape == (5, 10)
    np.testing.assert_array_equal(a.extra["episodes"]["4"], b.extra["episodes"]["4"])


def test_run_evaluate_fewshot_curve_rises(demo_h5: Path, demo_task: dict, tmp_path: Path) -> None:
    """On the real tiles the mean balanced accuracy at K=32 beats K=1; 100 episodes each."""
    params = {"bootstrap": {"n_resamples": 50},
              "fewshot": {"shots": [1, 32], "n_episodes": 100}}  # fmt: skip
    run_evaluate(demo_h5, task=demo_task, protocol="fewshot", params=params, seed=0,
                 metrics_json=tmp_path / "m.json", predictions_parquet=tmp_path / "p.parquet",
                 sidecar=tmp_path / "s.json")  # fmt: skip
    m = json.loads((tmp_path / "m.json").read_text())
    curve = m["extra"]["curve"]
    assert m["balanced_accuracy"] == curve["32"]["balanced_accuracy"]["mean"]
    assert m["balanced_accuracy_ci_low"] == curve["32"]["balanced_accuracy"]["q025"]
    assert curve["1"]["n_episodes"] == 100
    ba1, ba32 = curve["1"]["balanced_accuracy"], curve["32"]["balanced_accuracy"]
    assert ba32["mean"] > ba1["mean"]
    assert ba32["std"] < ba1["std"]


def test_fewshot_params_reject_bad_learner() -> None:
    """An unsupported learner raises ConfigError naming the key."""
    with pytest.raises(ConfigError, match="evaluate.fewshot.learner"):
        FewShotParams(learner="fewshot")
