"""Per-slide patch selection: cheap features, k-means, and sampling across clusters to a budget."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd

from unipipe.curate.features import FEATURE_NAMES, patch_features
from unipipe.curate.mosaic import write_mosaic
from unipipe.curate.tiling import FEATURE_SIZE_COLUMN
from unipipe.errors import ConfigError, UnipipeError
from unipipe.provenance import write_parquet, write_sidecar
from unipipe.slide import open_slide

logger = logging.getLogger(__name__)

__all__ = [
    "STRATEGIES",
    "SelectionParams",
    "balanced_quota",
    "cluster_features",
    "run_select_patches",
    "select_rows",
]

Strategy = Literal["cluster_balanced", "uniform"]
# (labels (n,), budget, rng) -> picked row positions
StrategyFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectionParams:
    """Selection knobs (config section ``curate.selection``).

    Attributes:
        budget: patches kept per slide and tile spec (all kept tiles if fewer).
        n_clusters: k of the per-slide k-means (lowered to the number of tiles if larger).
        strategy: how picks spread over clusters; one of ``STRATEGIES``.
        feature_size_px: side of the patch features are computed on, in pixels; the patch
            covers the tile's area (read at mpp * size_px / feature_size_px).
        n_init: k-means restarts (fixed so results depend on the seed only).
        mosaic_per_cluster: patches shown per cluster row of the mosaic.
        mosaic_tile_px: side of each mosaic cell in pixels.
    """

    budget: int = 200
    n_clusters: int = 8
    strategy: Strategy = "cluster_balanced"
    feature_size_px: int = 128
    n_init: int = 10
    mosaic_per_cluster: int = 8
    mosaic_tile_px: int = 96

    def __post_init__(self) -> None:
        for key in ("budget", "n_clusters", "feature_size_px", "n_init", "mosaic_per_cluster"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"curate.selection.{key} must be an int >= 1, got {value!r}")
        if self.feature_size_px < 8 or self.mosaic_tile_px < 16:
            raise ConfigError(
                "curate.selection.feature_size_px must be >= 8 and mosaic_tile_px >= 16, got "
                f"{self.feature_size_px!r} and {self.mosaic_tile_px!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"curate.selection.strategy {self.strategy!r} is unknown; "
                f"choose one of {sorted(STRATEGIES)}"
            )


def balanced_quota(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Equal picks per cluster, leftovers of small clusters handed on to the larger ones.

    Args:
        sizes: (k,) tiles per cluster.
        budget: total picks wanted.

    Returns:
        (k,) picks per cluster; sums to min(budget, sizes.sum()).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    quota = np.zeros_like(sizes)
    while True:
        room = sizes - quota
        open_ = np.flatnonzero(room > 0)
        left = int(budget - quota.sum())
        if left <= 0 or open_.size == 0:
            return quota
        share = left // open_.size
        if share == 0:
            # Fewer picks than open clusters: one each to those with most room (ties: lower id).
            quota[open_[np.argsort(-room[open_], kind="stable")][:left]] += 1
        else:
            quota[open_] += np.minimum(share, room[open_])


def _pick_balanced(labels: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    k = int(labels.max()) + 1 if labels.size else 0
    quota = balanced_quota(np.bincount(labels, minlength=k), budget)
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=int(quota[c]), replace=False) for c in range(k)
    ]
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)


def _pick_uniform(labels: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(labels.size, size=min(budget, labels.size), replace=False)


STRATEGIES: dict[str, StrategyFn] = {
    "cluster_balanced": _pick_balanced,
    "uniform": _pick_uniform,
}


def cluster_features(
    features: np.ndarray, n_clusters: int, *, seed: int, n_init: int
) -> np.ndarray:
    """K-means labels of standardised features, renumbered by cluster size (0 = largest).

    Args:
        features: (n, f) feature matrix.
        n_clusters: wanted k; lowered to the number of distinct rows when larger.
        seed: k-means random state.
        n_init: k-means restarts.

    Returns:
        (n,) int64 labels.
    """
    n = features.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    z = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-9)
    k = min(n_clusters, len(np.unique(z.round(9), axis=0)))
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    from sklearn.cluster import KMeans  # ~2 s to import: only where curation clusters

    labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(z)
    sizes = np.bincount(labels, minlength=k)
    first = np.array([np.flatnonzero(labels == c)[0] for c in range(k)])
    order = np.lexsort((first, -sizes))  # largest first; ties by first occurrence
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return rank[labels]


def _spec_features(slide: Any, tiles: pd.DataFrame, feature_size_px: int) -> np.ndarray:
    """(n, f) features of each tile's patch, read at the feature resolution."""
    geometry = tiles[["size_px", "mpp"]].drop_duplicates()
    if len(geometry) == 1:  # one spec (as select_rows calls it): one batched read
        size_px, mpp = int(geometry["size_px"].iloc[0]), float(geometry["mpp"].iloc[0])
        origins = tiles[["x", "y"]].to_numpy()
        patches = slide.read_regions(origins, feature_size_px, mpp * size_px / feature_size_px)
    else:
        patches = (
            slide.read_region(int(x), int(y), feature_size_px, mpp * size_px / feature_size_px)
            for x, y, size_px, mpp in tiles[["x", "y", "size_px", "mpp"]].itertuples(index=False)
        )
    rows = [patch_features(patch) for patch in patches]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))


def _stored_features(tiles: pd.DataFrame, feature_size_px: int) -> np.ndarray | None:
    """(n, f) features tile_slide stored for these rows, or None where it stored none."""
    if not set(FEATURE_NAMES) <= set(tiles.columns):
        return None
    sizes = sorted(set(tiles[FEATURE_SIZE_COLUMN].tolist()))
    if sizes and sizes != [feature_size_px]:
        raise ConfigError(
            f"tiles.parquet holds selection features computed at {sizes} px, but "
            f"curate.selection.feature_size_px is {feature_size_px}: rerun tile_slide with the "
            "same curate.selection.feature_size_px (the workflow passes it to both rules)"
        )
    features = tiles[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    if np.isnan(features).any():
        raise UnipipeError(
            "tiles.parquet has kept tiles without selection features (NaN); it was not "
            "written by tile_slide or was edited: rerun tile_slide for this slide"
        )
    return features


def select_rows(
    slide: Any, tiles: pd.DataFrame, params: SelectionParams, *, seed: int
) -> pd.DataFrame:
    """Pick kept tiles of each spec: features, clusters, then the strategy's sample.

    Features come from the feature columns tile_slide stored in tiles.parquet (no pixel is
    read); tiles without them (a table from another tiler) are read at the feature size.

    Args:
        slide: an open ``unipipe.slide.Slide``; only read from when ``tiles`` has no features.
        tiles: rows of tiles.parquet (only ``keep`` rows are considered).
        params: selection knobs.
        seed: seeds k-means and sampling.

    Returns:
        The picked rows plus ``cluster`` and the feature columns, sorted by
        (size_px, mpp, cluster, y, x).
    """
    # Stored features move behind ``cluster``, where selected.parquet has always had them.
    columns = [c for c in tiles.columns if c not in (*FEATURE_NAMES, FEATURE_SIZE_COLUMN)]
    kept = tiles[tiles["keep"]].reset_index(drop=True)
    picked = []
    for (size_px, mpp), group in kept.groupby(["size_px", "mpp"], sort=True):
        group = group.reset_index(drop=True)
        features = _stored_features(group, params.feature_size_px)
        if features is None:
            features = _spec_features(slide, group, params.feature_size_px)
        group = group[columns]
        labels = cluster_features(features, params.n_clusters, seed=seed, n_init=params.n_init)
        rng = np.random.default_rng(seed)
        chosen = STRATEGIES[params.strategy](labels, params.budget, rng)
        part = group.iloc[chosen].copy()
        part["cluster"] = labels[chosen]
        part[list(FEATURE_NAMES)] = features[chosen]
        picked.append(part)
        logger.info(
            "%s %spx@%smpp: %d of %d kept tiles picked over %d clusters",
            slide.slide_id, size_px, mpp, len(part), len(group), len(np.unique(labels)),
        )  # fmt: skip
    if not picked:
        empty = [*columns, "cluster", *FEATURE_NAMES]
        return pd.DataFrame({c: pd.Series(dtype=_empty_dtype(tiles, c)) for c in empty})
    out = pd.concat(picked, ignore_index=True)
    out["cluster"] = out["cluster"].astype(np.int64)
    return out.sort_values(["size_px", "mpp", "cluster", "y", "x"], kind="stable").reset_index(
        drop=True
    )


def _empty_dtype(tiles: pd.DataFrame, column: str) -> Any:
    if column in tiles.columns and column not in FEATURE_NAMES:
        return tiles[column].dtype
    return np.int64 if column == "cluster" else np.float64


def _mosaic_rows(
    slide: Any, selected: pd.DataFrame, params: SelectionParams
) -> list[tuple[str, list[np.ndarray]]]:
    rows = []
    tile_px = params.mosaic_tile_px
    for (size_px, mpp, cluster), group in selected.groupby(["size_px", "mpp", "cluster"]):
        head = group.head(params.mosaic_per_cluster)
        patches = [
            slide.read_region(int(x), int(y), tile_px, mpp * size_px / tile_px)
            for x, y in head[["x", "y"]].itertuples(index=False)
        ]
        rows.append((f"{size_px}px c{cluster} n={len(group)}", patches))
    return rows


def run_select_patches(
    slide_path: str | os.PathLike[str],
    tiles_parquet: str | os.PathLike[str],
    *,
    slide_id: str,
    mpp: float | None,
    params: SelectionParams,
    seed: int,
    selected_parquet: str | os.PathLike[str],
    mosaic_jpg: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
) -> None:
    """Stage ``select_patches``: write selected.parquet, the cluster mosaic and the sidecar.

    Args:
        slide_path: the slide file.
        tiles_parquet: tiles.parquet of the slide (from ``run_tile_slide``; given its
            ``feature_size_px``, only the mosaic's picks are read from the slide).
        slide_id: the manifest id.
        mpp: level-0 µm/px override (None: from the slide's metadata).
        params: selection knobs.
        seed: seeds k-means and sampling; same seed, same output bytes.
        selected_parquet: output; picked rows of tiles.parquet plus ``cluster`` and features.
        mosaic_jpg: output JPEG, one row per (spec, cluster), a few picks each.
        sidecar: output JSON with parameters, versions and input checksums.
    """
    logger.info("select_patches %s with %s seed=%s", slide_id, params, seed)
    tiles = pd.read_parquet(tiles_parquet)
    with open_slide(slide_path, slide_id=slide_id, mpp=mpp) as slide:
        selected = select_rows(slide, tiles, params, seed=seed)
        mosaic = _mosaic_rows(slide, selected, params)
    write_parquet(selected, selected_parquet)
    write_mosaic(
        mosaic, mosaic_jpg, tile_px=params.mosaic_tile_px, columns=params.mosaic_per_cluster
    )
    per_cluster = selected.groupby(["size_px", "cluster"]).size()
    write_sidecar(
        sidecar,
        stage="select_patches",
        params=params,
        inputs=[slide_path, tiles_parquet],
        extra={
            "seed": seed,
            "n_kept": int(tiles["keep"].sum()),
            "n_selected": len(selected),
            "per_cluster": {f"{s}px/c{c}": int(n) for (s, c), n in per_cluster.items()},
        },
    )
