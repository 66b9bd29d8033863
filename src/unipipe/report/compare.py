"""Encoder comparisons: a paired permutation test per task, protocol and encoder pair."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from unipipe.errors import ConfigError
from unipipe.evaluate.stats import compare_predictions
from unipipe.provenance import library_versions, path_sha256, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "COMPARABLE_PROTOCOLS",
    "COMPARISON_COLUMNS",
    "comparison_paths",
    "comparison_table",
    "run_compare_encoders",
]

# Protocols whose predictions.parquet holds the very predictions their metrics.json scores,
# one row per test sample, so swapping two encoders' rows tests the reported figure.
# Left out: ``fewshot`` stores only the first episode at the largest K while its figure is
# the mean over episodes; ``retrieval`` scores hits among the ranked neighbours (Acc@K),
# which the file does not hold (its ``pred`` is only the top-5 vote); ``segmentation_probe``
# writes no per-sample predictions.
COMPARABLE_PROTOCOLS = ("linear", "knn", "simpleshot", "abmil", "mi_simpleshot")

# Columns of ``comparison_table``, in order.
COMPARISON_COLUMNS = ("task", "protocol", "encoder_a", "encoder_b", "metric", "difference",
                      "p_value", "n_test", "n_permutations")  # fmt: skip


def comparison_paths(
    results_dir: str, task_protocols: Mapping[str, Sequence[str]], encoders: Sequence[str]
) -> list[str]:
    """{results_dir}/eval/compare/{task}/{protocol}/{a}__vs__{b}.json of every comparison.

    Args:
        results_dir: the workflow's ``results_dir``.
        task_protocols: task id -> its evaluated protocols; only ``COMPARABLE_PROTOCOLS`` count.
        encoders: evaluated encoder names; each unordered pair once, as (a, b) with a < b.
    """
    pairs = list(itertools.combinations(sorted(set(encoders)), 2))
    return [
        f"{results_dir}/eval/compare/{task}/{protocol}/{a}__vs__{b}.json"
        for task, protocols in task_protocols.items()
        for protocol in protocols
        if protocol in COMPARABLE_PROTOCOLS
        for a, b in pairs
    ]


def run_compare_encoders(
    predictions_a: str | os.PathLike[str],
    predictions_b: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    *,
    task: str,
    protocol: str,
    encoder_a: str,
    encoder_b: str,
    metric: str,
    n_permutations: int = 1000,
    seed: int = 0,
) -> None:
    """Test whether encoders A and B differ on one task, and write the result as JSON.

    Args:
        predictions_a: encoder A's predictions.parquet of (task, protocol).
        predictions_b: encoder B's, on the same test samples.
        out_json: the comparison record: the names, ``difference`` = metric(A) - metric(B),
            two-sided ``p_value``, ``n_test``, ``n_permutations``, ``seed``, and the library
            versions and input checksums (it is its own sidecar).
        task: task id.
        protocol: a protocol of ``COMPARABLE_PROTOCOLS``.
        encoder_a: name of encoder A.
        encoder_b: name of encoder B.
        metric: the metric compared (the task's first metric), a key of ``METRICS``.
        n_permutations: random swaps drawn (config ``evaluate.compare.n_permutations``).
        seed: seeds the swaps.
    """
    if protocol not in COMPARABLE_PROTOCOLS:
        raise ConfigError(
            f"protocol {protocol!r} has no per-sample predictions to compare; comparable: "
            f"{list(COMPARABLE_PROTOCOLS)}"
        )
    if n_permutations < 1:
        raise ConfigError(f"evaluate.compare.n_permutations must be >= 1, got {n_permutations}")
    result = compare_predictions(predictions_a, predictions_b, metric=metric,
                                 n_permutations=n_permutations, seed=seed)  # fmt: skip
    record = {
        "task": task, "protocol": protocol, "encoder_a": encoder_a, "encoder_b": encoder_b,
        "metric": metric, "difference": result.difference, "p_value": result.p_value,
        "n_test": len(pd.read_parquet(predictions_a, columns=["label"])),
        "n_permutations": result.n_permutations, "seed": seed,
        "versions": library_versions(),
        "inputs": {os.fspath(p): path_sha256(p) for p in (predictions_a, predictions_b)},
    }  # fmt: skip
    write_json(out_json, record)
    logger.info("%s / %s: %s - %s on %s = %+.4f (p = %.4f)", task, protocol, encoder_a,
                encoder_b, metric, result.difference, result.p_value)  # fmt: skip


def comparison_table(compare_jsons: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read comparison records into a table sorted by task, protocol and encoder pair."""
    rows = []
    for path in compare_jsons:
        with open(path) as fh:
            record = json.load(fh)
        missing = [c for c in COMPARISON_COLUMNS if c not in record]
        if missing:
            raise ConfigError(f"{os.fspath(path)} lacks {missing}; rerun rule compare_encoders")
        rows.append({c: record[c] for c in COMPARISON_COLUMNS})
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    keys = ["task", "protocol", "encoder_a", "encoder_b"]
    return table.sort_values(keys, kind="stable").reset_index(drop=True)
