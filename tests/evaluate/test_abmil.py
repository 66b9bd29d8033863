"""Tests of unipipe.evaluate.abmil on bags of real tile embeddings and the real h5 bags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unipipe.errors import ConfigError
from unipipe.evaluate.abmil import AbmilParams, GatedAttentionMIL, fit_abmil, predict_abmil
from unipipe.evaluate.features import read_bag, read_roi_features
from unipipe.evaluate.metrics import MetricInput, balanced_accuracy

FEATURES = Path(__file__).resolve().parents[2] / "resources" / "features"
FAST = AbmilParams(max_epochs=15, patience=5, min_epochs=5, lr=1e-3)


def _group_bags(h5: Path, split: str, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Bags of 5 tiles drawn within each source group (<group>_<i>_<suffix>.jpg), 8 per group."""
    feats = read_roi_features(h5)
    rows = feats.subset(split)
    groups: dict[tuple[int, str], list[int]] = {}
    for r in rows:
        name = feats.paths[r].rsplit("/", 1)[-1]
        groups.setdefault((int(feats.labels[r]), name.split("_")[0]), []).append(int(r))
    rng = np.random.default_rng(seed)
    bags, labels = [], []
    for (label, _), members in sorted(groups.items()):
        for _ in range(8):
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
