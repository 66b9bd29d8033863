"""ROI-level evaluation protocols on frozen features: linear probe, k-NN and SimpleShot."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "KnnParams",
    "LinearParams",
    "Protocol",
    "ProtocolOutput",
    "SimpleShotParams",
    "center_normalize",
    "get_protocol",
    "register_protocol",
    "knn_protocol",
    "linear_protocol",
    "simpleshot_protocol",
]


@dataclass(frozen=True, kw_only=True)
class ProtocolOutput:
    """Predictions of one protocol on the test set.

    Attributes:
        pred: (N_test,) int64 predicted class indices.
        probs: (N_test, K) float64 class scores used for AUROC / top-k.
        extra: protocol-specific results, read by the protocol's ``summarise`` (or written
            to metrics.json as they are when it has none).
    """

    pred: np.ndarray
    probs: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class LinearParams:
    """Linear probe settings (config key ``evaluate.linear``).

    Attributes:
        max_iter: L-BFGS iterations (UNI: 1000).
        C: inverse regularisation; None = UNI's rule feature_dim * n_classes / 100.
        backend: ``uni_torch`` (UNI's objective, see ``linear_protocol``) or ``sklearn``.
        tol: gradient tolerance of L-BFGS (torch ``tolerance_grad``, sklearn ``tol``).
    """

    max_iter: int = 1000
    C: float | None = None
    backend: Literal["uni_torch", "sklearn"] = "uni_torch"
    tol: float = 1e-7

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ConfigError(f"evaluate.linear.max_iter must be >= 1, got {self.max_iter}")
        if self.C is not None and self.C <= 0:
            raise ConfigError(f"evaluate.linear.C must be > 0 or null, got {self.C}")
        if self.backend not in ("uni_torch", "sklearn"):
            raise ConfigError(
                f"evaluate.linear.backend must be 'uni_torch' or 'sklearn', got {self.backend!r}"
            )


@dataclass(frozen=True, kw_only=True)
class KnnParams:
    """k-NN settings (config key ``evaluate.knn``).

    Attributes:
        k: neighbours for the reported prediction (UNI: 20).
        extra_k: further k whose balanced accuracy is also reported (UNI also shows 1-NN).
        chunk_rows: test rows per distance block at most (a block also holds at most 2^25
            products, 128 MB, so memory stays bounded whatever N_train is).
    """

    k: int = 20
    extra_k: tuple[int, ...] = (1,)
    chunk_rows: int = 4096

    def __post_init__(self) -> None:
        if self.k < 1 or any(k < 1 for k in self.extra_k):
            raise ConfigError(f"evaluate.knn.k and extra_k must be >= 1, got {self.k}")
        if self.chunk_rows < 1:
            raise ConfigError(f"evaluate.knn.chunk_rows must be >= 1, got {self.chunk_rows}")
        object.__setattr__(self, "extra_k", tuple(int(k) for k in self.extra_k))


@dataclass(frozen=True, kw_only=True)
class SimpleShotParams:
    """SimpleShot settings (config key ``evaluate.simpleshot``).

    Attributes:
        temperature: softmax temperature turning -distance into class scores (AUROC only).
    """

    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(
                f"evaluate.simpleshot.temperature must be > 0, got {self.temperature}"
            )


def center_normalize(train_x: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Subtract the train mean from every set, then L2-normalise each row (UNI's k-NN frame).

    Returns float32 arrays. Rows are processed in cache-sized blocks on
    ``torch.get_num_threads()`` threads (numpy ufuncs release the GIL); each row's result
    is the same bits as the whole-array expression, since every step is per row.
    """
    mean = train_x.mean(axis=0, keepdims=True)
    return tuple(_center_normalize_rows(x, mean) for x in (train_x, *others))


def _center_normalize_rows(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(x - mean) / max(||x - mean||, 1e-12) per row into a fresh float32 array."""
    out = np.empty(x.shape, dtype=np.float32)
    # ~4 MB per block: the centred rows are still in cache when normed and divided.
    step = max(1, (1 << 20) // max(1, x.shape[1] if x.ndim > 1 else 1))

    def one(start: int) -> None:
        rows = slice(start, start + step)
        out[rows] = x[rows] - mean  # promoted dtype, then cast: as (x - mean).astype(f32)
        norm = np.linalg.norm(out[rows], axis=1, keepdims=True)
        np.divide(out[rows], np.maximum(norm, 1e-12), out=out[rows])

    starts = range(0, len(x), step)
    workers = min(torch.get_num_threads(), len(starts))
    if workers <= 1:
        for start in starts:
            one(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, starts))
    return out


def _uni_torch_logreg(
    x: np.ndarray, y: np.ndarray, test_x: np.ndarray, n_classes: int, c: float, p: LinearParams
) -> np.ndarray:
    """UNI's torch probe: softmax layer, zero init, L-BFGS on CE + (0.5 / C) ||W||_F."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    layer = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(
        layer.parameters(),
        max_iter=p.max_iter,
        tolerance_grad=p.tol,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = layer(xt)  # (N, K)
        loss = torch.nn.functional.cross_entropy(logits, yt) + (0.5 / c) * layer.weight.norm()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = layer(torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32)))
        return torch.softmax(logits, dim=1).double().numpy()


def _sklearn_logreg(
    x: np.ndarray, y: np.ndarray, test_x: np.ndarray, n_classes: int, c: float, p: LinearParams
) -> np.ndarray:
    """scikit-learn lbfgs logistic regression with C passed through unchanged."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=p.max_iter, tol=p.tol, solver="lbfgs")
    model.fit(x, y)
    probs = np.zeros((len(test_x), n_classes))
    probs[:, model.classes_] = model.predict_proba(test_x)
    return probs


_LOGREG_BACKENDS = {"uni_torch": _uni_torch_logreg, "sklearn": _sklearn_logreg}


def linear_protocol(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    n_classes: int,
    params: LinearParams,
    seed: int,
) -> ProtocolOutput:
    """Multinomial logistic regression on raw (unstandardised) features, L-BFGS.

    ``C`` defaults to UNI's feature_dim x n_classes / 100. What that C means depends on the
    objective. UNI's published code (``use_sklearn=False``, its default) fits a K-output
    softmax layer with torch L-BFGS (strong-Wolfe line search, weights and bias starting
    at 0) on ``mean cross-entropy + (1 / C) * 0.5 * ||W||_F``: the Frobenius norm is *not*
    squared and the bias is not penalised. That is backend ``uni_torch`` (the default).
    scikit-learn's lbfgs minimises ``C * sum cross-entropy + 0.5 * ||W||_F^2`` (i.e. mean
    loss + ||W||^2 / (2 C N)), its intercept also unpenalised (checked in sklearn 1.9.1
    ``_linear_loss.py``: the L2 term takes the coefficients without the intercept). Backend
    ``sklearn`` passes the same number as sklearn's C, as UNI's ``use_sklearn=True`` path
    did; with 2 classes sklearn fits one binomial weight vector rather than a 2-way softmax.
    For one C the two backends regularise differently, so their probes differ slightly.
    ``seed`` seeds torch for parity; both backends start from a fixed point.
    """
    c = params.C if params.C is not None else train_x.shape[1] * n_classes / 100.0
    logger.info("linear probe: backend=%s C=%s max_iter=%s", params.backend, c, params.max_iter)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probs = _LOGREG_BACKENDS[params.backend](train_x, train_y, test_x, n_classes, c, params)
    pred = np.argmax(probs, axis=1).astype(np.int64)
    return ProtocolOutput(pred=pred, probs=probs, extra={"C": c, "backend": params.backend})


# Similarity blocks hold at most this many float32 values (128 MB), whatever chunk_rows is.
_BLOCK_VALUES = 1 << 25
# Train rows per similarity block. On 100k x 1024 train features, 1,024 x 32,768 blocks ran
# within about 1.1x of the bare GEMM (benchmarks/README.md); 16k and 100k columns no better.
_BLOCK_COLS = 1 << 15


def _neighbours(
    train_x: np.ndarray, test_x: np.ndarray, k: int, chunk_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (N_test, k) of the k nearest train rows by Euclidean distance, nearest first.

    Rows are unit vectors so ||a - b||^2 = 2 - 2 a.b, and the k nearest are the k largest
    products. Order is (-similarity, train index): equal distances keep the lower train
    index first, also at the k-th place. Products are one float32 GEMM per block of at
    most ``chunk_rows`` test rows x 32,768 train rows (fewer rows if that would pass
    ``_BLOCK_VALUES``), written into one reused buffer; each block hands k + 1 candidates
    on and one sort per test chunk picks the k. Memory beyond the inputs is that buffer
    (at most 128 MB) and the candidates, (chunk rows) x (k + 1) per block.

    Returns:
        (indices, similarities), both (N_test, k); similarities are float32 dot products.
    """
    n_train, n_test = len(train_x), len(test_x)
    k = min(k, n_train)
    train_t = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    test_t = torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32))
    cols = min(n_train, _BLOCK_COLS)
    rows = max(1, min(chunk_rows, n_test, _BLOCK_VALUES // cols))
    buf = torch.empty(rows * cols, dtype=torch.float32)
    idx_out = np.empty((n_test, k), dtype=np.int64)
    sim_out = np.empty((n_test, k), dtype=np.float32)
    for r0 in range(0, n_test, rows):
        queries = test_t[r0 : r0 + rows]  # (B, D)
        cand_sim, cand_idx = [], []
        for c0 in range(0, n_train, cols):
            block = train_t[c0 : c0 + cols]  # (C, D)
            sim = buf[: len(queries) * len(block)].view(len(queries), len(block))
            torch.mm(queries, block.T, out=sim)  # (B, C)
            top_sim, top_idx = _block_candidates(sim, k)
            cand_sim.append(top_sim)
            cand_idx.append(top_idx + c0)
        # numpy on one thread: small torch ops each pay a parallel region's wake-up, which
        # on a loaded machine costs more than the work.
        cand_sim, cand_idx = np.concatenate(cand_sim, 1), np.concatenate(cand_idx, 1)
        order = np.lexsort((cand_idx, -cand_sim), axis=1)[:, :k]
        idx_out[r0 : r0 + len(queries)] = np.take_along_axis(cand_idx, order, axis=1)
        sim_out[r0 : r0 + len(queries)] = np.take_along_axis(cand_sim, order, axis=1)
    return idx_out, sim_out


def _block_candidates(sim: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of sim (B, C): values and columns that include its k best by (-value, column).

    topk's choice among equal values is unspecified, so it takes k + 1: where the k-th and
    (k + 1)-th values differ the k best are among them whatever it chose. Rows tied across
    the k-th place (duplicate train rows, for example) are redone exactly: the k lowest
    columns among the tied values.
    """
    n_cols = sim.shape[1]
    if k >= n_cols:
        return sim.numpy().copy(), np.broadcast_to(np.arange(n_cols), sim.shape).copy()
    top_sim, top_idx = torch.topk(sim, k + 1, dim=1, largest=True, sorted=True)
    top_sim, top_idx = top_sim.numpy(), top_idx.numpy()
    for r in np.flatnonzero(top_sim[:, k - 1] == top_sim[:, k]):
        row = sim[r].numpy()
        cols = np.flatnonzero(row >= top_sim[r, k - 1])  # ascending
        keep = cols[np.lexsort((cols, -row[cols]))[: k + 1]]
        top_sim[r], top_idx[r] = row[keep], keep
    return top_sim, top_idx


def _vote(neigh_labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote over (N, k) neighbour labels ordered nearest first.

    Tie rule: among the classes with the most votes, the one whose nearest member ranks
    first wins. Returns (pred, vote fractions (N, K)).
    """
    n, k = neigh_labels.shape
    counts = np.zeros((n, n_classes))
    first_rank = np.full((n, n_classes), k, dtype=np.int64)
    rows = np.arange(n)
    for rank in range(k - 1, -1, -1):
        labels = neigh_labels[:, rank]
        counts[rows, labels] += 1
        first_rank[rows, labels] = rank
    score = counts * (k + 1) - first_rank
    return np.argmax(score, axis=1).astype(np.int64), counts / k


def knn_protocol(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    n_classes: int,
    params: KnnParams,
    seed: int,
) -> ProtocolOutput:
    """k-NN on centred, L2-normalised features; class scores are the vote fractions.

    ``extra["predictions_at_k"]`` holds the predictions at each ``params.extra_k`` (as
    lists), which run_evaluate scores too.
    """
    del seed  # deterministic
    tr, te = center_normalize(train_x, test_x)
    k_max = min(max((params.k, *params.extra_k)), len(tr))
    idx, _ = _neighbours(tr, te, k_max, params.chunk_rows)
    labels = train_y.astype(np.int64)[idx]  # (N_test, k_max)
    pred, probs = _vote(labels[:, : min(params.k, k_max)], n_classes)
    at_k = {str(k): _vote(labels[:, : min(k, k_max)], n_classes)[0] for k in params.extra_k}
    return ProtocolOutput(pred=pred, probs=probs, extra={"k": params.k, "predictions_at_k": at_k})


def simpleshot_protocol(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    n_classes: int,
    params: SimpleShotParams,
    seed: int,
) -> ProtocolOutput:
    """Nearest class mean (prototypes of centred, normalised train rows), Euclidean.

    Class scores are softmax(-distance / temperature); prototypes are not re-normalised.
    """
    del seed
    tr, te = center_normalize(train_x, test_x)
    protos = np.stack([tr[train_y == c].mean(axis=0) for c in range(n_classes)])  # (K, D)
    sq = (te**2).sum(1)[:, None] + (protos**2).sum(1)[None, :] - 2.0 * te @ protos.T  # (N, K)
    dist = np.sqrt(np.maximum(sq, 0.0))
    logits = -dist.astype(np.float64) / params.temperature
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return ProtocolOutput(pred=np.argmin(dist, axis=1).astype(np.int64), probs=probs)


Summariser = Callable[[ProtocolOutput, np.ndarray, int], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """A registered protocol.

    Attributes:
        fn: ``(train_x, train_y, test_x, *, n_classes, params, seed) -> ProtocolOutput``.
        params_cls: its parameter dataclass (config key ``evaluate.<name>``).
        summarise: optional ``(output, y_test, n_classes) -> dict`` giving JSON-able
            ``extra`` results and ``per_sample`` 0/1 arrays (reported as mean + bootstrap CI).
    """

    fn: Callable[..., ProtocolOutput]
    params_cls: type
    summarise: Summariser | None = None


def _knn_summary(output: ProtocolOutput, y_test: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Balanced accuracy at each extra k (UNI also reports 1-NN)."""
    from unipipe.evaluate.metrics import MetricInput, balanced_accuracy

    dummy = np.zeros((len(y_test), n_classes))
    at_k = {
        k: balanced_accuracy(MetricInput(y_true=y_test, y_pred=pred, probs=dummy))
        for k, pred in output.extra["predictions_at_k"].items()
    }
    return {"extra": {"k": output.extra["k"], "balanced_accuracy_at_k": at_k}}


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(
    name: str, fn: Callable[..., ProtocolOutput], params_cls: type,
    summarise: Summariser | None = None,
) -> None:  # fmt: skip
    """Add a protocol to ``PROTOCOLS`` (modules of unipipe.evaluate register on import)."""
    if name in PROTOCOLS:
        raise ConfigError(f"protocol {name!r} is registered twice")
    PROTOCOLS[name] = Protocol(fn=fn, params_cls=params_cls, summarise=summarise)


register_protocol("linear", linear_protocol, LinearParams)
register_protocol("knn", knn_protocol, KnnParams, _knn_summary)
register_protocol("simpleshot", simpleshot_protocol, SimpleShotParams)


def get_protocol(name: str) -> Protocol:
    """The registered protocol ``name``; the error lists the registered names."""
    if name not in PROTOCOLS:
        raise ConfigError(
            f"unknown protocol {name!r} in task 'protocols'; known: {sorted(PROTOCOLS)}"
        )
    return PROTOCOLS[name]
