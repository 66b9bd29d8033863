"""MI-SimpleShot: slide labels from class prototypes of patch features, with patch heatmaps."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["MiSimpleShotParams", "PrototypeModel", "fit_prototypes", "predict_prototypes"]


@dataclass(frozen=True, kw_only=True)
class MiSimpleShotParams:
    """MI-SimpleShot settings (config key ``evaluate.mi_simpleshot``).

    Attributes:
        top_k: patches closest to each prototype averaged per slide (UNI: 5 or 50).
    """

    top_k: int = 5

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"evaluate.mi_simpleshot.top_k must be >= 1, got {self.top_k}")


@dataclass(frozen=True, kw_only=True)
class PrototypeModel:
    """Centring mean (D,) and one L2-normalised-frame prototype per class (K, D)."""

    mean: np.ndarray
    prototypes: np.ndarray


def _normalise(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    centred = x.astype(np.float32) - mean
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def fit_prototypes(
    bags: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    n_classes: int,
    class_names: Sequence[str] | None = None,
) -> PrototypeModel:
    """Class prototypes: the mean of every (centred, normalised) patch of that class's slides.

    Patches inherit their slide's label (UNI uses annotated training ROIs where available;
    with slide labels only, this is the weakly supervised variant).

    Args:
        bags: (N_i, D) patch features of each training slide.
        labels: class index of each slide.
        n_classes: number of classes (one prototype each).
        class_names: names of the classes by index, used in error messages.

    Raises:
        ConfigError: a class has no training slide (named by ``class_names`` when given).
    """
    mean = np.concatenate(bags).mean(axis=0).astype(np.float32)
    protos = []
    for c in range(n_classes):
        members = [_normalise(b, mean) for b, y in zip(bags, labels, strict=True) if y == c]
        if not members:
            name = repr(class_names[c]) if class_names is not None else str(c)
            raise ConfigError(
                f"MI-SimpleShot: no training slide of class {name}; give that class train "
                "slides in the task's slides.csv or drop it from the task's `classes`"
            )
        protos.append(np.concatenate(members).mean(axis=0))
    return PrototypeModel(mean=mean, prototypes=np.stack(protos))


def predict_prototypes(
    model: PrototypeModel, bags: Sequence[np.ndarray], params: MiSimpleShotParams
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Slide class scores (S, K) and per-patch heatmaps.

    For each class, a slide's score is the mean of its ``top_k`` highest patch similarities
    (negative squared Euclidean distance to the prototype, which UNI's faiss L2 search
    returns); the highest score wins. Prototypes are not re-normalised, so a class whose
    prototype has a larger norm is favoured - as in UNI's SimpleShot. Scores are
    turned into probabilities with a softmax. The heatmap of a slide is each patch's
    similarity (N_i,) to the predicted class's prototype.
    """
    probs, heatmaps = [], []
    for bag in bags:
        x = _normalise(bag, model.mean)  # (N, D)
        sq = (
            (x**2).sum(1)[:, None] + (model.prototypes**2).sum(1)[None] - 2 * x @ model.prototypes.T
        )
        sim = -np.sqrt(np.maximum(sq, 0.0))  # (N, K)
        k = min(params.top_k, len(x))
        score = np.sort(sim, axis=0)[-k:].mean(axis=0).astype(np.float64)  # (K,)
        e = np.exp(score - score.max())
        probs.append(e / e.sum())
        heatmaps.append(sim[:, int(np.argmax(score))])
    return np.stack(probs), heatmaps
