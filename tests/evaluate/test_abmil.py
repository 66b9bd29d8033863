"""Tests of unipipe.evaluate.abmil on bags of real tile embeddings and the real h5 bags."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unipipe.errors import ConfigError
from unipipe.evaluate import abmil
from unipipe.evaluate.abmil import (
    AbmilParams,
    FitHistory,
    GatedAttentionMIL,
    abmil_sweep_protocol,
    fit_abmil,
    fit_abmil_epochs,
    predict_abmil,
    sweep_abmil,
)
from unipipe.evaluate.features import read_bag, read_roi_features
from unipipe.evaluate.metrics import MetricInput, balanced_accuracy

FEATURES = Path(__file__).resolve().parents[2] / "resources" / "features"
FAST = AbmilParams(max_epochs=15, patience=5, min_epochs=5, lr=1e-3)
# Sweep tests: a small model and few epochs keep three fits to about a second each.
SWEEP = {"hidden_dim": 32, "attn_dim": 16, "max_epochs": 6, "patience": 2, "min_epochs": 2}


def _group_bags(
    h5: Path, split: str, seed: int, per_group: int = 8
) -> tuple[list[np.ndarray], np.ndarray]:
    """Bags of 5 tiles drawn within each source group (<group>_<i>_<suffix>.jpg)."""
    feats = read_roi_features(h5)
    rows = feats.subset(split)
    groups: dict[tuple[int, str], list[int]] = {}
    for r in rows:
        name = feats.paths[r].rsplit("/", 1)[-1]
        groups.setdefault((int(feats.labels[r]), name.split("_")[0]), []).append(int(r))
    rng = np.random.default_rng(seed)
    bags, labels = [], []
    for (label, _), members in sorted(groups.items()):
        for _ in range(per_group):
            pick = rng.choice(members, size=min(5, len(members)), replace=False)
            bags.append(feats.features[pick])
            labels.append(label)
    return bags, np.array(labels)


def test_abmil_learns_on_tile_group_bags(demo_h5: Path) -> None:
    """Trained on train-split bags it fits them (BA > 0.9) and beats chance on test bags."""
    bags, labels = _group_bags(demo_h5, "train", 0)
    test_bags, test_labels = _group_bags(demo_h5, "test", 1)
    model, history = fit_abmil(bags, labels, test_bags[::2], test_labels[::2], n_classes=2,
                               params=FAST, seed=0)  # fmt: skip
    assert history.train_loss[-1] < history.train_loss[0]
    probs, attn = predict_abmil(model, bags)
    train_ba = balanced_accuracy(MetricInput(y_true=labels, y_pred=probs.argmax(1), probs=probs))
    assert train_ba > 0.9
    probs, _ = predict_abmil(model, test_bags[1::2])
    y = test_labels[1::2]
    assert balanced_accuracy(MetricInput(y_true=y, y_pred=probs.argmax(1), probs=probs)) > 0.6
    assert np.allclose([a.sum() for a in attn], 1.0, atol=1e-5)


def test_abmil_is_seeded(demo_h5: Path) -> None:
    """Two fits with the same seed give identical probabilities."""
    bags, labels = _group_bags(demo_h5, "train", 0)
    p = AbmilParams(max_epochs=2, patience=1, min_epochs=0)
    a = predict_abmil(fit_abmil(bags, labels, bags[:4], labels[:4], n_classes=2, params=p,
                                seed=3)[0], bags)[0]  # fmt: skip
    b = predict_abmil(fit_abmil(bags, labels, bags[:4], labels[:4], n_classes=2, params=p,
                                seed=3)[0], bags)[0]  # fmt: skip
    np.testing.assert_array_equal(a, b)


def test_abmil_early_stopping_keeps_best_epoch() -> None:
    """With a validation set it cannot fit, training stops after patience and keeps the best."""
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(6, 8)).astype(np.float32) for _ in range(20)]
    labels = np.arange(20) % 2
    p = AbmilParams(max_epochs=50, patience=3, min_epochs=0, lr=1e-2)
    _, history = fit_abmil(bags, labels, bags[:6], 1 - labels[:6], n_classes=2, params=p, seed=0)
    assert len(history.val_loss) < 50
    assert history.val_loss[history.best_epoch] == min(history.val_loss)
    assert len(history.val_loss) == history.best_epoch + 1 + 3


@pytest.mark.parametrize("name", ["TCGA-3X-AAVA-01Z-00-DX1.h5", "TCGA-AD-6964-01Z-00-DX1.h5"])
def test_abmil_forward_on_real_bags(name: str) -> None:
    """Both real 512-d bags (either schema) give 2 logits and attention over every patch."""
    bag = read_bag(FEATURES / name)
    model = GatedAttentionMIL(512, 2, AbmilParams()).eval()
    with torch.no_grad():
        logits, attn = model(torch.from_numpy(bag.features))
    assert logits.shape == (2,)
    assert attn.shape == (len(bag.features),)
    assert float(attn.sum()) == pytest.approx(1.0, abs=1e-5)


def test_abmil_params_reject_bad_dropout() -> None:
    """Dropout outside [0, 1) raises ConfigError naming the key."""
    with pytest.raises(ConfigError, match="evaluate.abmil.dropout"):
        AbmilParams(dropout=1.0)


@pytest.fixture(scope="module")
def sweep_bags(demo_h5: Path) -> SimpleNamespace:
    """Train-split bags to fit, test-split bags (other source groups) to validate on."""
    train, y_train = _group_bags(demo_h5, "train", 0, per_group=3)
    val, y_val = _group_bags(demo_h5, "test", 1, per_group=2)
    return SimpleNamespace(train=train, y_train=y_train, val=val, y_val=y_val, test=val,
                           n_classes=2)  # fmt: skip


def test_sweep_abmil_never_picks_an_absurd_lr(sweep_bags: SimpleNamespace) -> None:
    """lr 10 gives a higher validation loss (measured 0.82 vs 0.65) and loses to the lowest."""
    p = AbmilParams(**SWEEP, lrs=(1e-4, 1e-3, 10.0))
    d = sweep_bags
    _, sweep = sweep_abmil(d.train, d.y_train, d.val, d.y_val, n_classes=2, params=p, seed=0)
    losses = {row["lr"]: row["best_val_loss"] for row in sweep.summary()}
    assert sweep.chosen_lr != 10.0
    assert losses[sweep.chosen_lr] == min(losses.values())
    assert losses[10.0] > losses[sweep.chosen_lr]


def test_abmil_sweep_protocol_is_deterministic(sweep_bags: SimpleNamespace) -> None:
    """Two sweeps with one seed give equal probs and extra; extra lists every rate."""
    params = {"abmil": {**SWEEP, "lrs": [1e-3, 1e-4]}}
    a, fa = abmil_sweep_protocol(sweep_bags, params, seed=2)
    b, fb = abmil_sweep_protocol(sweep_bags, params, seed=2)
    np.testing.assert_array_equal(a, b)
    assert fa["extra"] == fb["extra"]
    assert [row["lr"] for row in fa["extra"]["lr_sweep"]] == [1e-4, 1e-3]
    assert fa["extra"]["chosen_lr"] in (1e-4, 1e-3)
    assert fa["params"].lrs == (1e-4, 1e-3)
    assert a.shape == (len(sweep_bags.test), 2)
    assert len(fa["heatmaps"]) == len(sweep_bags.test)


def test_sweep_abmil_ties_go_to_the_smaller_lr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal best validation losses keep the smallest rate; a lower loss wins over it."""
    losses = {1e-4: 0.5, 1e-3: 0.5, 1e-2: 0.5}

    def fake_fit(*args: object, lr: float, **kwargs: object) -> tuple[str, FitHistory]:
        return f"model@{lr}", FitHistory(val_loss=[losses[lr]], best_epoch=0)

    monkeypatch.setattr(abmil, "_fit", fake_fit)
    bags, labels = [np.zeros((2, 4), np.float32)], np.array([0])
    p = AbmilParams(lrs=(1e-2, 1e-3, 1e-4))
    model, sweep = sweep_abmil(bags, labels, bags, labels, n_classes=2, params=p, seed=0)
    assert (model, sweep.chosen_lr) == ("model@0.0001", 1e-4)
    losses[1e-2] = 0.4
    assert sweep_abmil(bags, labels, bags, labels, n_classes=2, params=p, seed=0)[0] == (
        "model@0.01"
    )


def test_abmil_divergence_is_a_clear_error(sweep_bags: SimpleNamespace) -> None:
    """NaN features: fit, fixed-epoch fit and sweep raise ConfigError, not a torch crash."""
    d = sweep_bags
    nan_bags = [np.full_like(b, np.nan) for b in d.val]
    p = AbmilParams(**SWEEP, lrs=(1e-4, 1e-3))
    with pytest.raises(ConfigError, match="no finite validation loss"):
        fit_abmil(d.train, d.y_train, nan_bags, d.y_val, n_classes=2, params=p, seed=0)
    with pytest.raises(ConfigError, match="diverged"):
        fit_abmil_epochs(nan_bags, d.y_val, n_classes=2, params=p, epochs=3, seed=0)
    with pytest.raises(ConfigError, match="every rate of evaluate.abmil.lrs"):
        sweep_abmil(nan_bags, d.y_val, d.val, d.y_val, n_classes=2, params=p, seed=0)


def test_fit_abmil_epochs_runs_exactly_that_many(sweep_bags: SimpleNamespace) -> None:
    """Without validation slides it trains the given epochs and keeps the last weights."""
    p = AbmilParams(**SWEEP)
    d = sweep_bags
    _, history = fit_abmil_epochs(d.train[:2], d.y_train[:2], n_classes=2, params=p, epochs=4,
                                  seed=0)  # fmt: skip
    assert (len(history.train_loss), history.val_loss, history.best_epoch) == (4, [], 3)


@pytest.mark.parametrize(
    ("lrs", "expected"),
    [((1e-3, "1e-4", 1e-4), (1e-4, 1e-3)), ([5e-5], (5e-5,)), (2e-4, (2e-4,))],
)
def test_abmil_params_normalise_lrs(lrs: object, expected: tuple[float, ...]) -> None:
    """The sweep grid is stored as sorted distinct floats (YAML may give '1e-4' as text)."""
    assert AbmilParams(lrs=lrs).lrs == expected


@pytest.mark.parametrize("lrs", [(), (0.0,), (1e-4, -1.0), ("fast",), (float("nan"),)])
def test_abmil_params_reject_bad_lrs(lrs: object) -> None:
    """An empty, non-positive or non-numeric grid raises ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"evaluate\.abmil\.lrs"):
        AbmilParams(lrs=lrs)
