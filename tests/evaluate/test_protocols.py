"""Tests of unipipe.evaluate.protocols: linear probe, k-NN and SimpleShot."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from unipipe.errors import ConfigError
from unipipe.evaluate.protocols import (
    PROTOCOLS,
    KnnParams,
    LinearParams,
    SimpleShotParams,
    center_normalize,
    get_protocol,
    knn_protocol,
    linear_protocol,
    simpleshot_protocol,
)


def _blobs(n: int, d: int, k: int, seed: int, sep: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    y = np.arange(n) % k
    x = (centres[y] + rng.normal(size=(n, d)) + 5.0).astype(np.float32)
    return x, y


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_protocols_every_entry_separates_blobs(name: str) -> None:
    """Every registered protocol scores > 90% on well separated blobs, probs rows sum to 1."""
    x, y = _blobs(300, 16, 3, 0)
    proto = get_protocol(name)
    out = proto.fn(x[:200], y[:200], x[200:], n_classes=3, params=proto.params_cls(), seed=0)
    assert out.pred.shape == (100,)
    assert out.probs.shape == (100, 3)
    assert np.allclose(out.probs.sum(1), 1.0)
    assert np.mean(out.pred == y[200:]) > 0.9


def test_get_protocol_unknown_lists_names() -> None:
    """Unknown protocol names raise ConfigError listing the registry."""
    with pytest.raises(ConfigError, match="simpleshot"):
        get_protocol("svm")


def test_linear_sklearn_backend_equals_sklearn_with_uni_c() -> None:
    """Backend sklearn equals LogisticRegression(C = D*K/100, lbfgs, 1000 iters)."""
    x, y = _blobs(150, 8, 3, 1, sep=0.7)
    out = linear_protocol(
        x[:100], y[:100], x[100:], n_classes=3, params=LinearParams(backend="sklearn"), seed=0
    )
    ref = LogisticRegression(C=8 * 3 / 100, max_iter=1000, tol=1e-7).fit(x[:100], y[:100])
    assert out.extra["C"] == pytest.approx(0.24)
    np.testing.assert_allclose(out.probs, ref.predict_proba(x[100:]), atol=1e-6)


def test_linear_uni_torch_regularises_more_with_smaller_c() -> None:
    """The UNI torch objective shrinks weights (flatter probabilities) as C falls; no NaN."""
    x, y = _blobs(150, 8, 2, 2, sep=0.7)
    sharp = linear_protocol(x, y, x, n_classes=2, params=LinearParams(C=100.0), seed=0)
    flat = linear_protocol(x, y, x, n_classes=2, params=LinearParams(C=0.01), seed=0)
    assert np.isfinite(sharp.probs).all()
    assert np.abs(flat.probs - 0.5).mean() < np.abs(sharp.probs - 0.5).mean()


def test_linear_is_deterministic() -> None:
    """Two fits with the same seed give identical probabilities."""
    x, y = _blobs(120, 8, 3, 3, sep=0.5)
    a = linear_protocol(x, y, x, n_classes=3, params=LinearParams(), seed=0)
    b = linear_protocol(x, y, x, n_classes=3, params=LinearParams(), seed=0)
    np.testing.assert_array_equal(a.probs, b.probs)


def test_knn_matches_sklearn_on_centred_normalised() -> None:
    """k=20 and 1-NN predictions equal sklearn's Euclidean KNN on the same frame."""
    x, y = _blobs(400, 12, 4, 4, sep=0.6)
    tr, te = center_normalize(x[:300], x[300:])
    out = knn_protocol(x[:300], y[:300], x[300:], n_classes=4, params=KnnParams(), seed=0)
    for k, pred in ((20, out.pred), (1, out.extra["predictions_at_k"]["1"])):
        ref = KNeighborsClassifier(n_neighbors=k).fit(tr, y[:300])
        proba = ref.predict_proba(te)
        untied = (np.sort(proba, 1)[:, -1] > np.sort(proba, 1)[:, -2]) if k > 1 else slice(None)
        np.testing.assert_array_equal(pred[untied], ref.predict(te)[untied])


def test_knn_tie_goes_to_class_of_nearest_neighbour() -> None:
    """With a 1-1 vote at k=2 the class of the nearer neighbour wins, whatever its index."""
    train = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    labels = np.array([1, 0, 1, 0])
    test = np.array([[0.2, 1.0]], dtype=np.float32)
    out = knn_protocol(train, labels, test, n_classes=2, params=KnnParams(k=2, extra_k=()), seed=0)
    assert out.pred.tolist() == [0]


def test_simpleshot_nearest_class_mean() -> None:
    """SimpleShot predicts the class whose centred-normalised mean is nearest."""
    x, y = _blobs(200, 6, 3, 5, sep=0.8)
    tr, te = center_normalize(x[:150], x[150:])
    protos = np.stack([tr[y[:150] == c].mean(0) for c in range(3)])
    expected = np.argmin(((te[:, None] - protos[None]) ** 2).sum(-1), axis=1)
    out = simpleshot_protocol(
        x[:150], y[:150], x[150:], n_classes=3, params=SimpleShotParams(), seed=0
    )
    np.testing.assert_array_equal(out.pred, expected)


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        (LinearParams, {"max_iter": 0}, "evaluate.linear.max_iter"),
        (LinearParams, {"backend": "saga"}, "evaluate.linear.backend"),
        (KnnParams, {"k": 0}, "evaluate.knn.k"),
        (SimpleShotParams, {"temperature": 0.0}, "evaluate.simpleshot.temperature"),
    ],
)
def test_params_reject_bad_values(cls: type, kwargs: dict, key: str) -> None:
    """Invalid protocol parameters raise ConfigError naming the config key."""
    with pytest.raises(ConfigError, match=key):
        cls(**kwargs)
