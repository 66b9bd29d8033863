"""Few-shot slide curves: ABMIL on K train slides per class, several runs, every test slide."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unipipe.config import build_params
from unipipe.errors import ConfigError
from unipipe.evaluate.abmil import AbmilParams, fit_abmil_epochs, predict_abmil
from unipipe.evaluate.fewshot import sample_support
from unipipe.evaluate.metrics import METRICS, MetricInput

logger = logging.getLogger(__name__)

__all__ = ["SlideFewShotParams", "slide_fewshot_curve", "slide_fewshot_protocol"]


@dataclass(frozen=True, kw_only=True)
class SlideFewShotParams:
    """Slide few-shot settings (config key ``evaluate.slide_fewshot``).

    Attributes:
        shots: K slides per class (UNI: 1, 2, 4, 8, 16, 32), drawn from the train and val
            slides together; a K above the smallest class's count there is skipped, logged
            and listed in ``extra.skipped_shots``. Stored sorted, without repeats.
        runs: support sets drawn per K (UNI: 5). Run r at K draws its support from a
            generator seeded by (seed, K, r) and initialises ABMIL with seed + r, so leaving
            out one K changes no other K's results.
        epochs: ABMIL epochs of every run; there is no early stopping. At K = 1 no slide is
            left to hold out, and at larger K a hold-out would either shrink the support
            below K or use labelled slides beyond K. 50 is the number of epochs CLAM always
            runs before its early stopping may act, not a figure from UNI.
        lr: Adam rate of every run; None takes ``evaluate.abmil.lr``.
        metrics: metrics summarised per K over the runs.
    """

    shots: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    runs: int = 5
    epochs: int = 50
    lr: float | None = None
    metrics: tuple[str, ...] = ("balanced_accuracy", "weighted_f1", "auroc")

    def __post_init__(self) -> None:
        if not self.shots or min(self.shots) < 1:
            raise ConfigError(f"evaluate.slide_fewshot.shots must be >= 1, got {self.shots}")
        if self.runs < 1 or self.epochs < 1:
            raise ConfigError(
                f"evaluate.slide_fewshot.runs and epochs must be >= 1: {self.runs}, {self.epochs}"
            )
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"evaluate.slide_fewshot.lr must be > 0 or null, got {self.lr}")
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ConfigError(
                f"evaluate.slide_fewshot.metrics: unknown {unknown}; known: {sorted(METRICS)}"
            )
        object.__setattr__(self, "shots", tuple(sorted({int(k) for k in self.shots})))
        object.__setattr__(self, "metrics", tuple(self.metrics))


def _summary(values: np.ndarray) -> dict[str, float | None]:
    """Mean, std, 2.5/97.5% quantiles, min and max over runs; all None if any is undefined."""
    keys = ("mean", "std", "q025", "q975", "min", "max")
    if not np.isfinite(values).all():
        # e.g. AUROC on a test set holding one class: the same for every run.
        return dict.fromkeys(keys)
    stats = (values.mean(), values.std(), np.quantile(values, 0.025),
             np.quantile(values, 0.975), values.min(), values.max())  # fmt: skip
    return {k: float(v) for k, v in zip(keys, stats, strict=True)}


def slide_fewshot_curve(fitted: Mapping[str, Any], y_test: np.ndarray) -> dict[str, dict]:
    """Per K: the run summary of each metric, in the layout of the ROI few-shot curve.

    Args:
        fitted: what ``slide_fewshot_protocol`` returned beside the probabilities (its
            ``run_probs`` and ``extra.metrics`` are read).
        y_test: (S_test,) class indices of the test slides, used for scoring only.

    Returns:
        ``{str(K): {"n_episodes": runs, metric: {mean, std, q025, q975, min, max}}}``;
        ``n_episodes`` keeps the ROI record's key (a slide run is one episode).
    """
    y_test = np.asarray(y_test)
    curve = {}
    for k, runs in fitted["run_probs"].items():
        row: dict[str, Any] = {"n_episodes": int(len(runs))}
        for name in fitted["extra"]["metrics"]:
            values = np.array([METRICS[name](MetricInput(y_true=y_test, y_pred=p.argmax(1),
                                                         probs=p)) for p in runs])  # fmt: skip
            row[name] = _summary(values)
        curve[k] = row
    return curve


def _run_shot(
    pool: Sequence[np.ndarray], pool_y: np.ndarray, test: Sequence[np.ndarray], k: int,
    *, n_classes: int, fs: SlideFewShotParams, abmil: AbmilParams, seed: int,
) -> tuple[np.ndarray, list[list[int]], list[np.ndarray]]:  # fmt: skip
    """All runs at one K: test probs (runs, S_test, C), support rows, run 0's attention."""
    probs, rows, first_attention = [], [], []
    for r in range(fs.runs):
        support = sample_support(pool_y, n_classes, k, np.random.default_rng([seed, k, r]))
        model, _ = fit_abmil_epochs([pool[i] for i in support], pool_y[support],
                                    n_classes=n_classes, params=abmil, epochs=fs.epochs,
                                    seed=seed + r)  # fmt: skip
        p, attention = predict_abmil(model, test)
        probs.append(p)
        rows.append(support.tolist())
        if r == 0:
            first_attention = attention
    return np.stack(probs), rows, first_attention


def slide_fewshot_protocol(
    data: Any, params: Mapping[str, Any], seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Slide protocol ``abmil_fewshot``: ABMIL on K slides per class, ``runs`` times per K.

    Supports come from the train and val slides only (balanced, no slide twice in a
    support); test slides are only predicted. Their labels are not in ``data``
    (slides._SlideData has none), so the curve is filled in only when ``data`` also has a
    ``y_test`` attribute; otherwise call ``slide_fewshot_curve(fitted, y_test)``.

    Args:
        data: train / y_train / val / y_val / test bags and n_classes (slides._SlideData).
        params: the ``evaluate`` section: ``slide_fewshot`` and ``abmil`` sub-sections.
        seed: seeds the support draws and the ABMIL fits (see SlideFewShotParams.runs).

    Returns:
        The test probabilities (S_test, C) of the first run at the largest K, and a dict:
        ``params`` (both dataclasses), ``extra`` (``curve`` when labels are at hand,
        ``skipped_shots``, ``headline_shots``, ``support_rows`` per K and run as indices
        into the train slides followed by the val slides), ``heatmaps`` (that run's
        attention per test slide) and ``run_probs`` (K -> (runs, S_test, C) array).
    """
    fs = build_params(SlideFewShotParams, params.get("slide_fewshot"), "evaluate.slide_fewshot")
    abmil = build_params(AbmilParams, params.get("abmil"), "evaluate.abmil")
    if fs.lr is not None:
        abmil = dataclasses.replace(abmil, lr=fs.lr)
    pool = [*data.train, *data.val]
    pool_y = np.concatenate([np.asarray(data.y_train), np.asarray(data.y_val)]).astype(np.int64)
    counts = [int(np.sum(pool_y == c)) for c in range(data.n_classes)]
    shots = [k for k in fs.shots if k <= min(counts)]
    skipped = [k for k in fs.shots if k > min(counts)]
    if skipped:
        logger.info("slide few-shot: K %s skipped, train + val slides per class are %s",
                    skipped, counts)  # fmt: skip
    if not shots:
        raise ConfigError(
            f"evaluate.slide_fewshot.shots {list(fs.shots)}: the smallest class has only "
            f"{min(counts)} train + val slides (per class: {counts}); add a smaller K"
        )

    run_probs, support_rows = {}, {}
    for k in shots:
        run_probs[str(k)], support_rows[str(k)], attention = _run_shot(
            pool, pool_y, data.test, k, n_classes=data.n_classes, fs=fs, abmil=abmil, seed=seed
        )
        logger.info("slide few-shot K=%s: %s runs of %s epochs", k, fs.runs, fs.epochs)

    extra: dict[str, Any] = {
        "skipped_shots": skipped, "headline_shots": shots[-1],
        "headline": "first run at the largest K", "metrics": list(fs.metrics),
        "runs": fs.runs, "epochs": fs.epochs, "lr": abmil.lr, "pool_per_class": counts,
        "support_rows": support_rows,
    }  # fmt: skip
    fitted = {"params": {"slide_fewshot": fs, "abmil": abmil}, "extra": extra,
              "heatmaps": attention, "run_probs": run_probs}  # fmt: skip
    if getattr(data, "y_test", None) is not None:
        extra["curve"] = slide_fewshot_curve(fitted, data.y_test)
    return run_probs[str(shots[-1])][0], fitted
