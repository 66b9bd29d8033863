"""Training data: patches from the Zarr shards, a resumable global-batch sampler, multi-crop collate.

Each training phase reads one tile spec of the stores (``data.spec`` for the main phase,
``highres.spec`` for the high-resolution one): ``check_phases`` checks both before any
step is trained, and ``PretrainDataModule`` serves a phase's patches.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unipipe.curate.shard_index import ShardLayoutError
from unipipe.curate.shards import PatchDataset, read_index_parquet, store_specs
from unipipe.errors import ConfigError
from unipipe.ssl.augment import MultiCrop
from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.masking import block_mask, mask_ratios, seeded_generator

logger = logging.getLogger(__name__)

__all__ = [
    "GlobalBatchSampler",
    "MultiCropCollate",
    "MultiCropDataset",
    "Phase",
    "PhaseSource",
    "PretrainDataModule",
    "check_phases",
    "open_patches",
    "plan_phases",
    "shard_paths",
    "spec_table",
]

ShardSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def shard_paths(source: ShardSource) -> list[Path]:
    """Patch stores from a list of paths or from an index parquet's ``shard`` column.

    Relative paths in the index are tried as given, then relative to the index's folder.
    """
    if isinstance(source, str | os.PathLike) and os.fspath(source).endswith(".parquet"):
        index = Path(source)
        table = read_index_parquet(index)
        column = "shard_zarr" if "shard_zarr" in table.columns else "shard"
        if column not in table.columns:
            raise ConfigError(
                f"{index}: the shard index needs a `shard_zarr` (build_dataset) or `shard` column"
            )
        paths = []
        for raw in table[column].drop_duplicates():
            path = Path(raw)
            paths.append(path if path.exists() or path.is_absolute() else index.parent / path)
        return paths
    if isinstance(source, str | os.PathLike):
        return [Path(source)]
    return [Path(p) for p in source]


# Columns of build_dataset's index that describe each (store, tile spec) without opening it.
_INDEX_SPEC_COLUMNS = {"shard_zarr", "group", "spec", "size_px", "n_patches"}


def _read_index(source: ShardSource) -> pd.DataFrame | None:
    """The index parquet of an index source; None for a list of stores."""
    if isinstance(source, str | os.PathLike) and os.fspath(source).endswith(".parquet"):
        return read_index_parquet(source)
    return None


def _store_specs(store: Path) -> list[dict[str, Any]]:
    try:
        return store_specs(store)
    except FileNotFoundError as err:
        raise ConfigError(
            f"patch store {store} does not exist; pass the stores' current paths, or "
            "re-run curation for that slide (rerun the workflow: write_shards rewrites it)"
        ) from err
    except Exception as err:  # a broken zarr.json, or a group without the `specs` attribute
        raise ShardLayoutError(
            f"{store}: not a readable patch store ({type(err).__name__}: {err}); delete it "
            "and rerun the workflow to rewrite it (write_shards)"
        ) from err


def spec_table(source: ShardSource) -> pd.DataFrame:
    """One row per (store, tile spec) of the source: ``store``, ``group``, ``spec`` (e.g.
    ``512px_0.5mpp``), ``size_px``, ``n_patches`` and ``root`` (the store's first spec).

    Read from build_dataset's index when the source is one (no store is opened), else
    from each store's ``specs`` attribute. Stores are in the order ``open_patches`` reads.
    """
    index = _read_index(source)
    if index is not None and set(index.columns) >= _INDEX_SPEC_COLUMNS:
        folder = Path(source).parent
        stores = [
            os.fspath(p if p.exists() or p.is_absolute() else folder / p)
            for p in map(Path, index["shard_zarr"].astype(str))
        ]
        return pd.DataFrame(
            {
                "store": stores,
                "group": index["group"].astype(str).to_numpy(),
                "spec": index["spec"].astype(str).to_numpy(),
                "size_px": index["size_px"].astype("int64").to_numpy(),
                "n_patches": index["n_patches"].astype("int64").to_numpy(),
                "root": (index["group"].astype(str) == "").to_numpy(),
            }
        )
    rows = [
        {
            "store": os.fspath(store),
            "group": str(entry["group"]),
            "spec": str(entry["name"]),
            "size_px": int(entry["size_px"]),
            "n_patches": int(entry["n_patches"]),
            "root": i == 0,
        }
        for store in shard_paths(source)
        for i, entry in enumerate(_store_specs(store))
    ]
    columns = ["store", "group", "spec", "size_px", "n_patches", "root"]
    return pd.DataFrame(rows, columns=columns)


def _describe(source: ShardSource) -> str:
    return os.fspath(source) if isinstance(source, str | os.PathLike) else "the list given"


def _select_spec(
    table: pd.DataFrame, spec: str | None, *, key: str, source: ShardSource
) -> tuple[pd.DataFrame, list[str]]:
    """The rows of ``spec`` (None: each store's root spec), and the stores that lack it.

    Raises:
        ConfigError: no store holds the spec; names the stores, what they hold and the fix.
    """
    if spec is None:
        return table[table["root"]], []
    rows = table[table["spec"] == spec]
    held = table.groupby("store", sort=False)["spec"].agg(list)
    lacking = [store for store in held.index if store not in set(rows["store"])]
    if rows.empty:
        named = "; ".join(f"{store} holds {held[store]}" for store in lacking[:3])
        more = f" (and {len(lacking) - 3} more)" if len(lacking) > 3 else ""
        size, _, mpp = spec.removesuffix("mpp").partition("px_")
        raise ConfigError(
            f"pretrain key {key!r}: none of the {len(lacking)} patch store(s) of "
            f"{_describe(source)} holds tile spec {spec!r}: {named}{more}. Add "
            f"{{size_px: {size}, mpp: {mpp}}} to "
            f"curate.tiling.specs and rerun the workflow (it rewrites the stores and the "
            f"index), or set {key} to a spec the stores hold"
        )
    return rows, lacking


def open_patches(source: ShardSource, spec: str | None = None, *, key: str = "spec") -> Dataset:
    """A map-style dataset of (H, W, 3) uint8 patches over the stores (curate's PatchDataset).

    An index written by ``build_dataset`` (columns ``shard_zarr``, ``group``, ``spec``) is
    read as such; a plain list of stores, or an index with a ``shard`` column, is read
    store by store. ``spec`` (a tile spec name such as ``512px_0.5mpp``) picks that spec
    of every store that holds it; None picks each store's root spec.

    Raises:
        ConfigError: no store holds ``spec`` (the error quotes ``key``, the config key).
    """
    index = _read_index(source)
    columns = set() if index is None else set(index.columns)
    if spec is None:
        if {"shard_zarr", "group"} <= columns:
            return PatchDataset(source)
        return PatchDataset([os.fspath(p) for p in shard_paths(source)])
    rows, _ = _select_spec(spec_table(source), spec, key=key, source=source)
    if columns >= _INDEX_SPEC_COLUMNS:
        return PatchDataset(source, spec=spec)
    return PatchDataset(rows["store"].tolist(), spec=spec)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of pretraining at fixed crop sizes, cut from one tile spec.

    Attributes:
        name: ``main`` or ``highres``.
        start: the step the phase starts at (its sampler starts a fresh epoch there).
        end: the step it stops at.
        global_size: global crop side, px.
        local_size: local crop side, px.
        spec: the tile spec read (``512px_0.5mpp``); None = each store's root spec.
        spec_key: the config key that chose ``spec``, quoted in errors.
        size_group: the config group of the crop sizes (``crops`` or ``highres``).
    """

    name: str
    start: int
    end: int
    global_size: int
    local_size: int
    spec: str | None
    spec_key: str
    size_group: str


def plan_phases(config: PretrainConfig) -> list[Phase]:
    """The main phase, and the high-resolution one when ``highres.steps`` > 0.

    The high-res phase reads ``highres.spec``, or ``data.spec`` when that is unset.
    """
    total, hr = config.schedule.total_steps, config.highres
    main_end = total - hr.steps
    main = Phase(
        name="main",
        start=0,
        end=main_end,
        global_size=config.crops.global_size,
        local_size=config.crops.local_size,
        spec=config.data.spec,
        spec_key="data.spec",
        size_group="crops",
    )
    if not hr.steps:
        return [main]
    spec, key = (hr.spec, "highres.spec") if hr.spec else (config.data.spec, "data.spec")
    highres = Phase(
        name="highres",
        start=main_end,
        end=total,
        global_size=hr.global_size,
        local_size=hr.local_size,
        spec=spec,
        spec_key=key,
        size_group="highres",
    )
    return [main, highres]


@dataclasses.dataclass(frozen=True)
class PhaseSource:
    """What a phase reads: tile spec names, stores and patches, and the stores left out.

    ``specs`` has several names only where the stores' root specs differ (spec None).
    """

    phase: Phase
    specs: tuple[str, ...]
    n_stores: int
    n_patches: int
    stores_without_spec: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record for the sidecar."""
        p = self.phase
        return {
            "phase": p.name,
            "steps": [p.start, p.end],
            "crops_px": [p.global_size, p.local_size],
            "specs": list(self.specs),
            "n_stores": self.n_stores,
            "n_patches": self.n_patches,
            "stores_without_spec": len(self.stores_without_spec),
        }


def _phase_source(table: pd.DataFrame, phase: Phase, source: ShardSource) -> PhaseSource:
    """Select the phase's rows and refuse crops larger than its patches.

    A crop is cut from a box of at most the whole patch (``crops.*_scale`` <= 1) and
    resized to its side, so a crop side larger than the patch upsamples every view: the
    network sees more pixels but no more tissue or detail. That was the high-res phase
    cutting 448-px crops out of 256-px patches, so it is refused, not allowed.
    """
    rows, lacking = _select_spec(table, phase.spec, key=phase.spec_key, source=source)
    n_patches = int(rows["n_patches"].sum())
    if phase.spec is None:
        which = f"the stores' root tile spec ({phase.spec_key} unset"
    else:
        which = f"tile spec {phase.spec} ({phase.spec_key}"
    # The high-res phase falls back to data.spec; its fix is still to set highres.spec.
    own_key = "highres.spec" if phase.name == "highres" else "data.spec"
    which += ")" if own_key == phase.spec_key else f"; {own_key} unset)"
    if n_patches == 0:
        raise ConfigError(
            f"no patches of {which} in {_describe(source)}; check the shard index "
            "(build_dataset) and curate.selection.budget"
        )
    filled = rows[rows["n_patches"] > 0]
    smallest = int(filled["size_px"].min())
    for crop, size in (("global_size", phase.global_size), ("local_size", phase.local_size)):
        if size > smallest:
            key = f"{phase.size_group}.{crop}"
            example = "; UNI's reads 512px_0.5mpp" if phase.name == "highres" else ""
            raise ConfigError(
                f"pretrain key {key!r}: {size}-px crops cut from the {smallest}-px patches "
                f"of {which} would all be upsampled {size / smallest:.2f}x, adding no "
                f"detail. Set {own_key} to a tile spec with patches of at least {size} px "
                f"(one of curate.tiling.specs{example}), or lower {key} to at most {smallest}"
            )
    return PhaseSource(
        phase=phase,
        specs=tuple(sorted(set(filled["spec"]))),
        n_stores=int(rows["store"].nunique()),
        n_patches=n_patches,
        stores_without_spec=tuple(lacking),
    )


def _refuse_missing_groups(table: pd.DataFrame, phase: Phase, source: ShardSource) -> None:
    """Refuse (store, spec) pairs the phase would read that are not on disk.

    Only the group's ``zarr.json`` is looked at (one stat per pair; a second, of the store,
    only for a pair that is missing), so this stays cheap for 100,000 stores; whether the
    arrays inside can be read is left to the data module, which opens them.

    Raises:
        ConfigError: names the first stores and specs missing, the index and the fix.
    """
    rows, _ = _select_spec(table, phase.spec, key=phase.spec_key, source=source)
    missing = [
        (store, group, spec)
        for store, group, spec in rows[["store", "group", "spec"]].itertuples(index=False)
        if not (Path(store) / group / "zarr.json").is_file()
    ]
    if not missing:
        return
    listed = _describe(source)
    named = "; ".join(
        f"store {store} (tile spec {spec}) does not exist"
        if not Path(store).is_dir()
        else f"store {store} has no group {group!r} of tile spec {spec} "
        f"(no {Path(store) / group / 'zarr.json'})"
        for store, group, spec in missing[:3]
    )
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    if isinstance(source, str | os.PathLike) and os.fspath(source).endswith(".parquet"):
        fix = (
            f"If the stores were moved, rebuild the index with build_dataset (delete {listed} "
            "and rerun the workflow); if a store or its spec group was deleted, re-run "
            "curation for that slide (delete the store and rerun the workflow: write_shards "
            "rewrites it, build_dataset the index)"
        )
    else:
        fix = (
            "Pass the stores' current paths; if a store or its spec group was deleted, re-run "
            "curation for that slide (delete the store and rerun the workflow: write_shards "
            "rewrites it)"
        )
    which = f"{phase.spec_key}: {phase.spec or 'unset, the root spec'}"
    raise ConfigError(
        f"the {phase.name} phase ({which}) reads {len(missing)} (store, tile spec) pair(s) "
        f"that {listed} lists but the disk lacks: {named}{more}. {fix}"
    )


def check_phases(source: ShardSource, config: PretrainConfig) -> list[PhaseSource]:
    """Check, before training, that every phase's tile spec and crop sizes fit the stores,
    and that each (store, tile spec) pair a phase reads is on disk.

    A store that lacks a phase's spec while others hold it is left out of that phase with
    a warning naming it: curation writes a spec's group only where some tile of that size
    passed its keep rules, so a slide with too little tissue for a 512-px tile has none.
    That is decided by the index (or, for a list of stores, by their ``specs``
    attribute); a pair listed there whose store or group is gone from the disk (stores
    moved after build_dataset, a group deleted) is an error, found here rather than when
    the phase opens it, which for the high-res phase is after the whole main phase.

    Raises:
        ConfigError: no store holds a phase's spec, the spec has no patches, a crop is
            larger than the patches it would be cut from, or a store or spec group the
            phase reads is missing.
    """
    table = spec_table(source)
    checked = [_phase_source(table, phase, source) for phase in plan_phases(config)]
    for item in checked:
        _refuse_missing_groups(table, item.phase, source)
    for item in checked:
        lacking = item.stores_without_spec
        if lacking:
            logger.warning(
                "%s %s: %d of %d patch stores lack this tile spec and are left out of the %s "
                "phase (no tile of that size passed curation's keep rules there): %s%s",
                item.phase.spec_key,
                item.phase.spec,
                len(lacking),
                len(lacking) + item.n_stores,
                item.phase.name,
                ", ".join(lacking[:5]),
                ", ..." if len(lacking) > 5 else "",
            )
    return checked


class GlobalBatchSampler(Sampler[tuple[int, int]]):
    """Yields (stream position, patch index) for this rank, from ``start_step`` (default: the
    phase's first step) to ``total_steps``.

    Step s uses stream positions [s * G, (s + 1) * G) for a global batch G; rank r takes
    the r-th contiguous slice of G / world. Positions count from step 0 of the run in
    every phase, so augmentations and masks, which are keyed by position, never repeat.

    Which patch a position reads: a phase's stream starts at its first step
    (``phase_start``, 0 for the main phase) and concatenates one seeded permutation of the
    phase's own ``n_patches`` per data epoch. Position p reads patch perm_e[q mod n] with
    q = p - phase_start * G and e = q // n; perm_e is drawn from (seed, e) in the main
    phase and from (seed, phase_start, e) after it. So the high-res phase, whose tile
    spec holds another number of patches, begins a fresh epoch over them instead of
    continuing the main phase's count, and the patch of a step depends only on (seed,
    phase_start, step, n): a run resumed at any step of a phase, or run on another number
    of ranks, sees the same images as one run straight through.

    Each pass starts at ``current_step()`` when given (the trainer's global step), else at
    ``start_step``. Lightning starts a new pass over the loader when the epoch count it
    restored from a checkpoint runs out, which can be before the phase ends (on resuming,
    and on entering the high-res phase from the main phase's checkpoint); a pass from
    ``start_step`` would then train again on the batches that followed it.
    """

    def __init__(
        self,
        n_patches: int,
        *,
        seed: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int | None = None,
        total_steps: int,
        phase_start: int = 0,
        current_step: Callable[[], int] | None = None,
    ) -> None:
        if global_batch % world_size:
            raise ConfigError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        start_step = phase_start if start_step is None else start_step
        if start_step < phase_start:
            raise ValueError(f"start_step {start_step} is before the phase's start {phase_start}")
        self.n = n_patches
        self.seed = seed
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.start_step = start_step
        self.total_steps = total_steps
        self.phase_start = phase_start
        self.current_step = current_step
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, position: int) -> int:
        offset = position - self.phase_start * self.global_batch
        epoch = offset // self.n
        if self._perm is None or self._perm[0] != epoch:
            # The tag keeps these seeds apart from the masks' (seed, step, 7) and
            # (seed, position, crop, 11).
            keys = (epoch,) if self.phase_start == 0 else (self.phase_start, epoch, 13)
            gen = seeded_generator(self.seed, *keys)
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return int(self._perm[1][offset % self.n])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = self.start_step if self.current_step is None else self.current_step()
        if start < self.phase_start:
            raise ValueError(f"step {start} is before the phase's start {self.phase_start}")
        return self._stream(start)

    def _stream(self, start: int) -> Iterator[tuple[int, int]]:
        for step in range(start, self.total_steps):
            first = step * self.global_batch + self.rank * self.per_rank
            for position in range(first, first + self.per_rank):
                yield position, self._index(position)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.per_rank


class MultiCropDataset(Dataset):
    """Indexed by (stream position, patch index); augmentation seeded by (seed, position)."""

    def __init__(self, patches: Dataset, transform: MultiCrop, *, seed: int) -> None:
        self.patches = patches
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        position, index = item
        views = self.transform(self.patches[index], seeded_generator(self.seed, position))
        return {**views, "position": position}


class MultiCropCollate:
    """Stacks crops crop-major and draws iBOT masks consistently across ranks.

    Output: ``global_crops`` (2B, 3, G, G) [all first crops, then all second crops],
    ``local_crops`` (n_local * B, 3, L, L), ``masks`` (2B, h * w) bool, ``positions`` (B,).
    Which global crops are masked, and their ratios, are drawn for the whole global batch
    from (seed, step); each mask's blocks from (seed, position, crop).
    """

    def __init__(self, config: PretrainConfig, *, seed: int, global_batch: int, global_size: int):
        self.masking = config.masking
        self.seed = seed
        self.global_batch = global_batch
        self.grid = global_size // config.model.patch_size
        self.use_masks = config.loss.ibot_weight > 0

    def _masks(self, positions: list[int]) -> torch.Tensor:
        n_tokens = self.grid * self.grid
        masks = torch.zeros(2, len(positions), n_tokens, dtype=torch.bool)
        if not self.use_masks:
            return masks.flatten(0, 1)
        step = positions[0] // self.global_batch
        ratios = mask_ratios(
            2 * self.global_batch, self.masking, seeded_generator(self.seed, step, 7)
        )
        for b, position in enumerate(positions):
            slot = position % self.global_batch
            for crop in range(2):
                ratio = float(ratios[crop * self.global_batch + slot])
                if ratio > 0:
                    gen = seeded_generator(self.seed, position, crop, 11)
                    n_target = int(n_tokens * ratio)
                    masks[crop, b] = block_mask(self.grid, self.grid, n_target, self.masking, gen)
        return masks.flatten(0, 1)  # (2B, N), crop-major like the images

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate a list of :class:`MultiCropDataset` items."""
        positions = [s["position"] for s in samples]
        n_local = len(samples[0]["local_crops"])
        globals_ = torch.stack([s["global_crops"][k] for k in range(2) for s in samples])
        if n_local:
            locals_ = torch.stack([s["local_crops"][k] for k in range(n_local) for s in samples])
        else:
            locals_ = globals_.new_zeros((0, *globals_.shape[1:]))
        return {
            "global_crops": globals_,
            "local_crops": locals_,
            "masks": self._masks(positions),
            "positions": torch.tensor(positions, dtype=torch.int64),
        }


class PretrainDataModule(L.LightningDataModule):
    """Serves multi-crop batches from the shards, resuming at the trainer's global step.

    Args:
        source: shard index parquet or a list of ``{slide}.zarr`` paths.
        config: the recipe (crops, augmentations, batch size, workers).
        seed: run seed; fixes data order, augmentations and masks.
        total_steps: the step this phase stops at.
        global_size: global crop side in pixels (default: the phase's).
        local_size: local crop side in pixels (default: the phase's).
        phase: the phase served (``plan_phases``): its tile spec, first step and crop
            sizes. Default: the main phase (``data.spec``, ``crops.*``).
    """

    def __init__(
        self,
        source: ShardSource,
        *,
        config: PretrainConfig,
        seed: int,
        total_steps: int,
        global_size: int | None = None,
        local_size: int | None = None,
        phase: Phase | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.config = config
        self.seed = seed
        self.total_steps = total_steps
        phase = phase or plan_phases(config)[0]
        self.global_size = global_size or phase.global_size
        self.local_size = local_size or phase.local_size
        self.phase = dataclasses.replace(
            phase, global_size=self.global_size, local_size=self.local_size
        )
        self._patches: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Open the shard index (cheap; pixel stores open lazily in each worker).

        Raises:
            ConfigError: no store holds the phase's tile spec, it has no patches, or a
                crop is larger than its patches.
        """
        if self._patches is None:
            spec = self.phase.spec
            _phase_source(spec_table(self.source), self.phase, self.source)
            self._patches = open_patches(self.source, spec, key=self.phase.spec_key)
            logger.info(
                "%s phase: %s patches of %s from %s",
                self.phase.name,
                len(self._patches),
                spec or "the root tile spec",
                self.source,
            )

    def train_dataloader(self) -> DataLoader:
        """A loader whose every pass starts at the trainer's global step at that moment
        (the phase's first step, the resumed step, or where Lightning's restored epoch ran
        out); without a trainer, at the phase's first step."""
        self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        start = trainer.global_step if trainer else self.phase.start
        cfg = self.config
        global_batch = cfg.data.batch_size * world
        crops = type(cfg.crops)(
            **{**cfg.crops.__dict__, "global_size": self.global_size, "local_size": self.local_size}
        )
        transform = MultiCrop(crops, cfg.augment, mean=cfg.model.mean, std=cfg.model.std)
        sampler = GlobalBatchSampler(
            len(self._patches),
            seed=self.seed,
            global_batch=global_batch,
            rank=rank,
            world_size=world,
            start_step=start,
            total_steps=self.total_steps,
            phase_start=self.phase.start,
            current_step=(lambda: trainer.global_step) if trainer else None,
        )
        workers = cfg.data.num_workers
        return DataLoader(
            MultiCropDataset(self._patches, transform, seed=self.seed),
            batch_size=cfg.data.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=MultiCropCollate(
                cfg, seed=self.seed, global_batch=global_batch, global_size=self.global_size
            ),
            pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
            drop_last=True,
        )
