"""k-NN, retrieval and few-shot SimpleShot against their float32 GEMM floor, same run.

Usage: .venv/bin/python benchmarks/evaluate/bench_floor.py [--n-train 100000 --n-test 10000]

The floor of k-NN and retrieval is torch.mm of the test x train products (N_test x D times
D x N_train) written into a reused buffer; of few-shot SimpleShot it is torch.mm of the
test rows with every episode's C + 1 vectors. "before" is the neighbour search this
commit replaced (one topk over each 4,096 x N_train block), timed in the same run, and the
per-episode few-shot loop timed on ``--fewshot-sample`` episodes per K and scaled. Writes
benchmarks/evaluate/out/floor.json (git-ignored) and logs one line per step.
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
from bench_protocols import _features

from unipipe.evaluate import protocols
from unipipe.evaluate.fewshot import FewShotParams, fewshot_protocol, sample_support
from unipipe.evaluate.protocols import KnnParams, center_normalize, simpleshot_protocol
from unipipe.evaluate.retrieval import RetrievalParams, retrieval_protocol

logger = logging.getLogger("bench_floor")


def _neighbours_before(
    train_x: np.ndarray, test_x: np.ndarray, k: int, chunk_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The search before blocking: a fresh (chunk_rows x N_train) product, topk, lexsort."""
    train_t = torch.from_numpy(train_x)
    idx_blocks, sim_blocks = [], []
    for start in range(0, len(test_x), chunk_rows):
        block = torch.from_numpy(test_x[start : start + chunk_rows])
        sim = block @ train_t.T
        top_sim, top_idx = torch.topk(sim, k, dim=1, largest=True, sorted=True)
        order = np.lexsort((top_idx.numpy(), -top_sim.numpy()), axis=1)
        idx_blocks.append(np.take_along_axis(top_idx.numpy(), order, axis=1))
        sim_blocks.append(np.take_along_axis(top_sim.numpy(), order, axis=1))
    return np.concatenate(idx_blocks), np.concatenate(sim_blocks)


def _gemm_floor(a: torch.Tensor, b: torch.Tensor, rows: int = 1024) -> float:
    """Seconds of a @ b.T in row blocks of ``rows`` into one reused output buffer."""
    out = torch.empty(min(rows, len(a)), len(b))
    t0 = time.perf_counter()
    for r0 in range(0, len(a), rows):
        q = a[r0 : r0 + rows]
        torch.mm(q, b.T, out=out[: len(q)])
    return time.perf_counter() - t0


def _timed(result: dict, name: str, fn, *args, **kwargs):  # noqa: ANN001, ANN202
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    result["seconds"][name] = round(time.perf_counter() - t0, 2)
    logger.info("%s: %.2f s (load %.1f)", name, result["seconds"][name], os.getloadavg()[0])
    return value


def _bench_knn(result: dict, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int) -> None:
    """Floor, before and after of the neighbour search, then both whole protocols."""
    tr, te = _timed(result, "center_normalize", center_normalize, xtr, xte)
    floor = _gemm_floor(torch.from_numpy(te), torch.from_numpy(tr))
    result["seconds"]["knn_gemm_floor"] = round(floor, 2)
    flop = 2.0 * len(te) * len(tr) * tr.shape[1]
    result["gflop_per_s_floor"] = round(flop / floor / 1e9, 1)
    logger.info("GEMM floor: %.2f s (%.1f GFLOP/s)", floor, result["gflop_per_s_floor"])
    before = _timed(result, "neighbours_before", _neighbours_before, tr, te, 20, 4096)
    after = _timed(result, "neighbours", protocols._neighbours, tr, te, 20, 4096)
    result["neighbours_identical"] = bool(np.array_equal(before[0], after[0]))
    result["similarities_identical"] = bool(np.array_equal(before[1], after[1]))
    kw = {"n_classes": k, "seed": 0}
    _timed(result, "knn", protocols.knn_protocol, xtr, ytr, xte, params=KnnParams(), **kw)
    _timed(result, "retrieval", retrieval_protocol, xtr, ytr, xte, params=RetrievalParams(), **kw)
    for name in ("neighbours", "knn", "retrieval", "neighbours_before"):
        result["ratio_to_floor"][name] = round(result["seconds"][name] / floor, 3)


def _bench_fewshot(
    result: dict, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int, args
) -> None:  # noqa: ANN001
    """The batched few-shot run, its GEMM floor, and the per-episode loop's rate."""
    shots = tuple(args.shots)
    params = FewShotParams(shots=shots, n_episodes=args.episodes)
    _timed(result, "fewshot", fewshot_protocol, xtr, ytr, xte, n_classes=k, params=params,
           seed=0)  # fmt: skip
    test = torch.from_numpy(xte)
    cols = torch.from_numpy(xtr[: args.episodes * (k + 1)])  # same shapes as the episodes'
    floor = sum(_gemm_floor(test, cols) for _ in shots)
    result["seconds"]["fewshot_gemm_floor"] = round(floor, 2)
    result["ratio_to_floor"]["fewshot"] = round(result["seconds"]["fewshot"] / floor, 3)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for shot in shots:
        for _ in range(args.fewshot_sample):
            s = sample_support(ytr, k, shot, rng)
            simpleshot_protocol(xtr[s], ytr[s], xte, n_classes=k,
                                params=protocols.SimpleShotParams(), seed=0)  # fmt: skip
    per_episode = (time.perf_counter() - t0) / (args.fewshot_sample * len(shots))
    result["seconds"]["fewshot_before_estimated"] = round(per_episode * args.episodes * len(shots))
    logger.info("few-shot before: %.3f s per episode", per_episode)


def main() -> None:
    """Time the floors and the protocols on CRC-100K-sized random features; write JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=100_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    ap.add_argument("--fewshot-sample", type=int, default=3, help="old-loop episodes per K")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip", nargs="*", default=[], choices=["knn", "fewshot"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    means = (rng.normal(size=(args.classes, args.dim)) / np.sqrt(args.dim)).astype(np.float32)
    xtr, ytr = _features(args.n_train, means, 1)
    xte, _ = _features(args.n_test, means, 2)
    result = {"args": vars(args), "load_avg_start": os.getloadavg()[0], "seconds": {},
              "ratio_to_floor": {}}  # fmt: skip
    if "knn" not in args.skip:
        _bench_knn(result, xtr, ytr, xte, args.classes)
    if "fewshot" not in args.skip:
        _bench_fewshot(result, xtr, ytr, xte, args.classes, args)
    result["load_avg_end"] = os.getloadavg()[0]
    logger.info("%s", json.dumps(result))
    out_dir = Path(__file__).parent / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "floor.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
