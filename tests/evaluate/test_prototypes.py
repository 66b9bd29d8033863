"""Tests of unipipe.evaluate.prototypes (MI-SimpleShot)."""

from __future__ import annotations

import numpy as np
import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate.prototypes import MiSimpleShotParams, fit_prototypes, predict_prototypes


def _bags(seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Slides of mostly background patches plus a few class-specific ones."""
    centres = 6.0 * np.eye(3, 16)  # equal-norm, orthogonal class directions
    rng = np.random.default_rng(seed)
    bags, labels = [], []
    for i in range(12):
        y = i % 3
        x = rng.normal(size=(30, 16))
        x[:10] += centres[y]
        bags.append(x.astype(np.float32))
        labels.append(y)
    return bags, np.array(labels)


def test_mi_simpleshot_classifies_and_heatmap_marks_tumour_patches() -> None:
    """Slides are classified right and the class-specific patches top the heatmap."""
    bags, labels = _bags(0)
    test_bags, test_labels = _bags(1)
    model = fit_prototypes(bags, labels, n_classes=3)
    probs, heatmaps = predict_prototypes(model, test_bags, MiSimpleShotParams(top_k=5))
    assert (probs.argmax(1) == test_labels).all()
    assert np.allclose(probs.sum(1), 1.0)
    for heat in heatmaps:
        assert len(set(np.argsort(heat)[-5:]) & set(range(10))) >= 4
        assert heat[:10].mean() > heat[10:].mean()


def test_mi_simpleshot_rejects_missing_class() -> None:
    """A class with no training slide raises ConfigError."""
    bags, labels = _bags(0)
    with pytest.raises(ConfigError, match="class 3"):
        fit_prototypes(bags, labels, n_classes=4)
