"""Stage entry point: one protocol on one task's ROI features -> metrics.json + predictions."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from unipipe.config import build_params
from unipipe.errors import ConfigError
from unipipe.evaluate.features import RoiFeatures, read_roi_features
from unipipe.evaluate.metrics import bootstrap_mean_ci, compute_metrics
from unipipe.evaluate.protocols import ProtocolOutput, get_protocol
from unipipe.provenance import to_jsonable, write_json, write_parquet, write_sidecar

logger = logging.getLogger(__name__)

__all__ = ["BootstrapParams", "run_evaluate", "write_predictions"]

DEFAULT_METRICS = ("balanced_accuracy", "weighted_f1", "auroc")


@dataclass(frozen=True, kw_only=True)
class BootstrapParams:
    """Confidence intervals (config key ``evaluate.bootstrap``).

    Attributes:
        n_resamples: bootstrap resamples of the test set (UNI: 1000); 0 = no intervals.
        ci: interval coverage (0.95 = 2.5th..97.5th percentiles).
    """

    n_resamples: int = 1000
    ci: float = 0.95

    def __post_init__(self) -> None:
        if self.n_resamples < 0:
            raise ConfigError(f"evaluate.bootstrap.n_resamples must be >= 0: {self.n_resamples}")
        if not 0 < self.ci < 1:
            raise ConfigError(f"evaluate.bootstrap.ci must be in (0, 1), got {self.ci}")


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: undefined metrics are written as null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _split_rows(feats: RoiFeatures, task: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices from the task's ``split`` (train may list several splits)."""
    split = dict(task.get("split") or {})
    train = feats.subset(split.get("train", "train"))
    test = feats.subset(split.get("test", "test"))
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(
            f"task {task.get('id')}: split {split} selects {len(train)} train and {len(test)} "
            f"test rows; the h5 has splits {sorted(set(feats.split))}"
        )
    return train, test


def write_predictions(
    path: str | os.PathLike[str],
    *,
    feats: RoiFeatures,
    rows: np.ndarray,
    output: ProtocolOutput,
) -> None:
    """predictions.parquet: row, path, label, pred and ``prob_<class>`` per test ROI."""
    columns: dict[str, Any] = {
        "row": pa.array(rows.astype(np.int64)),
        "path": pa.array([str(p) for p in feats.paths[rows]]),
        "label": pa.array(feats.labels[rows]),
        "pred": pa.array(output.pred.astype(np.int64)),
    }
    for c, name in enumerate(feats.label_names):
        columns[f"prob_{name}"] = pa.array(output.probs[:, c].astype(np.float64))
    write_parquet(pa.table(columns), path)


def _summarise(
    proto: Any, output: ProtocolOutput, y_test: np.ndarray, n_classes: int,
    boot: BootstrapParams, seed: int,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:  # fmt: skip
    """The protocol's extra results and its own scores.

    A summary may give ``per_sample`` 0/1 arrays (reported as mean + bootstrap CI) and
    ``scores`` ({name: {value, ci_low, ci_high}}) that replace the bootstrap figures.
    """
    if proto.summarise is None:
        return to_jsonable({k: v for k, v in output.extra.items()}), {}
    summary = proto.summarise(output, y_test, n_classes)
    scores = {}
    for name, per_sample in summary.get("per_sample", {}).items():
        low, high = bootstrap_mean_ci(per_sample, n_resamples=boot.n_resamples, ci=boot.ci,
                                      seed=seed)  # fmt: skip
        scores[name] = {"value": float(np.mean(per_sample)), "ci_low": low, "ci_high": high}
    scores.update(summary.get("scores", {}))
    return to_jsonable(summary.get("extra", {})), scores


def run_evaluate(
    features_h5: str | os.PathLike[str],
    *,
    task: Mapping[str, Any],
    protocol: str,
    params: Mapping[str, Any] | None,
    seed: int,
    metrics_json: str | os.PathLike[str],
    predictions_parquet: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
) -> None:
    """Fit ``protocol`` on the task's train ROIs, score the test ROIs, write the outputs.

    Args:
        features_h5: ROI feature file of one encoder on the task.
        task: the task entry (``id``, ``split``, ``metrics``; see ``Task.as_spec``).
        protocol: a key of ``PROTOCOLS``.
        params: the ``evaluate`` config section: ``bootstrap`` and one sub-section per
            protocol (``linear``, ``knn``, ``simpleshot``), all optional.
        seed: seeds the protocol and the bootstrap; equal seeds give equal bytes.
        metrics_json: point values + ``<metric>_ci_low``/``<metric>_ci_high`` + run facts.
        predictions_parquet: per-test-ROI predictions and class scores.
        sidecar: the stage's provenance JSON.
    """
    params = dict(params or {})
    proto = get_protocol(protocol)
    proto_params = build_params(proto.params_cls, params.get(protocol), f"evaluate.{protocol}")
    boot = build_params(BootstrapParams, params.get("bootstrap"), "evaluate.bootstrap")
    names = list(task.get("metrics") or DEFAULT_METRICS)
    logger.info("evaluate %s / %s on %s: %s", task.get("id"), protocol, features_h5, proto_params)

    feats = read_roi_features(features_h5)
    train, test = _split_rows(feats, task)
    n_classes = len(feats.label_names)
    output = proto.fn(
        feats.features[train],
        feats.labels[train],
        feats.features[test],
        n_classes=n_classes,
        params=proto_params,
        seed=seed,
    )

    y_test = feats.labels[test]
    scores = compute_metrics(
        y_test, output.pred, output.probs, names=names, n_resamples=boot.n_resamples,
        ci=boot.ci, seed=seed,
    )  # fmt: skip
    record: dict[str, Any] = {
        "task": task.get("id"),
        "protocol": protocol,
        "encoder": feats.encoder,
        "img_size": feats.img_size,
        "n_train": len(train),
        "n_test": len(test),
        "n_classes": n_classes,
        "label_names": feats.label_names,
        "seed": seed,
        "bootstrap": {"n_resamples": boot.n_resamples, "ci": boot.ci},
    }
    record["extra"], per_sample_scores = _summarise(proto, output, y_test, n_classes, boot, seed)
    for name, s in {**scores, **per_sample_scores}.items():
        record[name] = _finite_or_none(s["value"])
        record[f"{name}_ci_low"] = _finite_or_none(s["ci_low"])
        record[f"{name}_ci_high"] = _finite_or_none(s["ci_high"])

    write_json(metrics_json, record)
    write_predictions(predictions_parquet, feats=feats, rows=test, output=output)
    write_sidecar(
        sidecar,
        stage="evaluate",
        params={"task": dict(task), "protocol": protocol, "protocol_params": proto_params,
                "bootstrap": boot, "seed": seed},
        inputs=[features_h5],
    )  # fmt: skip
    logger.info("%s / %s: balanced accuracy %s", task.get("id"), protocol, record.get(names[0]))
