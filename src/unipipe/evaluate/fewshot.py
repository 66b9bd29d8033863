"""Few-shot ROI curves: K labelled train ROIs per class, many episodes, the whole test set."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

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
    picks = [
        rng.choice(np.flatnonzero(train_y == c), size=shots, replace=False)
        for c in range(n_classes)
    ]
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
    episode's, with bootstrap intervals.
    """
    rng = np.random.default_rng(seed)
    smallest = int(min(np.sum(train_y == c) for c in range(n_classes)))
    shots = [k for k in params.shots if k <= smallest]
    skipped = [k for k in params.shots if k > smallest]
    if not shots:
        raise ConfigError(f"evaluate.fewshot.shots {params.shots}: smallest class has {smallest}")
    learner = PROTOCOLS[params.learner]
    learner_params = learner.params_cls()  # the learner's defaults (k-NN: k=20 capped)
    episodes: dict[str, np.ndarray] = {}
    last: ProtocolOutput | None = None
    for k in shots:
        preds = np.empty((params.n_episodes, len(test_x)), dtype=np.int64)
        for e in range(params.n_episodes):
            support = sample_support(train_y, n_classes, k, rng)
            out = learner.fn(
                train_x[support], train_y[support], test_x, n_classes=n_classes,
                params=learner_params, seed=seed + e,
            )  # fmt: skip
            preds[e] = out.pred
            if e == 0:
                last = out
        episodes[str(k)] = preds
        logger.info("few-shot K=%s: %s episodes", k, params.n_episodes)
    return ProtocolOutput(
        pred=last.pred,
        probs=last.probs,
        extra={"episodes": episodes, "skipped_shots": skipped, "metrics": list(params.metrics)},
    )


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
