"""Wall time of each evaluation protocol on 100k x 1024 random features (CRC-100K-sized).

Usage: .venv/bin/python benchmarks/evaluate/bench_protocols.py [--n-train 100000]
Writes benchmarks/evaluate/out/protocols.json (git-ignored) and logs one line per step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from unipipe.evaluate.metrics import compute_metrics
from unipipe.evaluate.protocols import PROTOCOLS, KnnParams, LinearParams, SimpleShotParams
from unipipe.evaluate.retrieval import RetrievalParams

logger = logging.getLogger("bench_protocols")


def _features(n: int, means: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around ``means`` (K, D) with noise of norm ~8 (overlapping classes)."""
    rng = np.random.default_rng(seed)
    k, d = means.shape
    y = rng.integers(0, k, n)
    x = rng.standard_normal((n, d), dtype=np.float32) * np.float32(8 / np.sqrt(d)) + means[y]
    return x, y


def main() -> None:
    """Time knn, simpleshot, retrieval, bootstrap and the linear probe; write JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=100_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--linear-iters", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    means = (rng.normal(size=(args.classes, args.dim)) / np.sqrt(args.dim)).astype(np.float32)
    xtr, ytr = _features(args.n_train, means, 1)
    xte, yte = _features(args.n_test, means, 2)
    k = args.classes
    result = {"args": vars(args), "load_avg_start": os.getloadavg()[0], "seconds": {}}
    runs = [
        ("knn", KnnParams()),
        ("simpleshot", SimpleShotParams()),
        ("retrieval", RetrievalParams()),
        ("linear", LinearParams(max_iter=args.linear_iters)),
    ]
    for name, params in runs:
        t0 = time.perf_counter()
        out = PROTOCOLS[name].fn(xtr, ytr, xte, n_classes=k, params=params, seed=0)
        result["seconds"][name] = round(time.perf_counter() - t0, 2)
        ba = float(np.mean(out.pred == yte))
        logger.info("%s: %.2f s (accuracy %.3f)", name, result["seconds"][name], ba)
        if name == "knn":
            t0 = time.perf_counter()
            compute_metrics(yte, out.pred, out.probs, names=["balanced_accuracy", "weighted_f1",
                            "auroc"], n_resamples=1000, seed=0)  # fmt: skip
            result["seconds"]["bootstrap_1000x3_metrics"] = round(time.perf_counter() - t0, 2)
            logger.info("bootstrap: %.2f s", result["seconds"]["bootstrap_1000x3_metrics"])
    result["load_avg_end"] = os.getloadavg()[0]
    out_dir = Path(__file__).parent / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "protocols.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
