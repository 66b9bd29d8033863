"""One-GPU DINOv2 step time and MFU: UNI's ViT-L/16 in bf16, 2x224 + 8x96 crops (ready to run).

FLOPs are counted by ``torch.utils.flop_counter`` on one real iteration (student forward and
backward, teacher forward, heads), so drop path's batch subsets are counted as executed.
MFU = counted FLOPs / step time / peak; the default peak is the H200's dense bf16 figure.
Usage on a GPU node: .venv/bin/python benchmarks/pretrain/bench_gpu_step.py --batch 64
A CPU smoke run: --device cpu --arch vit_tiny_patch16_224 --batch 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json

import torch
from common import UNI_YAML, multicrop_batch, time_calls, training_step_fn
from torch.utils.flop_counter import FlopCounterMode

from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.module import DINOv2Module


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="vit_large_patch16_224")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True

    cfg = PretrainConfig.from_yaml(
        UNI_YAML,
        {
            "model.arch": args.arch,
            "data.batch_size": args.batch,
            "augment.photometric_on": "worker",
            "trainer.compile": args.compile,
        },
    )
    batch = _to(multicrop_batch(cfg, args.batch), args.device)
    module = DINOv2Module(cfg, global_batch=args.batch).to(args.device).train()
    dtype = torch.bfloat16
    step = training_step_fn(module, batch, device=args.device, dtype=dtype)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    step()  # warm-up outside the counter (allocations, cuDNN/SDPA kernel choice)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    median, times = time_calls(step, warmup=2, repeats=args.repeats, sync=sync)
    result = {
        "benchmark": "gpu_step",
        "arch": args.arch,
        "batch": args.batch,
        "precision": "bf16-mixed",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "median_step_s": round(median, 4),
        "images_per_s": round(args.batch / median, 1),
        "tflop_per_step": round(flops / 1e12, 3),
        "tflop_per_image": round(flops / 1e12 / args.batch, 3),
        "achieved_tflops": round(flops / median / 1e12, 1),
        "mfu": round(flops / median / (args.peak_tflops * 1e12), 4),
        "peak_tflops": args.peak_tflops,
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if args.device == "cuda"
        else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
