"""Tests for the shard-backed data path: index reading, the resumable sampler, multi-crop collate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from unipipe.errors import ConfigError
from unipipe.ssl.augment import MultiCrop
from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.data import (
    GlobalBatchSampler,
    MultiCropCollate,
    MultiCropDataset,
    open_patches,
    shard_paths,
)

from .conftest import TINY_YAML


def test_open_patches_index_or_shard_list_same_pixels(shard_index):
    """build_dataset's index, a `shard` column index and a list of stores read the same patches."""
    stores = shard_paths(shard_index)
    plain = shard_index.parent / "plain.parquet"
    pd.DataFrame({"shard": [p.name for p in stores]}).to_parquet(plain)
    sources = [shard_index, plain, stores]
    datasets = [open_patches(s) for s in sources]
    assert {len(d) for d in datasets} == {176}
    first = datasets[0][100]
    assert first.shape == (256, 256, 3)
    assert first.dtype == np.uint8
    for d in datasets[1:]:
        np.testing.assert_array_equal(d[100], first)


def test_shard_paths_index_without_shard_column_raises(tmp_path):
    """An index lacking both path columns is refused naming the columns."""
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"path": ["a.zarr"]}).to_parquet(bad)
    with pytest.raises(ConfigError, match="shard_zarr"):
        shard_paths(bad)


def _stream(**kw) -> list[tuple[int, int]]:
    return list(GlobalBatchSampler(10, seed=3, global_batch=4, total_steps=6, **kw))


def test_global_batch_sampler_resume_continues_the_stream():
    """Starting at step 2 yields exactly the tail of the run started at step 0."""
    full = _stream()
    assert _stream(start_step=2) == full[8:]
    assert len(GlobalBatchSampler(10, seed=3, global_batch=4, start_step=2, total_steps=6)) == 16


def test_global_batch_sampler_ranks_partition_the_global_batch():
    """Two ranks' slices of each step together equal the single-process global batch."""
    full = _stream()
    r0, r1 = _stream(rank=0, world_size=2), _stream(rank=1, world_size=2)
    merged = [
        x for step in range(6) for x in r0[2 * step : 2 * step + 2] + r1[2 * step : 2 * step + 2]
    ]
    assert merged == full


def test_global_batch_sampler_each_epoch_is_a_permutation():
    """Every block of n stream positions visits each patch once."""
    full = _stream()  # 24 positions over 10 patches
    assert sorted(i for _, i in full[:10]) == list(range(10))
    assert sorted(i for _, i in full[10:20]) == list(range(10))
    assert [i for _, i in full[:10]] != [i for _, i in full[10:20]]


@pytest.fixture(scope="module")
def tiny_cfg() -> PretrainConfig:
    """The tiny recipe with 2 local crops."""
    return PretrainConfig.from_yaml(TINY_YAML, {"crops.n_local": 2})


def test_multicrop_collate_shapes_and_crop_major_order(shard_index, tiny_cfg):
    """Crops are stacked crop-major with masks on the 7x7 global grid."""
    cfg = tiny_cfg
    transform = MultiCrop(cfg.crops, cfg.augment, mean=cfg.model.mean, std=cfg.model.std)
    dataset = MultiCropDataset(open_patches(shard_index), transform, seed=0)
    items = [dataset[(p, p)] for p in range(4)]
    batch = MultiCropCollate(cfg, seed=0, global_batch=4, global_size=112)(items)
    assert batch["global_crops"].shape == (8, 3, 112, 112)
    assert batch["local_crops"].shape == (8, 3, 48, 48)
    assert batch["masks"].shape == (8, 49)
    torch.testing.assert_close(batch["global_crops"][5], items[1]["global_crops"][1])
    assert int(batch["masks"].any(dim=1).sum()) == 4  # half of the 8 global crops


def test_multicrop_collate_masks_same_across_rank_split(shard_index, tiny_cfg):
    """Masks drawn on two ranks' halves equal those of the single-process global batch."""
    cfg = tiny_cfg
    transform = MultiCrop(cfg.crops, cfg.augment, mean=cfg.model.mean, std=cfg.model.std)
    dataset = MultiCropDataset(open_patches(shard_index), transform, seed=0)
    items = [dataset[(p, p)] for p in range(8, 12)]  # step 2 of a global batch of 4
    collate = MultiCropCollate(cfg, seed=0, global_batch=4, global_size=112)
    whole = collate(items)["masks"].view(2, 4, 49)
    halves = [
        collate(items[:2])["masks"].view(2, 2, 49),
        collate(items[2:])["masks"].view(2, 2, 49),
    ]
    assert torch.equal(torch.cat(halves, dim=1), whole)


def test_open_patches_resolves_relative_store_paths_from_the_index_folder(
    shard_index, tmp_path, monkeypatch
):
    """A build_dataset index whose shard_zarr paths are relative to its own folder opens
    from any working directory (it failed with 'cmu_0.zarr does not exist')."""
    table = pd.read_parquet(shard_index)
    table["shard_zarr"] = [Path(p).name for p in table["shard_zarr"]]
    relative = shard_index.with_name("relative.parquet")
    table.to_parquet(relative)
    monkeypatch.chdir(tmp_path)
    assert len(open_patches(relative)) == len(open_patches(shard_index)) == 176


@pytest.mark.parametrize("damage", ["empty_index", "garbage_index", "zarr_json", "chunk"])
def test_open_patches_damaged_files_name_the_file_and_the_fix(shard_index, tmp_path, damage):
    """An empty or non-parquet index, a broken zarr.json and a corrupt patch chunk each
    raise an error naming the file and how to rebuild it (they were bare pyarrow, JSON and
    zstd errors without a path)."""
    import shutil

    from unipipe.errors import UnipipeError

    table = pd.read_parquet(shard_index)
    store = tmp_path / "cmu_0.zarr"
    shutil.copytree(table["shard_zarr"].iloc[0], store)
    index = tmp_path / "index.parquet"
    table.iloc[:1].assign(shard_zarr=str(store)).to_parquet(index)
    named = index
    if damage == "empty_index":
        index.write_bytes(b"")
    elif damage == "garbage_index":
        index.write_bytes(b"not a parquet file at all" * 10)
    elif damage == "zarr_json":
        named = store / "patches" / "zarr.json"
        named.write_text("{ broken")
        named = store
    else:
        named = store / "patches" / "c" / "0" / "0" / "0" / "0"
        raw = bytearray(named.read_bytes())
        raw[0:16] = bytes(16)  # the first patch's zstd frame header; the shard index intact
        named.write_bytes(bytes(raw))

    def read_all() -> None:
        patches = open_patches(index)
        for i in range(len(patches)):
            patches[i]

    with pytest.raises(UnipipeError, match=r"rebuild|rerun") as err:
        read_all()
    assert str(named) in str(err.value)
