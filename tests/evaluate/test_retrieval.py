"""Tests of unipipe.evaluate.retrieval (Acc@K, MVAcc@5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unipipe.evaluate.protocols import center_normalize
from unipipe.evaluate.retrieval import RetrievalParams, retrieval_hits, retrieval_protocol
from unipipe.evaluate.run import run_evaluate


def test_retrieval_hits_match_brute_force() -> None:
    """Acc@1/3/5 and MVAcc@5 equal a brute-force ranking by Euclidean distance."""
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(80, 6)).astype(np.float32), rng.normal(size=(30, 6))
    ytr, yte = rng.integers(0, 3, 80), rng.integers(0, 3, 30)
    out = retrieval_protocol(train, ytr, test.astype(np.float32), n_classes=3,
                             params=RetrievalParams(), seed=0)  # fmt: skip
    hits = retrieval_hits(out, yte)
    tr, te = center_normalize(train, test.astype(np.float32))
    order = np.argsort(((te[:, None] - tr[None]) ** 2).sum(-1), axis=1, kind="stable")
    for k in (1, 3, 5):
        expected = (ytr[order[:, :k]] == yte[:, None]).any(1)
        np.testing.assert_array_equal(hits[f"acc_at_{k}"], expected)
    majority = np.array([np.bincount(ytr[o[:5]], minlength=3).max() for o in order])
    correct_majority = np.array([np.bincount(ytr[o[:5]], minlength=3)[y] for o, y in
                                 zip(order, yte, strict=True)]) == majority  # fmt: skip
    assert np.all(hits["mvacc_at_5"] <= correct_majority)
    assert hits["acc_at_1"].mean() <= hits["acc_at_3"].mean() <= hits["acc_at_5"].mean()


def test_run_evaluate_retrieval_writes_acc_at_k(demo_h5: Path, demo_task: dict,
                                                tmp_path: Path) -> None:  # fmt: skip
    """metrics.json of retrieval holds acc_at_1/3/5 and mvacc_at_5 with CIs."""
    run_evaluate(demo_h5, task=demo_task, protocol="retrieval",
                 params={"bootstrap": {"n_resamples": 100}}, seed=0,
                 metrics_json=tmp_path / "m.json", predictions_parquet=tmp_path / "p.parquet",
                 sidecar=tmp_path / "s.json")  # fmt: skip
    m = json.loads((tmp_path / "m.json").read_text())
    for key in ("acc_at_1", "acc_at_3", "acc_at_5", "mvacc_at_5"):
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"]
    assert m["acc_at_1"] <= m["acc_at_5"]
