"""CPU step time of one DINOv2 iteration: ViT-S/16, batch 4, 2x224 + 8x96 crops, fp32.

Reference (the DINOv2 code base on these 2-core machines): ~2.1 s per step. Everything
else is UNI's recipe (65,536 prototypes, iBOT on masked tokens, KoLeo, Sinkhorn-Knopp,
drop path 0.3 on batch subsets). Usage: .venv/bin/python benchmarks/pretrain/bench_cpu_step.py
"""

from __future__ import annotations

import argparse
import json

import torch
from common import UNI_YAML, multicrop_batch, time_calls, training_step_fn

from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.module import DINOv2Module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = PretrainConfig.from_yaml(
        UNI_YAML,
        {
            "model.arch": args.arch,
            "data.batch_size": args.batch,
            "augment.photometric_on": "worker",
        },
    )
    batch = multicrop_batch(cfg, args.batch)
    module = DINOv2Module(cfg, global_batch=args.batch).train()
    median, times = time_calls(
        training_step_fn(module, batch, device="cpu", dtype=None), warmup=1, repeats=args.repeats
    )
    print(
        json.dumps(
            {
                "benchmark": "cpu_step",
                "arch": args.arch,
                "batch": args.batch,
                "crops": "2x224+8x96",
                "precision": "fp32",
                "threads": args.threads,
                "median_s": round(median, 3),
                "min_s": round(min(times), 3),
                "times_s": [round(t, 3) for t in times],
                "reference_dinov2_s": 2.1,
            }
        )
    )


if __name__ == "__main__":
    main()
