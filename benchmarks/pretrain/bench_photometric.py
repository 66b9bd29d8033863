"""Photometric augmentation: the CPU path (PIL per crop, in loader workers) vs the batched tensor path.

The batched path is what ``augment.photometric_on: device`` runs after the batch reaches the
accelerator; here it is timed on CPU and, when CUDA is present, on the GPU. Crops are the
UNI set (2x224 + 8x96) cut from real patches. Reports images (= 10 crops) per second.
Usage: .venv/bin/python benchmarks/pretrain/bench_photometric.py [--batch 64]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from common import UNI_YAML, real_patches, time_calls
from PIL import Image

from unipipe.ssl.augment import MultiCrop, crop_roles, pil_photometric
from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.masking import seeded_generator
from unipipe.ssl.photometric import photometric


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-core figures for the CPU paths
    cfg = PretrainConfig.from_yaml(UNI_YAML, {"augment.photometric_on": "device"})
    patches = real_patches(args.batch)
    geometric = MultiCrop(cfg.crops, cfg.augment, mean=cfg.model.mean, std=cfg.model.std)
    roles = crop_roles(cfg.augment, cfg.crops.n_local)
    gen = seeded_generator(0)

    crops = [geometric(p, seeded_generator(i)) for i, p in enumerate(patches)]
    views = [[v for v in c["global_crops"] + c["local_crops"]] for c in crops]  # uint8 (3, S, S)
    pil_views = [[Image.fromarray(v.permute(1, 2, 0).numpy()) for v in vs] for vs in views]

    def cpu_geometric() -> None:
        for i, p in enumerate(patches):
            geometric(p, seeded_generator(i))

    def cpu_pil() -> None:
        for vs in pil_views:
            for v, (b, s) in zip(vs, roles, strict=True):
                np.asarray(pil_photometric(v, cfg.augment, blur_p=b, solarize_p=s, gen=gen))

    # Device layout: one tensor per crop role, (B, 3, S, S) uint8.
    stacked = [torch.stack([vs[k] for vs in views]) for k in range(len(roles))]

    def batched(device: str):
        on_device = [t.to(device) for t in stacked]

        def run() -> None:
            for t, (b, s) in zip(on_device, roles, strict=True):
                photometric(t.float() / 255.0, cfg.augment, blur_p=b, solarize_p=s, gen=gen)

        return run

    results = {"benchmark": "photometric", "batch": args.batch, "crops": "2x224+8x96"}
    for name, fn in [
        ("cpu_geometric_crops_1core", cpu_geometric),
        ("cpu_pil_photometric_1core", cpu_pil),
        ("batched_tensor_cpu_1core", batched("cpu")),
    ]:
        median, _ = time_calls(fn, warmup=1, repeats=args.repeats)
        results[f"{name}_images_per_s"] = round(args.batch / median, 1)
    if torch.cuda.is_available():
        median, _ = time_calls(
            batched("cuda"), warmup=2, repeats=args.repeats * 3, sync=torch.cuda.synchronize
        )
        results["batched_tensor_cuda_images_per_s"] = round(args.batch / median, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
