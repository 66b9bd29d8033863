"""The pretraining dataset index: every patch store with its patch counts, and a summary plot."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unipipe.provenance import atomic_path, write_parquet, write_sidecar

logger = logging.getLogger(__name__)

__all__ = ["INDEX_COLUMNS", "INDEX_DTYPES", "index_rows", "run_build_dataset", "write_summary_png"]

# Column -> dtype of the index parquet, in column order.
INDEX_DTYPES = {
    "shard_zarr": "str",
    "group": "str",
    "spec": "str",
    "slide_id": "str",
    "tissue_type": "str",
    "size_px": "int64",
    "mpp": "float64",
    "n_patches": "int64",
    "n_shards": "int64",
    "patches_per_shard": "int64",
    "compressor": "str",
    "shard_bytes": "int64",
}
INDEX_COLUMNS = tuple(INDEX_DTYPES)


def index_rows(shard_zarr: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One index row per tile spec held by a patch store (see ``unipipe.curate.shards``).

    ``shard_bytes`` counts the shard files of the spec's ``patches`` array; ``tissue_type``
    is the store's ``tissue_type`` attribute, or "" when the manifest gave none.
    """
    root = zarr.open_group(shard_zarr, mode="r")
    attrs = root.attrs.asdict()
    per_shard = int(attrs["patches_per_shard"])
    rows = []
    for spec in attrs["specs"]:
        chunk_dir = Path(shard_zarr) / spec["group"] / "patches" / "c"
        files = [p for p in chunk_dir.rglob("*") if p.is_file()] if chunk_dir.exists() else []
        rows.append(
            {
                "shard_zarr": os.fspath(shard_zarr),
                "group": spec["group"],
                "spec": spec["name"],
                "slide_id": str(attrs["slide_id"]),
                "tissue_type": str(attrs.get("tissue_type", "")),
                "size_px": int(spec["size_px"]),
                "mpp": float(spec["mpp"]),
                "n_patches": int(spec["n_patches"]),
                "n_shards": -(-int(spec["n_patches"]) // per_shard),
                "patches_per_shard": per_shard,
                "compressor": str(attrs["compressor"]),
                "shard_bytes": sum(p.stat().st_size for p in files),
            }
        )
    return rows


def write_summary_png(index: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Bar plot of patches per slide, one bar per tile spec; PNG without a timestamp."""
    table = index.pivot_table(
        index="slide_id", columns="spec", values="n_patches", aggfunc="sum", fill_value=0
    ).sort_index()
    # A bare Figure on the Agg canvas: no pyplot state, no GUI backend chosen for the caller.
    fig = Figure(figsize=(max(4.0, 0.6 * len(table) + 2.0), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(table.columns), 1)
    positions = np.arange(len(table))
    for i, spec in enumerate(table.columns):
        ax.bar(positions + i * width, table[spec].to_numpy(), width=width, label=spec)
    ax.set_xticks(positions + width * (len(table.columns) - 1) / 2)
    ax.set_xticklabels(table.index, rotation=45, ha="right")
    ax.set_ylabel("patches")
    ax.set_title(
        f"{int(index['n_patches'].sum())} patches from {index['slide_id'].nunique()} slide(s)"
    )
    if len(table.columns):
        ax.legend(title="tile spec")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def run_build_dataset(
    shard_zarrs: Sequence[str | os.PathLike[str]],
    *,
    index_parquet: str | os.PathLike[str],
    summary_png: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
) -> None:
    """Stage ``build_dataset``: index every patch store for pretraining.

    Args:
        shard_zarrs: the per-slide patch stores (``run_write_shards`` outputs).
        index_parquet: output; one row per (store, tile spec), columns ``INDEX_COLUMNS``,
            sorted by slide_id, size_px, mpp. ``PatchDataset(index_parquet)`` reads it.
        summary_png: output bar plot of patches per slide and spec.
        sidecar: output JSON with totals, versions and input checksums.
    """
    rows = [row for store in shard_zarrs for row in index_rows(store)]
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    index = index.sort_values(["slide_id", "size_px", "mpp"], kind="stable").reset_index(drop=True)
    index = index.astype(INDEX_DTYPES)
    write_parquet(index, index_parquet)
    write_summary_png(index, summary_png)
    totals = index.groupby("spec")["n_patches"].sum()
    logger.info("dataset: %d stores, patches per spec %s", len(shard_zarrs), totals.to_dict())
    write_sidecar(
        sidecar,
        stage="build_dataset",
        params={},
        inputs=list(shard_zarrs),
        extra={"n_stores": len(shard_zarrs), "patches_per_spec": totals.to_dict()},
    )
