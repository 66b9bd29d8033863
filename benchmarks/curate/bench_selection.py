"""Benchmark of selection: feature and k-means cost, and diversity of clustered vs uniform picks.

Run: .venv/bin/python benchmarks/curate/bench_selection.py [--seeds 10]
Tiles: a 128 px @ 0.5 mpp grid (50% overlap) over CMU-1-Small-Region, kept where a saturation
mask of the real thumbnail covers half the tile. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from unipipe.curate import selection
from unipipe.curate.tiling import grid_origins, mask_fractions
from unipipe.slide import open_slide

SLIDE = Path(__file__).resolve().parents[2] / "resources" / "slides" / "CMU-1-Small-Region.svs"


def _kept_tiles(slide, size_px: int, mpp: float, overlap: float) -> pd.DataFrame:
    width, height = slide.dimensions
    footprint = size_px * mpp / slide.mpp
    stride = footprint * (1 - overlap)
    tissue = cv2.cvtColor(slide.read_thumbnail(4.0), cv2.COLOR_RGB2HSV)[..., 1] > 20
    gx, gy = grid_origins(width, footprint, stride), grid_origins(height, footprint, stride)
    ys, xs = (a.ravel() for a in np.meshgrid(gy, gx, indexing="ij"))
    fraction = mask_fractions(
        tissue, (tissue.shape[1] / width, tissue.shape[0] / height), xs, ys, footprint
    )
    keep = fraction >= 0.5
    return pd.DataFrame({"slide_id": "bench", "x": xs[keep], "y": ys[keep], "size_px": size_px,
                         "mpp": mpp, "keep": True})  # fmt: skip


def main() -> None:
    """Time features and k-means, then compare strategies over seeds and budgets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64])
    args = parser.parse_args()

    with open_slide(SLIDE, slide_id="bench") as slide:
        tiles = _kept_tiles(slide, 128, 0.5, 0.5)
        start = time.process_time()
        features = selection._spec_features(slide, tiles, 64)
        feature_s = time.process_time() - start
    start = time.process_time()
    selection.cluster_features(features, 8, seed=0, n_init=10)
    kmeans_s = time.process_time() - start
    print(json.dumps({"kept_tiles": len(tiles), "features_tiles_per_cpu_s": round(len(tiles) / feature_s),
                      "kmeans_k8_ninit10_cpu_s": round(kmeans_s, 3)}))  # fmt: skip

    z = (features - features.mean(axis=0)) / features.std(axis=0)
    reference = KMeans(16, n_init=10, random_state=1234).fit_predict(z)
    for budget in args.budgets:
        scores = {name: [] for name in selection.STRATEGIES}
        for seed in range(args.seeds):
            labels = selection.cluster_features(features, 8, seed=seed, n_init=10)
            for name, strategy in selection.STRATEGIES.items():
                pick = strategy(labels, budget, np.random.default_rng(seed))
                nearest = np.linalg.norm(z[:, None, :] - z[None, pick, :], axis=2).min(axis=1)
                scores[name].append(
                    [
                        len(set(labels[pick])),
                        len(set(reference[pick])),
                        nearest.mean(),
                        nearest.max(),
                    ]
                )
        for name, values in scores.items():
            mean = np.mean(values, axis=0)
            print(json.dumps({"budget": budget, "strategy": name, "k8_clusters_hit": mean[0],
                              "k16_reference_cells_hit": mean[1],
                              "mean_nn_distance": round(mean[2], 3),
                              "max_nn_distance": round(mean[3], 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
