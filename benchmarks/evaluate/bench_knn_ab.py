"""Neighbour search before/after against the GEMM floor, interleaved rounds (loaded machine).

Usage: .venv/bin/python benchmarks/evaluate/bench_knn_ab.py [--n-test 2048 --rounds 3]

Each round times the bare GEMM, the search before blocking and the current one back to
back on the same unit rows (100k x 1024 train), so the ratios of a round share one load;
logs wall and process CPU seconds per round and the median wall ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import torch
from bench_floor import _gemm_floor, _neighbours_before

from unipipe.evaluate import protocols

logger = logging.getLogger("bench_knn_ab")


def main() -> None:
    """Interleaved rounds of floor, before and after; log per round and the medians."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=100_000)
    ap.add_argument("--n-test", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rng = np.random.default_rng(0)
    tr = rng.standard_normal((args.n_train, args.dim), dtype=np.float32)
    te = rng.standard_normal((args.n_test, args.dim), dtype=np.float32)
    tr /= np.linalg.norm(tr, axis=1, keepdims=True)
    te /= np.linalg.norm(te, axis=1, keepdims=True)
    ratios: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(args.rounds):
        c0 = time.process_time()
        floor = _gemm_floor(torch.from_numpy(te), torch.from_numpy(tr))
        c1, t0 = time.process_time(), time.perf_counter()
        before = _neighbours_before(tr, te, 20, 4096)
        c2, t1 = time.process_time(), time.perf_counter()
        after = protocols._neighbours(tr, te, 20, 4096)
        c3, t2 = time.process_time(), time.perf_counter()
        ratios["before"].append((t1 - t0) / floor)
        ratios["after"].append((t2 - t1) / floor)
        logger.info("round %d: wall floor %.2f s, before %.2f s, after %.2f s; CPU %.2f, %.2f, "
                    "%.2f s; same %s, load %.1f", r, floor, t1 - t0, t2 - t1, c1 - c0, c2 - c1,
                    c3 - c2, np.array_equal(before[0], after[0]), os.getloadavg()[0])  # fmt: skip
    logger.info("median / floor: before %.3f, after %.3f",
                np.median(ratios["before"]), np.median(ratios["after"]))  # fmt: skip


if __name__ == "__main__":
    main()
