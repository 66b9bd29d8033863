"""Tests of unipipe.evaluate.protocols: linear probe, k-NN and SimpleShot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from unipipe.errors import ConfigError
from unipipe.evaluate import protocols
from unipipe.evaluate.features import read_roi_features
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


def _stable_neighbours(train: np.ndarray, test: np.ndarray, k: int) -> tuple:
    """Reference: the whole product in one torch GEMM, stable sort on -similarity."""
    sim = (torch.from_numpy(test) @ torch.from_numpy(train).T).numpy()
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


def _real_frame(demo_h5: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred, normalised train and test features of the real tiles, and train labels."""
    feats = read_roi_features(demo_h5)
    train, test = feats.subset("train"), feats.subset("test")
    tr, te = center_normalize(feats.features[train], feats.features[test])
    return tr, te, feats.labels[train]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 7 x 16 products, so a few hundred rows span many blocks and merges."""
    monkeypatch.setattr(protocols, "_BLOCK_COLS", 16)
    monkeypatch.setattr(protocols, "_BLOCK_VALUES", 7 * 16)


@pytest.mark.parametrize("source", ["real", "random"])
def test_neighbours_equal_whole_product_reference(demo_h5: Path, source: str) -> None:
    """Blocked search gives the same neighbours and similarity bits as one whole GEMM."""
    if source == "real":
        tr, te, _ = _real_frame(demo_h5)
    else:
        rng = np.random.default_rng(7)
        tr, te = center_normalize(rng.normal(size=(40000, 48)), rng.normal(size=(90, 48)))
    idx, sim = protocols._neighbours(tr, te, 20, chunk_rows=4096)
    ref_idx, ref_sim = _stable_neighbours(tr, te, 20)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sim, ref_sim)


def _exact_products(x: np.ndarray) -> np.ndarray:
    """Real features rounded to multiples of 1/8: every dot product is exact in float32.

    Tiny blocks run through a different GEMM kernel whose last bit may differ; with exact
    products any block shape gives the reference's bits, so ties are real ties.
    """
    return np.round(x * 8) / np.float32(8)


@pytest.mark.parametrize("k", [1, 4, 5, 7, 20])
@pytest.mark.usefixtures("small_blocks")
def test_neighbours_ties_keep_lower_train_index_at_kth_place(demo_h5: Path, k: int) -> None:
    """Each real train row four times: tied copies rank by index, also across the k-th place.

    The previous search (topk, then a sort of the k it chose) could keep a later copy at
    the k-th place, since topk picks among equal values arbitrarily.
    """
    tr, te, _ = _real_frame(demo_h5)
    copies, te = _exact_products(np.concatenate([tr] * 4)), _exact_products(te)
    idx, sim = protocols._neighbours(copies, te, k, chunk_rows=5)
    ref_idx, ref_sim = _stable_neighbours(copies, te, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sim, ref_sim)


def test_knn_protocol_on_real_features_equals_reference_vote(demo_h5: Path) -> None:
    """k-NN predictions on the real tiles equal the vote over the reference neighbours."""
    feats = read_roi_features(demo_h5)
    train, test = feats.subset("train"), feats.subset("test")
    out = knn_protocol(feats.features[train], feats.labels[train], feats.features[test],
                       n_classes=2, params=KnnParams(chunk_rows=3), seed=0)  # fmt: skip
    tr, te, ytr = _real_frame(demo_h5)
    ref_idx, _ = _stable_neighbours(tr, te, 20)
    for k, pred in ((20, out.pred), (1, out.extra["predictions_at_k"]["1"])):
        np.testing.assert_array_equal(pred, protocols._vote(ytr[ref_idx[:, :k]], 2)[0])


def test_center_normalize_equals_whole_array_expression() -> None:
    """Blocked, threaded centring gives the bits of (x - mean) / max(||x - mean||, 1e-12)."""
    rng = np.random.default_rng(3)
    train = rng.normal(3.0, 2.0, size=(5000, 300))  # float64 in: cast after centring
    test = rng.normal(size=(700, 300)).astype(np.float32)
    mean = train.mean(axis=0, keepdims=True)
    for got, x in zip(center_normalize(train, test), (train, test), strict=True):
        centred = (x - mean).astype(np.float32)
        expected = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


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
