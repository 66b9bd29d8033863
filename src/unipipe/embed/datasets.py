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

import imagecodecs
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_ADAPTERS",
    "FileRois",
    "RoiItem",
    "ZipClassFolders",
    "build_dataset",
    "decode_rgb",
    "normalise_batch",
    "resize_patch",
    "to_model_input",
]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True, kw_only=True)
class RoiItem:
    """One ROI image: where it is, its class index and its split name."""

    path: str
    label: int
    split: str


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, the pixels PIL's ``convert("RGB")`` gives.

    Three-component JPEGs (the ROI datasets' usual format) go through libjpeg-turbo via
    imagecodecs, without PIL's per-image object and copy overhead (about 2x faster here);
    everything else (PNG, TIFF, grey or CMYK JPEG) goes through PIL. Both paths leave EXIF
    orientation unapplied, and both read a JPEG that stores RGB without marking it (as
    Aperio tiles do) as YCbCr: the fast path changes speed, not the pixels PIL gave.
    """
    if data[:3] == _JPEG_MAGIC:
        try:
            rgb = imagecodecs.jpeg8_decode(data)
        except imagecodecs.Jpeg8Error:
            rgb = None  # let PIL decode it or raise its own error
        if rgb is not None and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8:
            return rgb
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def resize_patch(rgb: np.ndarray, *, img_size: int) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, img_size, img_size) uint8, bilinear with antialiasing.

    The filter is PIL's antialiased bilinear (what torchvision's ``Resize`` applies to a PIL
    image), run by torch's uint8 kernel on the channels-last pixels: about 3x faster than
    PIL on one core, within 2 grey levels of it (``test_datasets`` states the tolerance).
    Normalisation happens once per batch (``normalise_batch``).
    """
    if not rgb.flags.writeable:
        rgb = rgb.copy()  # torch refuses to wrap read-only memory silently
    chw = torch.from_numpy(rgb).permute(2, 0, 1)  # (3, H, W) view of channels-last memory
    if chw.shape[1:] == (img_size, img_size):
        return chw.contiguous()
    out = F.interpolate(
        chw[None], size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0].contiguous()  # (3, S, S)


def normalise_batch(
    batch: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> ``(x / 255 - mean) / std`` in ``dtype`` on the batch's device.

    Computed in float32 as ``x * scale + shift`` (one conversion pass and two in-place
    passes), then cast once to ``dtype`` (e.g. bfloat16 for a bf16 encoder).

    Args:
        batch: uint8 patches, channels first.
        mean: per-channel mean of the encoder, on the 0-1 scale.
        std: per-channel standard deviation, on the 0-1 scale.
        dtype: dtype of the returned tensor.
        out: float32 tensor of the batch's shape and device to write into. On CPU a fresh
            ~40 MB buffer per batch of 64 costs more in page faults than the arithmetic,
            so callers looping over batches pass the same one each time.
    """
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(torch.float32).view(1, 3, 1, 1).to(batch.device)
    shift = (-m / s).to(torch.float32).view(1, 3, 1, 1).to(batch.device)
    if out is None:
        out = torch.empty(batch.shape, dtype=torch.float32, device=batch.device)
    out.copy_(batch)
    out.mul_(scale).add_(shift)
    return out if dtype == torch.float32 else out.to(dtype)


def to_model_input(
    rgb: np.ndarray, *, img_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, img_size, img_size) float32 model input, one patch."""
    return normalise_batch(resize_patch(rgb, img_size=img_size)[None], mean=mean, std=std)[0]


class _RoiImages:
    """Map-style dataset over ``items`` (RoiItem); subclasses say how to read the bytes."""

    items: list[RoiItem]
    label_names: list[str]

    def __init__(self, *, img_size: int) -> None:
        self.img_size = int(img_size)

    def _read_bytes(self, index: int) -> bytes:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def read_rgb(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 pixels of item ``index``."""
        return decode_rgb(self._read_bytes(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """(resized patch (3, S, S) uint8, index); normalise with ``normalise_batch``."""
        return resize_patch(self.read_rgb(index), img_size=self.img_size), index


def _check_items(items: list[RoiItem], where: str, splits: Sequence[str], classes: Any) -> None:
    if not items:
        raise ConfigError(
            f"{where}: no ROI images for splits {list(splits)} and classes {classes}; "
            "check the task's `path`, `classes` and `split`"
        )
    logger.info("%s: %s ROIs in splits %s", where, len(items), list(splits))


class ZipClassFolders(_RoiImages):
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
    ) -> None:
        super().__init__(img_size=img_size)
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise ConfigError(f"task path {self.path} does not exist (adapter zip_class_folders)")
        self.label_names = list(classes)
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1
        with zipfile.ZipFile(self.path) as zf:
            self.items = _items_from_names(zf.namelist(), self.label_names, splits)
        _check_items(self.items, self.path, splits, self.label_names)

    def _read_bytes(self, index: int) -> bytes:
        if self._zip is None or self._pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zip.read(self.items[index].path)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zip"] = None  # an open ZipFile does not cross process boundaries
        return state


def _items_from_names(
    names: Sequence[str], classes: Sequence[str], splits: Sequence[str]
) -> list[RoiItem]:
    """Items for names whose last three parts are split/class/image, sorted by name."""
    lookup = {c: i for i, c in enumerate(classes)}
    items = []
    for name in sorted(names):
        parts = PurePosixPath(name).parts
        if len(parts) < 3 or not name.lower().endswith(_IMAGE_SUFFIXES):
            continue
        split, cls = parts[-3], parts[-2]
        if split in splits and cls in lookup:
            items.append(RoiItem(path=name, label=lookup[cls], split=split))
    return items


class FileRois(_RoiImages):
    """ROI image files on disk, listed by a folder layout or a CSV manifest."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        items: list[RoiItem],
        *,
        label_names: Sequence[str],
        img_size: int = 224,
    ) -> None:
        super().__init__(img_size=img_size)
        self.root = os.fspath(root)
        self.items = items
        self.label_names = list(label_names)

    def _read_bytes(self, index: int) -> bytes:
        with open(os.path.join(self.root, self.items[index].path), "rb") as fh:
            return fh.read()


def _splits(spec: Mapping[str, Any]) -> list[str]:
    """Split names a task uses: ``splits`` or the train/test values of ``split``."""
    if spec.get("splits"):
        return list(spec["splits"])
    split = spec.get("split") or {"train": "train", "test": "test"}
    names = []
    for key in ("train", "val", "test"):
        value = split.get(key)
        names.extend([value] if isinstance(value, str) else list(value or ()))
    return names


def _zip_class_folders(spec: Mapping[str, Any], **transform: Any) -> ZipClassFolders:
    """``{adapter: zip_class_folders, path, classes, split}``."""
    return ZipClassFolders(spec["path"], classes=spec["classes"], splits=_splits(spec), **transform)


def _class_folders(spec: Mapping[str, Any], **transform: Any) -> FileRois:
    """``{adapter: class_folders, path, classes, split}``: ``<path>/<split>/<class>/<image>``."""
    root = os.fspath(spec["path"])
    names = [
        os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
        for d, _, files in os.walk(root)
        for f in files
    ]
    splits = _splits(spec)
    items = _items_from_names(names, spec["classes"], splits)
    _check_items(items, root, splits, spec["classes"])
    return FileRois(root, items, label_names=spec["classes"], **transform)


def _csv_manifest(spec: Mapping[str, Any], **transform: Any) -> FileRois:
    """``{adapter: csv_manifest, path: manifest.csv}`` with columns path, label, split.

    Image paths are relative to the CSV's folder; labels are class names. When the task
    gives no ``classes`` they are the sorted distinct labels.
    """
    import pandas as pd

    table = pd.read_csv(spec["path"])
    missing = {"path", "label", "split"} - set(table.columns)
    if missing:
        raise ConfigError(f"{spec['path']}: manifest lacks columns {sorted(missing)}")
    classes = list(spec.get("classes") or sorted(table["label"].astype(str).unique()))
    lookup = {c: i for i, c in enumerate(classes)}
    splits = _splits(spec)
    table = table[table["split"].isin(splits) & table["label"].astype(str).isin(lookup)]
    items = [
        RoiItem(path=str(r.path), label=lookup[str(r.label)], split=str(r.split))
        for r in table.sort_values("path").itertuples()
    ]
    _check_items(items, os.fspath(spec["path"]), splits, classes)
    root = os.path.dirname(os.path.abspath(os.fspath(spec["path"])))
    return FileRois(root, items, label_names=classes, **transform)


DatasetFactory = Callable[..., Any]

# Task `adapter` name -> factory(spec, img_size=) giving a map-style dataset
# with .items (RoiItem) and .label_names.
DATASET_ADAPTERS: dict[str, DatasetFactory] = {
    "zip_class_folders": _zip_class_folders,
    "class_folders": _class_folders,
    "csv_manifest": _csv_manifest,
}


def build_dataset(spec: Mapping[str, Any], *, img_size: int) -> Any:
    """Instantiate the adapter named by ``spec["adapter"]``, resizing patches to img_size px."""
    adapter = spec.get("adapter")
    if adapter not in DATASET_ADAPTERS:
        raise ConfigError(
            f"task adapter {adapter!r} is not implemented; available: {sorted(DATASET_ADAPTERS)}"
        )
    for key in ("path",) if adapter == "csv_manifest" else ("path", "classes"):
        if not spec.get(key):
            raise ConfigError(f"task spec for adapter {adapter!r} lacks key {key!r}")
    return DATASET_ADAPTERS[adapter](spec, img_size=img_size)
