"""ROI dataset adapters (registry) and the resize + normalise transform used for embedding."""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_ADAPTERS",
    "RoiItem",
    "ZipClassFolders",
    "build_dataset",
    "to_model_input",
]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass(frozen=True, kw_only=True)
class RoiItem:
    """One ROI image: where it is, its class index and its split name."""

    path: str
    label: int
    split: str


def to_model_input(
    rgb: np.ndarray, *, img_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, img_size, img_size) float32, normalised on the 0-1 scale.

    Resizing is PIL bilinear with antialiasing (as torchvision's Resize on PIL images).
    """
    image = Image.fromarray(rgb)
    if image.size != (img_size, img_size):
        image = image.resize((img_size, img_size), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


class ZipClassFolders:
    """ROIs stored in a zip as ``<root>/<split>/<class>/<image>``, read without extracting.

    The zip handle opens lazily in each process (safe with DataLoader workers). Items are
    sorted by member name, so the order is stable across runs and machines.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        classes: Sequence[str],
        splits: Sequence[str] = ("train", "test"),
        img_size: int = 224,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise ConfigError(f"task path {self.path} does not exist (adapter zip_class_folders)")
        self.label_names = list(classes)
        self.img_size, self.mean, self.std = int(img_size), tuple(mean), tuple(std)
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1
        self.items = self._index(splits)

    def _index(self, splits: Sequence[str]) -> list[RoiItem]:
        """List members whose last three path parts are split/class/image."""
        lookup = {c: i for i, c in enumerate(self.label_names)}
        items = []
        with zipfile.ZipFile(self.path) as zf:
            for name in sorted(zf.namelist()):
                parts = PurePosixPath(name).parts
                if len(parts) < 3 or not name.lower().endswith(_IMAGE_SUFFIXES):
                    continue
                split, cls = parts[-3], parts[-2]
                if split in splits and cls in lookup:
                    items.append(RoiItem(path=name, label=lookup[cls], split=split))
        if not items:
            raise ConfigError(
                f"{self.path}: no <split>/<class>/<image> members for splits {list(splits)} "
                f"and classes {self.label_names}; check the task's `classes` and `splits`"
            )
        logger.info("%s: %s ROIs in splits %s", self.path, len(items), list(splits))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def read_rgb(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 pixels of item ``index``."""
        if self._zip is None or self._pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        data = self._zip.read(self.items[index].path)
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """(model input (3, S, S), index)."""
        rgb = self.read_rgb(index)
        return to_model_input(rgb, img_size=self.img_size, mean=self.mean, std=self.std), index

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zip"] = None  # an open ZipFile does not cross process boundaries
        return state


def _zip_class_folders(spec: Mapping[str, Any], **transform: Any) -> ZipClassFolders:
    """``{adapter: zip_class_folders, path, classes, splits}``."""
    return ZipClassFolders(
        spec["path"],
        classes=spec["classes"],
        splits=spec.get("splits", ("train", "test")),
        **transform,
    )


DatasetFactory = Callable[..., Any]

# Task `adapter` name -> factory(spec, img_size=, mean=, std=) giving a map-style dataset
# with .items (RoiItem) and .label_names.
DATASET_ADAPTERS: dict[str, DatasetFactory] = {
    "zip_class_folders": _zip_class_folders,
}


def build_dataset(
    spec: Mapping[str, Any], *, img_size: int, mean: Sequence[float], std: Sequence[float]
) -> Any:
    """Instantiate the adapter named by ``spec["adapter"]`` with the encoder's transform."""
    adapter = spec.get("adapter")
    if adapter not in DATASET_ADAPTERS:
        raise ConfigError(
            f"task adapter {adapter!r} is not implemented; available: {sorted(DATASET_ADAPTERS)}"
        )
    for key in ("path", "classes"):
        if key not in spec:
            raise ConfigError(f"task spec for adapter {adapter!r} lacks key {key!r}")
    return DATASET_ADAPTERS[adapter](spec, img_size=img_size, mean=mean, std=std)
