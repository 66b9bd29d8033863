"""Readers for the ROI feature h5 and for slide feature bags (both common h5 schemas)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import h5py
import numpy as np

from unipipe.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["FeatureBag", "RoiFeatures", "read_bag", "read_roi_features"]


@dataclass(frozen=True, kw_only=True)
class RoiFeatures:
    """Contents of a ROI feature h5 written by ``unipipe.embed.rois.run_embed_rois``.

    Attributes:
        features: (N, D) float32 CLS embeddings.
        labels: (N,) int64 class indices into ``label_names``.
        split: (N,) split name per ROI (``train``, ``test``, ...).
        paths: (N,) where each ROI came from.
        label_names: class names, index = label.
        encoder: encoder config name.
        dataset: dataset path the ROIs were read from.
        img_size: input side in px the ROIs were embedded at (None if not recorded).
    """

    features: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    paths: np.ndarray
    label_names: list[str]
    encoder: str
    dataset: str
    img_size: int | None = None

    def subset(self, split_names: str | list[str]) -> np.ndarray:
        """Row indices whose split is one of ``split_names`` (in file order)."""
        names = [split_names] if isinstance(split_names, str) else list(split_names)
        return np.flatnonzero(np.isin(self.split, names))


def _text(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def read_roi_features(path: str | os.PathLike[str]) -> RoiFeatures:
    """Load a ROI feature h5 into memory."""
    with h5py.File(path, "r") as h5:
        missing = [k for k in ("features", "labels", "split", "paths") if k not in h5]
        if missing:
            raise ConfigError(f"{os.fspath(path)} lacks datasets {missing}; rerun embed_rois")
        return RoiFeatures(
            features=h5["features"][:].astype(np.float32),
            labels=h5["labels"][:].astype(np.int64),
            split=_text(h5["split"][:]),
            paths=_text(h5["paths"][:]),
            label_names=[str(n) for n in _text(np.asarray(h5.attrs["label_names"]))],
            encoder=str(h5.attrs.get("encoder", "")),
            dataset=str(h5.attrs.get("dataset", "")),
            img_size=int(h5.attrs["img_size"]) if "img_size" in h5.attrs else None,
        )


@dataclass(frozen=True, kw_only=True)
class FeatureBag:
    """Patch features of one slide.

    Attributes:
        features: (N, D) float32 patch embeddings.
        coords: (N, 2) int64 level-0 (x, y) of each patch, or None when the file has none.
        names: (N,) per-patch names (e.g. tile file names), or None.
        schema: which layout the file used: ``features/metadata``, ``feats/coords`` or
            ``features/coords``.
    """

    features: np.ndarray
    coords: np.ndarray | None
    names: np.ndarray | None
    schema: str


# (features dataset, companion dataset) layouts seen in the field, tried in order.
_BAG_SCHEMAS = (("features", "coords"), ("feats", "coords"), ("features", "metadata"))


def read_bag(path: str | os.PathLike[str]) -> FeatureBag:
    """Read a slide's feature bag whatever its schema (CLAM/TRIDENT ``features``+``coords``,
    ``feats``+``coords``, or mopadi's ``features``+``metadata`` file names).

    A leading batch axis of size 1 ((1, N, D) as TRIDENT writes) is dropped.

    Raises:
        ConfigError: naming the file when it has no features dataset, when the features are
            not (N, D) (a 1-D slide embedding is no bag), or when any of them is NaN or
            infinite.
    """
    with h5py.File(path, "r") as h5:
        layouts = [(f, o) for f, o in _BAG_SCHEMAS if f in h5 and o in h5]
        layouts += [(f, "") for f in ("features", "feats") if f in h5]
        if not layouts:
            raise ConfigError(
                f"{os.fspath(path)}: no `features` or `feats` dataset (has {sorted(h5)}); "
                "re-extract the bag or convert it"
            )
        feat_key, other = layouts[0]
        feats = np.asarray(h5[feat_key][:], dtype=np.float32)
        extra = np.asarray(h5[other][:]) if other else None
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if feats.ndim != 2:
        raise ConfigError(
            f"{os.fspath(path)}: `{feat_key}` has shape {feats.shape}; a bag holds (N, D) patch "
            "features (a 1-D array is a slide embedding, not a bag): re-extract the bag"
        )
    finite = np.isfinite(feats).all(axis=1)
    if not finite.all():
        raise ConfigError(
            f"{os.fspath(path)}: {int((~finite).sum())} of {len(feats)} patches have NaN or "
            f"infinite features (first: patch {int(np.argmin(finite))}); re-embed the slide or "
            "drop its row"
        )
    if extra is not None and extra.ndim == 3 and extra.shape[0] == 1:
        extra = extra[0]
    coords = extra.astype(np.int64) if other == "coords" and extra is not None else None
    names = _text(extra) if other == "metadata" and extra is not None else None
    schema = f"{feat_key}/{other}" if other else feat_key
    return FeatureBag(features=feats, coords=coords, names=names, schema=schema)
