"""Tests of unipipe.evaluate.features on the real mopadi bags and the ROI h5."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from unipipe.errors import ConfigError
from unipipe.evaluate.features import read_bag, read_roi_features

FEATURES = Path(__file__).resolve().parents[2] / "resources" / "features"


@pytest.mark.parametrize(
    ("name", "n", "schema"),
    [
        ("TCGA-3X-AAVA-01Z-00-DX1.h5", 180, "features/metadata"),
        ("TCGA-AD-6964-01Z-00-DX1.h5", 777, "feats/coords"),
    ],
)
def test_read_bag_both_real_schemas(name: str, n: int, schema: str) -> None:
    """Both bundled bags read as (N, 512) float32 with names or level-0 coords."""
    bag = read_bag(FEATURES / name)
    assert bag.features.shape == (n, 512)
    assert bag.features.dtype == np.float32
    assert bag.schema == schema
    if schema == "feats/coords":
        assert bag.coords.shape == (777, 2)
        assert bag.coords[0].tolist() == [10240, 21504]
    else:
        assert bag.names[0] == "0_0_0_506.jpg"


def test_read_bag_trident_batch_axis(tmp_path: Path) -> None:
    """A (1, N, D) features + (1, N, 2) coords file drops the batch axis."""
    with h5py.File(tmp_path / "b.h5", "w") as h5:
        h5["features"] = np.ones((1, 5, 8), np.float32)
        h5["coords"] = np.zeros((1, 5, 2), np.int64)
    bag = read_bag(tmp_path / "b.h5")
    assert bag.features.shape == (5, 8)
    assert bag.coords.shape == (5, 2)


def test_read_bag_unknown_schema_raises(tmp_path: Path) -> None:
    """A file without features/feats raises ConfigError listing what it has."""
    with h5py.File(tmp_path / "b.h5", "w") as h5:
        h5["emb"] = np.ones((5, 8), np.float32)
    with pytest.raises(ConfigError, match="emb"):
        read_bag(tmp_path / "b.h5")


def test_read_roi_features_roundtrip(demo_h5: Path) -> None:
    """The ROI h5 reads back with 130 train and 60 test rows and class names."""
    feats = read_roi_features(demo_h5)
    assert feats.label_names == ["LUAD", "LUSC"]
    assert len(feats.subset("train")) == 130
    assert len(feats.subset(["test"])) == 60
    assert feats.encoder == "random_tiny"


def _copy_bag(tmp_path: Path, features: np.ndarray) -> Path:
    with h5py.File(tmp_path / "b.h5", "w") as h5:
        h5["features"] = features
    return tmp_path / "b.h5"


def test_read_bag_refuses_non_finite_features(tmp_path: Path) -> None:
    """NaN or inf in any patch of a real bag is refused, naming the file and the first patch."""
    feats = read_bag(FEATURES / "TCGA-AD-6964-01Z-00-DX1.h5").features.copy()
    feats[10, 0] = np.nan
    feats[20, 5] = -np.inf
    path = _copy_bag(tmp_path, feats)
    with pytest.raises(ConfigError, match=r"2 of 777 patches have NaN or infinite features "
                       r"\(first: patch 10\)") as err:  # fmt: skip
        read_bag(path)
    assert str(path) in str(err.value)


def test_read_bag_refuses_a_slide_embedding(tmp_path: Path) -> None:
    """A 1-D vector (one embedding per slide) is no bag: refused with its shape."""
    feats = read_bag(FEATURES / "TCGA-3X-AAVA-01Z-00-DX1.h5").features
    path = _copy_bag(tmp_path, feats.mean(axis=0))
    with pytest.raises(ConfigError, match=r"b.h5: `features` has shape \(512,\)"):
        read_bag(path)
