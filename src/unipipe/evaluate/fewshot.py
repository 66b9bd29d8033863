"""Few-shot ROI curves: K labelled train ROIs per class, many episodes, the whole test set."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from unipipe.errors import ConfigError
from unipipe.evaluate.metrics import METRICS, MetricInput
from unipipe.evaluate.protocols import PROTOCOLS, ProtocolOutput, register_protocol

logger = logging.getLogger(__name__)

__all__ = ["FewShotParams", "fewshot_curve", "fewshot_protocol", "sample_support"]


@dataclass(frozen=True, kw_only=True)
class FewShotParams:
    """Few-shot settings (config key ``evaluate.fewshot``).

    Attributes:
        shots: K labelled ROIs per class (UNI: 1, 2, 4, ..., 256); a K above the smallest
            class's train count is skipped and listed in the output.
        n_episodes: support sets drawn per K (UNI: 1000).
        learner: the classifier fitted on each support set (UNI's ROI curves: SimpleShot).
        metrics: metrics averaged over episodes.
    """

    shots: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    n_episodes: int = 1000
    learner: Literal["simpleshot", "linear", "knn"] = "simpleshot"
    metrics: tuple[str, ...] = ("balanced_accuracy", "weighted_f1")

    def __post_init__(self) -> None:
        if not self.shots or min(self.shots) < 1:
            raise ConfigError(f"evaluate.fewshot.shots must be positive, got {self.shots}")
        if self.n_episodes < 1:
            raise ConfigError(f"evaluate.fewshot.n_episodes must be >= 1: {self.n_episodes}")
        if self.learner not in ("simpleshot", "linear", "knn"):
            raise ConfigError(
                f"evaluate.fewshot.learner must be simpleshot, linear or knn: {self.learner!r}"
            )
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise ConfigError(f"evaluate.fewshot.metrics: unknown {sorted(unknown)}")
        object.__setattr__(self, "shots", tuple(int(k) for k in self.shots))
        object.__setattr__(self, "metrics", tuple(self.metrics))


def sample_support(
    train_y: np.ndarray, n_classes: int, shots: int, rng: np.random.Generator
) -> np.ndarray:
    """Train row indices of one episode: ``shots`` distinct rows of each class, sorted."""
    return _sample_from_pools(_class_pools(train_y, n_classes), shots, rng)


def _class_pools(train_y: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """Train row indices of each class (found once, not once per episode)."""
    return [np.flatnonzero(train_y == c) for c in range(n_classes)]


def _sample_from_pools(pools: list[np.ndarray], shots: int, rng: np.random.Generator) -> np.ndarray:
    """``sample_support`` from precomputed class pools: the same draws from the same rng."""
    picks = [rng.choice(pool, size=shots, replace=False) for pool in pools]
    return np.sort(np.concatenate(picks))


def fewshot_protocol(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    n_classes: int,
    params: FewShotParams,
    seed: int,
) -> ProtocolOutput:
    """Run the episodes; the test labels are scored later from the stored predictions.

    Support sets come from the train split and the query is the whole test split, so they
    never overlap. ``extra["episodes"]`` maps K to the (n_episodes, N_test) predictions;
    ``pred``/``probs`` are the first episode at the largest K run (for predictions.parquet).
    In metrics.json the ``fewshot.metrics`` are the episode means at the largest K with
    2.5-97.5% episode quantiles as the interval; other task metrics are that first
    episode's, with bootstrap intervals. With the SimpleShot learner the other episodes
    run batched (``_BatchedSimpleShot``): seconds rather than minutes on 100k train rows.
    """
    rng = np.random.default_rng(seed)
    smallest = int(min(np.sum(train_y == c) for c in range(n_classes)))
    shots = [k for k in params.shots if k <= smallest]
    skipped = [k for k in params.shots if k > smallest]
    if not shots:
        raise ConfigError(f"evaluate.fewshot.shots {params.shots}: smallest class has {smallest}")
    learner = PROTOCOLS[params.learner]
    learner_params = learner.params_cls()  # the learner's defaults (k-NN: k=20 capped)
    pools = _class_pools(train_y, n_classes)
    batched = None
    if params.learner == "simpleshot":
        batched = _BatchedSimpleShot(train_x, train_y, test_x)
    episodes: dict[str, np.ndarray] = {}
    last: ProtocolOutput | None = None
    for k in shots:
        supports = [_sample_from_pools(pools, k, rng) for _ in range(params.n_episodes)]
        # The first episode runs through the learner itself: its scores go to
        # predictions.parquet, and the other episodes need predictions only.
        last = learner.fn(
            train_x[supports[0]], train_y[supports[0]], test_x, n_classes=n_classes,
            params=learner_params, seed=seed,
        )  # fmt: skip
        if batched is not None:
            preds = batched.predict(supports, n_classes)
        else:
            preds = np.empty((params.n_episodes, len(test_x)), dtype=np.int64)
            for e, support in enumerate(supports[1:], start=1):
                preds[e] = learner.fn(
                    train_x[support], train_y[support], test_x, n_classes=n_classes,
                    params=learner_params, seed=seed + e,
                ).pred  # fmt: skip
        preds[0] = last.pred
        episodes[str(k)] = preds
        logger.info("few-shot K=%s: %s episodes", k, params.n_episodes)
    return ProtocolOutput(
        pred=last.pred,
        probs=last.probs,
        extra={"episodes": episodes, "skipped_shots": skipped, "metrics": list(params.metrics)},
    )


# Test x episode-vector products per GEMM: 2^24 float32 values (64 MB).
_EPISODE_BLOCK_VALUES = 1 << 24


class _BatchedSimpleShot:
    """SimpleShot predictions of many episodes from batched test x prototype products.

    Per episode, SimpleShot centres everything on the support mean m, L2-normalises, and
    picks the nearest class mean p_c (see ``simpleshot_protocol``). Writing x~ for a test
    row and m~ for m, both minus the train mean (so products are well conditioned):
    ||x - m||^2 = |x~|^2 - 2 (x~.m~ - |m~|^2 / 2), and the normalised row's distance to
    p_c orders classes as |p_c|^2 - 2 (x~.p_c - m~.p_c) / ||x - m||. With a column of ones
    appended to the test rows, both brackets are products with C + 1 fixed vectors per
    episode (C classes), so many episodes share one float32 GEMM and the support side is
    a few passes over the support rows. The arithmetic differs from the per-episode path
    in rounding only: a test row can change class only where two of its class distances
    agree to about 1e-6 (relative); tests/evaluate/test_fewshot.py bounds this.
    """

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> None:
        self.train = np.ascontiguousarray(train_x, dtype=np.float32)
        self.train_y = train_y.astype(np.int64)
        self.centre = self.train.mean(axis=0)  # (D,)
        test = np.ones((len(test_x), train_x.shape[1] + 1), dtype=np.float32)  # (N, D + 1)
        test[:, :-1] = test_x - self.centre
        self.test = torch.from_numpy(test)
        self.test_sq = torch.from_numpy(np.square(test[:, :-1], dtype=np.float64).sum(1))

    def _vectors(self, support: np.ndarray, n_classes: int) -> np.ndarray:
        """(C + 1, D + 1): rows [p_c, -m~.p_c] for each class, then [m~, -|m~|^2 / 2].

        numpy on one thread: the caller runs episodes on a thread pool, which on a loaded
        machine beats a parallel region (and its thread wake-ups) per small array op.
        """
        by_class = support[np.argsort(self.train_y[support], kind="stable")]
        rows = self.train[by_class]  # (S, D), class-major: K rows of class 0, then 1, ...
        mean = rows.mean(axis=0)
        rows -= mean
        inv = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", rows, rows)), 1e-12)  # (S,)
        shape = (n_classes, -1)
        protos = np.einsum("ck,ckd->cd", inv.reshape(shape), rows.reshape(*shape, rows.shape[1]))
        protos /= len(support) // n_classes  # (C, D): class means of the normalised rows
        mean -= self.centre
        out = np.empty((n_classes + 1, rows.shape[1] + 1), dtype=np.float32)
        out[:n_classes, :-1], out[:n_classes, -1] = protos, -(protos @ mean)
        out[n_classes, :-1], out[n_classes, -1] = mean, -0.5 * float(mean @ mean)
        return out

    def predict(self, supports: list[np.ndarray], n_classes: int) -> np.ndarray:
        """(n_episodes, N_test) int64 predicted classes, one row per support set."""
        n_test, width = len(self.test), n_classes + 1
        per_gemm = max(1, _EPISODE_BLOCK_VALUES // (n_test * width))
        preds = np.empty((len(supports), n_test), dtype=np.int64)
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            for e0 in range(0, len(supports), per_gemm):
                group = supports[e0 : e0 + per_gemm]
                vecs = np.stack(list(pool.map(self._vectors, group, [n_classes] * len(group))))
                vecs = torch.from_numpy(vecs)  # (E, C + 1, D + 1)
                prods = (self.test @ vecs.flatten(0, 1).T).view(n_test, len(group), width)
                sq = self.test_sq[:, None] - 2 * prods[:, :, n_classes].double()  # (N, E)
                scale = (-2.0 / sq.clamp_min(0).sqrt().clamp_min(1e-12)).float()
                p_sq = vecs[:, :n_classes, :-1].square().sum(2)  # (E, C)
                score = prods[:, :, :n_classes].mul(scale[:, :, None]).add_(p_sq)  # (N, E, C)
                preds[e0 : e0 + len(group)] = score.argmin(dim=2).T.numpy()
        return preds


def fewshot_curve(output: ProtocolOutput, y_test: np.ndarray, n_classes: int) -> dict:
    """Per K: mean, std and 2.5/97.5% quantiles over episodes of each metric (``extra``)."""
    curve = {}
    dummy = np.zeros((len(y_test), n_classes))
    for k, preds in output.extra["episodes"].items():
        row = {"n_episodes": int(len(preds))}
        for name in output.extra["metrics"]:
            values = np.array(
                [METRICS[name](MetricInput(y_true=y_test, y_pred=p, probs=dummy)) for p in preds]
            )
            row[name] = {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "q025": float(np.quantile(values, 0.025)),
                "q975": float(np.quantile(values, 0.975)),
            }
        curve[k] = row
    # Headline = the largest K run: episode mean with the 2.5-97.5% episode quantiles.
    top = curve[max(curve, key=int)]
    scores = {name: {"value": top[name]["mean"], "ci_low": top[name]["q025"],
                     "ci_high": top[name]["q975"]} for name in output.extra["metrics"]}  # fmt: skip
    extra = {"curve": curve, "skipped_shots": output.extra["skipped_shots"],
             "headline_shots": int(max(curve, key=int))}  # fmt: skip
    return {"extra": extra, "scores": scores}


register_protocol("fewshot", fewshot_protocol, FewShotParams, fewshot_curve)
