"""Tests of unipipe.evaluate.fewshot: episodes, support sampling, the curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate.features import read_roi_features
from unipipe.evaluate.fewshot import FewShotParams, fewshot_protocol, sample_support
from unipipe.evaluate.protocols import SimpleShotParams, center_normalize, simpleshot_protocol
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


def _per_episode_reference(
    x: np.ndarray, y: np.ndarray, test: np.ndarray, n_classes: int, p: FewShotParams, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The episode loop before batching: SimpleShot per support set; per K (preds, gaps).

    gaps (n_episodes, N_test) is the distance margin between each row's two nearest
    prototypes, relative to the nearest, in the per-episode arithmetic.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for k in p.shots:
        preds, gaps = [], []
        for _ in range(p.n_episodes):
            s = sample_support(y, n_classes, k, rng)
            preds.append(simpleshot_protocol(x[s], y[s], test, n_classes=n_classes,
                                             params=SimpleShotParams(), seed=0).pred)  # fmt: skip
            tr, te = center_normalize(x[s], test)
            protos = np.stack([tr[y[s] == c].mean(0) for c in range(n_classes)])
            dist = np.sort(np.linalg.norm(te[:, None] - protos[None], axis=2), axis=1)
            gaps.append((dist[:, 1] - dist[:, 0]) / dist[:, 0])
        out[str(k)] = (np.stack(preds), np.stack(gaps))
    return out


@pytest.mark.parametrize("source", ["real", "random"])
def test_fewshot_batched_simpleshot_equals_per_episode(demo_h5: Path, source: str) -> None:
    """Batched episodes predict as per-episode SimpleShot on the same supports.

    A row may differ only where its two nearest class distances agree to 1e-5 (rounding
    of a different but equivalent formula), and at most one row in 10,000 does.
    """
    if source == "real":
        feats = read_roi_features(demo_h5)
        train, test = feats.subset("train"), feats.subset("test")
        x, y, q, n_classes = feats.features[train], feats.labels[train], feats.features[test], 2
    else:  # raw CLS features sit far from the origin: offset 5, so centring matters
        rng = np.random.default_rng(4)
        centres = rng.normal(size=(5, 32)) * 0.3
        y = np.arange(600) % 5
        x = (centres[y] + rng.normal(size=(600, 32)) + 5.0).astype(np.float32)
        q = (centres[np.arange(400) % 5] + rng.normal(size=(400, 32)) + 5.0).astype(np.float32)
        n_classes = 5
    p = FewShotParams(shots=(1, 4, 16), n_episodes=40)
    out = fewshot_protocol(x, y, q, n_classes=n_classes, params=p, seed=3)
    for k, (ref, gaps) in _per_episode_reference(x, y, q, n_classes, p, 3).items():
        differ = out.extra["episodes"][k] != ref
        assert differ.mean() <= 1e-4, k
        assert np.all(gaps[differ] < 1e-5), k
