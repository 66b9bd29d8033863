"""Tests for the shard-backed data path: index reading, the resumable sampler, multi-crop collate."""

from __future__ import annotations

import shutil
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
    PretrainDataModule,
    check_phases,
    open_patches,
    plan_phases,
    shard_paths,
)

from .conftest import HIGHRES_SPEC, TINY_YAML, UNI_YAML


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


def test_global_batch_sampler_phase_starts_a_fresh_epoch_and_resumes_inside_it():
    """A phase starting at step 2 over its own 5 patches begins a new permutation there
    (positions keep counting from step 0), and resuming at step 4 yields its tail."""
    phase = list(GlobalBatchSampler(5, seed=3, global_batch=4, total_steps=6, phase_start=2))
    assert [p for p, _ in phase] == list(range(8, 24))
    assert sorted(i for _, i in phase[:5]) == list(range(5))
    assert sorted(i for _, i in phase[5:10]) == list(range(5))
    resumed = GlobalBatchSampler(
        5, seed=3, global_batch=4, start_step=4, total_steps=6, phase_start=2
    )
    assert list(resumed) == phase[8:]
    ranks = [
        list(
            GlobalBatchSampler(
                5, seed=3, global_batch=4, total_steps=6, phase_start=2, rank=r, world_size=2
            )
        )
        for r in range(2)
    ]
    assert [x for s in range(4) for r in ranks for x in r[2 * s : 2 * s + 2]] == phase


def test_global_batch_sampler_pass_starts_at_the_current_step():
    """A second pass over the sampler (Lightning's next epoch) starts at the trainer's step
    then, not again at the step the loader was made at."""
    step = [2]
    sampler = GlobalBatchSampler(
        10, seed=3, global_batch=4, start_step=2, total_steps=6, current_step=lambda: step[0]
    )
    first = list(sampler)
    step[0] = 4
    assert list(sampler) == first[8:] == _stream()[16:]


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


def test_open_patches_reads_the_named_tile_spec(shard_index):
    """The 512-px spec (a sub-group of each store) is read by name from the index or from
    the list of stores; without a name each store's root (256-px) spec is read."""
    for source in (shard_index, shard_paths(shard_index)):
        patches = open_patches(source, HIGHRES_SPEC)
        assert len(patches) == 40
        assert patches[39].shape == (512, 512, 3)
        assert set(patches.metadata["size_px"]) == {512}
    assert open_patches(shard_index)[0].shape == (256, 256, 3)


@pytest.mark.parametrize("written", ["512px_0.5mpp", "512px_0.50mpp", {"size_px": 512, "mpp": 0.5}])
def test_spec_keys_take_the_index_name_or_the_curation_mapping(written):
    """highres.spec / data.spec accept the name the index uses or curate.tiling.specs'
    {size_px, mpp}, and hold the index's name."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, {"highres.spec": written, "data.spec": written})
    assert cfg.highres.spec == cfg.data.spec == "512px_0.5mpp"


@pytest.mark.parametrize("written", ["512px", "512", {"size": 512}, "4px_0.5mpp"])
def test_spec_keys_refuse_what_is_not_a_tile_spec(written):
    """A value that names no tile spec is refused, naming the key and both spellings."""
    with pytest.raises(ConfigError, match=r"'highres.spec'.*512px_0.5mpp.*size_px: 512"):
        PretrainConfig.from_yaml(TINY_YAML, {"highres.spec": written})


def test_high_res_datamodule_cuts_its_crops_from_512px_patches(shard_index):
    """The high-res phase's data module reads the 512-px spec and serves its crop sizes;
    the main phase's reads the 256-px root spec."""
    cfg = PretrainConfig.from_yaml(
        TINY_YAML,
        {
            "highres.steps": 2,
            "schedule.total_steps": 4,
            "data.batch_size": 2,
            "data.num_workers": 0,
        },
    )
    main, highres = plan_phases(cfg)
    assert (highres.start, highres.end, highres.spec) == (2, 4, HIGHRES_SPEC)
    shapes = {}
    for phase in (main, highres):
        data = PretrainDataModule(
            shard_index, config=cfg, seed=0, total_steps=phase.end, phase=phase
        )
        data.setup()
        shapes[phase.name] = data._patches[0].shape
        batch = next(iter(data.train_dataloader()))
        assert batch["global_crops"].shape[-1] == phase.global_size
        assert int(batch["positions"][0]) == phase.start * 2  # no trainer: its first step
    assert shapes == {"main": (256, 256, 3), "highres": (512, 512, 3)}


def test_uni_recipe_cuts_its_high_res_crops_from_512px_patches(shard_index):
    """UNI's recipe reads 256-px patches for 112,500 steps, then cuts its 448/192-px crops
    from the 512-px ones for the last 12,500 (the demo curation writes both specs)."""
    main, highres = check_phases(shard_index, PretrainConfig.from_yaml(UNI_YAML))
    assert (main.phase.end, main.specs, main.n_patches) == (112_500, ("256px_0.5mpp",), 176)
    assert (highres.phase.start, highres.specs, highres.n_patches) == (112_500, (HIGHRES_SPEC,), 40)
    assert (highres.phase.global_size, highres.phase.local_size) == (448, 192)


def test_check_phases_refuses_a_spec_no_store_holds(store_without_highres):
    """A high-res spec missing from the store fails before training, naming the store,
    the spec, the specs it holds and the fix."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, {"highres.steps": 2})
    with pytest.raises(ConfigError) as err:
        check_phases([store_without_highres], cfg)
    message = str(err.value)
    for part in (
        "'highres.spec'",
        str(store_without_highres),
        "'512px_0.5mpp'",
        "['256px_0.5mpp']",
        "{size_px: 512, mpp: 0.5} to curate.tiling.specs",
    ):
        assert part in message, part
    # The same recipe without a high-res phase does not read that spec.
    check_phases([store_without_highres], PretrainConfig.from_yaml(TINY_YAML))


def test_check_phases_leaves_out_a_store_without_the_spec_naming_it(
    shard_index, store_without_highres, caplog
):
    """A store lacking the high-res spec while others hold it (a slide with no 512-px tile
    that passed curation) is left out of that phase only, with a warning naming it."""
    stores = [*shard_paths(shard_index), store_without_highres]
    cfg = PretrainConfig.from_yaml(TINY_YAML, {"highres.steps": 2})
    with caplog.at_level("WARNING", logger="unipipe.ssl.data"):
        main, highres = check_phases(stores, cfg)
    assert (main.n_stores, main.n_patches) == (3, 184)
    assert (highres.n_stores, highres.n_patches) == (2, 40)
    assert highres.stores_without_spec == (str(store_without_highres),)
    assert str(store_without_highres) in caplog.text
    assert len(open_patches(stores, HIGHRES_SPEC, key="highres.spec")) == 40


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        # UNI's high-res crops from the 256-px patches: the bug this check exists for.
        ({"highres.spec": "256px_0.5mpp", "highres.global_size": 448}, "highres.global_size"),
        ({"highres.spec": None, "highres.global_size": 320}, "highres.global_size"),
        ({"highres.local_size": 528}, "highres.local_size"),
        ({"crops.global_size": 272}, "crops.global_size"),
    ],
)
def test_check_phases_refuses_crops_larger_than_their_patches(shard_index, overrides, key):
    """A crop larger than the patch it is cut from would be upsampled whole: refused
    before training, naming the key, the patch size and the spec key to change."""
    cfg = PretrainConfig.from_yaml(TINY_YAML, {"highres.steps": 2, **overrides})
    spec_key = "highres.spec" if key.startswith("highres") else "data.spec"
    with pytest.raises(ConfigError, match=rf"'{key}'.*-px patches.*Set {spec_key} to"):
        check_phases(shard_index, cfg)


def _damage(shard_index: Path, tmp_path: Path, damage: str) -> tuple[pd.DataFrame, Path]:
    """The index with its first store moved away, or pointing at a copy of that store whose
    512-px spec group was deleted; and that store's path."""
    table = pd.read_parquet(shard_index)
    first = table["shard_zarr"].iloc[0]
    if damage == "moved_store":
        store = tmp_path / "moved" / Path(first).name
    else:
        store = tmp_path / Path(first).name
        shutil.copytree(first, store)
        shutil.rmtree(store / HIGHRES_SPEC)
    table.loc[table["shard_zarr"] == first, "shard_zarr"] = str(store)
    return table, store


@pytest.mark.parametrize("source", ["index", "list"])
@pytest.mark.parametrize("damage", ["moved_store", "deleted_spec_group"])
def test_check_phases_refuses_a_store_or_spec_group_missing_on_disk(
    shard_index, tmp_path, source, damage
):
    """A store listed in the index (or given) but moved away, or whose high-res group was
    deleted, fails before training, naming the store, the spec, the index and the fix. It
    failed when the data module opened it (FileNotFoundError), the high-res group after
    the whole main phase (KeyError: '512px_0.5mpp')."""
    table, store = _damage(shard_index, tmp_path, damage)
    index = tmp_path / "index.parquet"
    table.to_parquet(index)
    given = index if source == "index" else list(dict.fromkeys(table["shard_zarr"]))
    cfg = PretrainConfig.from_yaml(TINY_YAML, {"highres.steps": 2})
    with pytest.raises(ConfigError) as err:
        check_phases(given, cfg)
    message = str(err.value)
    spec = HIGHRES_SPEC if damage == "deleted_spec_group" else "256px_0.5mpp"
    parts = [str(store), "re-run curation for that slide"]
    parts += [str(index), spec, "build_dataset"] if source == "index" else []
    for part in parts:
        assert part in message, part


def test_check_phases_still_leaves_out_a_store_the_index_lists_without_the_spec(
    shard_index, tmp_path, caplog
):
    """A store without the high-res group is left out of that phase with a warning, not
    refused, when the index does not list that spec for it."""
    table, store = _damage(shard_index, tmp_path, "deleted_spec_group")
    index = tmp_path / "index.parquet"
    table[(table["shard_zarr"] != str(store)) | (table["spec"] != HIGHRES_SPEC)].to_parquet(index)
    cfg = PretrainConfig.from_yaml(TINY_YAML, {"highres.steps": 2})
    with caplog.at_level("WARNING", logger="unipipe.ssl.data"):
        main, highres = check_phases(index, cfg)
    assert (main.n_stores, highres.n_stores, highres.stores_without_spec) == (2, 1, (str(store),))
    assert str(store) in caplog.text
