"""Measure how much the tiny DINOv2 beats its random init on 20-NN (TCGA LUAD/LUSC), over seeds.

Usage: .venv/bin/python benchmarks/pretrain/learning_margin.py --steps 150 --seeds 0 1 2
Trains tiny_cpu.yaml on patch stores cut from the bundled CMU slide, prints one line per
seed (init accuracy, trained accuracy, margin) and the mean / min margin.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "ssl"))

from conftest import TCGA_ZIP, TINY_YAML, write_stores  # noqa: E402
from knn import knn_balanced_accuracy, load_tiles  # noqa: E402

from unipipe.curate.dataset import run_build_dataset  # noqa: E402
from unipipe.models import build_vit, load_encoder  # noqa: E402
from unipipe.ssl import PretrainConfig, run_pretrain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 64, 128, 192])
    parser.add_argument("--override", nargs="*", default=[], help="key=value (yaml value)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import yaml

    overrides = {"schedule.total_steps": args.steps, "checkpoint.every_n_steps": 10**6}
    overrides.update({k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.override)})
    cfg = PretrainConfig.from_yaml(TINY_YAML, overrides)
    tiles = load_tiles(TCGA_ZIP, cfg.crops.global_size)
    margins = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stores = write_stores(root, tuple(args.offsets))
        index = root / "index.parquet"
        run_build_dataset(
            stores, index_parquet=index, summary_png=root / "s.png", sidecar=root / "s.json"
        )
        for seed in args.seeds:
            L.seed_everything(seed, verbose=False)
            init = build_vit(cfg.model.arch, **cfg.model.kwargs)
            acc0 = knn_balanced_accuracy(init, tiles, cfg.model.mean, cfg.model.std)
            out = root / f"run{seed}"
            t0 = time.perf_counter()
            run_pretrain(
                index,
                config=cfg,
                out_dir=out,
                encoder_safetensors=out / "e.safetensors",
                encoder_json=out / "e.json",
                metrics_csv=out / "m.csv",
                sidecar=out / "p.json",
                seed=seed,
            )
            train_s = time.perf_counter() - t0
            model, _ = load_encoder(out / "e.json")
            acc1 = knn_balanced_accuracy(model, tiles, cfg.model.mean, cfg.model.std)
            margins.append(acc1 - acc0)
            losses = pd.read_csv(out / "m.csv")
            print(
                f"seed {seed}: init {acc0:.3f} trained {acc1:.3f} margin {acc1 - acc0:+.3f} "
                f"({train_s:.0f} s training, {train_s / args.steps:.2f} s/step; dino loss "
                f"{losses['dino'].iloc[0]:.3f} -> {losses['dino'].iloc[-1]:.3f})",
                flush=True,
            )
    print(f"margin mean {sum(margins) / len(margins):+.3f} min {min(margins):+.3f}")


if __name__ == "__main__":
    main()
