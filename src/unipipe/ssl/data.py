"""Training data: patches from the Zarr shards, a resumable global-batch sampler, multi-crop collate."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unipipe.curate.shards import PatchDataset, read_index_parquet
from unipipe.errors import ConfigError
from unipipe.ssl.augment import MultiCrop
from unipipe.ssl.config import PretrainConfig
from unipipe.ssl.masking import block_mask, mask_ratios, seeded_generator

logger = logging.getLogger(__name__)

__all__ = [
    "GlobalBatchSampler",
    "MultiCropCollate",
    "MultiCropDataset",
    "PretrainDataModule",
    "open_patches",
    "shard_paths",
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


def open_patches(source: ShardSource) -> Dataset:
    """A map-style dataset of (H, W, 3) uint8 patches over the stores (curate's PatchDataset).

    An index written by ``build_dataset`` (columns ``shard_zarr``, ``group``, ``spec``) is
    read as such, which picks each store's root tile spec; a plain list of stores, or an
    index with a ``shard`` column, reads each store's root spec too.
    """
    if isinstance(source, str | os.PathLike) and os.fspath(source).endswith(".parquet"):
        columns = read_index_parquet(source).columns
        if {"shard_zarr", "group"} <= set(columns):
            return PatchDataset(source)
    return PatchDataset([os.fspath(p) for p in shard_paths(source)])


class GlobalBatchSampler(Sampler[tuple[int, int]]):
    """Yields (stream position, patch index) for this rank, from ``start_step`` to ``total_steps``.

    The global stream concatenates one seeded permutation of the patches per data epoch.
    Step s uses stream positions [s * G, (s + 1) * G) for a global batch G; rank r takes
    the r-th contiguous slice of G / world. The order depends only on (seed, step), so a run
    resumed at any step, or run on another number of ranks, sees the same images.
    """

    def __init__(
        self,
        n_patches: int,
        *,
        seed: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        total_steps: int,
    ) -> None:
        if global_batch % world_size:
            raise ConfigError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.n = n_patches
        self.seed = seed
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.start_step = start_step
        self.total_steps = total_steps
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, position: int) -> int:
        epoch = position // self.n
        if self._perm is None or self._perm[0] != epoch:
            gen = seeded_generator(self.seed, epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return int(self._perm[1][position % self.n])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for step in range(self.start_step, self.total_steps):
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
        global_size: global crop side in pixels (changes in the high-resolution phase).
        local_size: local crop side in pixels.
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
    ) -> None:
        super().__init__()
        self.source = source
        self.config = config
        self.seed = seed
        self.total_steps = total_steps
        self.global_size = global_size or config.crops.global_size
        self.local_size = local_size or config.crops.local_size
        self._patches: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Open the shard index (cheap; pixel stores open lazily in each worker)."""
        if self._patches is None:
            self._patches = open_patches(self.source)
            logger.info("pretraining on %s patches from %s", len(self._patches), self.source)
            if len(self._patches) == 0:
                raise ConfigError(f"no patches in {self.source}; check the shard index")

    def train_dataloader(self) -> DataLoader:
        """A loader starting at the trainer's current global step (0, or the resumed step)."""
        self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        start = trainer.global_step if trainer else 0
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
