"""Tests of unipipe.evaluate.segmentation: a frozen-token probe on real tiles and dark masks."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from unipipe.errors import ConfigError
from unipipe.evaluate.segmentation import dice, iou, read_seg_pairs, run_segmentation_probe

ZIP = Path(__file__).resolve().parents[2] / "resources" / "tiles" / "tcga_luadlusc.zip"
SPEC = {"kind": "random", "arch": "vit_small_patch16_224", "seed": 0,
        "kwargs": {"depth": 1, "embed_dim": 64, "num_heads": 2}}  # fmt: skip


def _seg_folder(root: Path) -> Path:
    """Real TCGA tiles with a 'cell-dense region' mask: blurred grey below 130 (~42% of pixels).

    Blurring (Gaussian, radius 12 px) makes regions larger than a 16 px token, which a
    token-level probe can resolve; single nuclei it cannot.
    """
    with zipfile.ZipFile(ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        for i, name in enumerate(names[:40]):
            split = "train" if i < 30 else "test"
            for sub in ("images", "masks"):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
            path = root / split / "images" / f"t{i:02d}.png"
            with zf.open(name) as fh:
                rgb = np.asarray(Image.open(fh).convert("RGB"))
            Image.fromarray(rgb).save(path)
            grey = Image.fromarray(rgb).convert("L").filter(ImageFilter.GaussianBlur(12))
            Image.fromarray(((np.asarray(grey) < 130) * 255).astype(np.uint8)).save(
                root / split / "masks" / f"t{i:02d}.png"
            )
    return root


def test_dice_known_values() -> None:
    """Dice of half-overlapping masks is 0.5; two empty masks give 1."""
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_iou_known_values() -> None:
    """IoU of masks sharing 1 of 3 covered rows is 1/3, and relates to Dice as D / (2 - D)."""
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert iou(a, b) == pytest.approx(1 / 3)
    assert iou(a, b) == pytest.approx(dice(a, b) / (2 - dice(a, b)))
    assert iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_segmentation_probe_beats_empty_prediction(tmp_path: Path) -> None:
    """On dark-pixel masks of real tiles the probe beats predicting everything foreground."""
    root = _seg_folder(tmp_path / "seg")
    task = {"id": "demo_seg", "path": str(root), "split": {"train": "train", "test": "test"}}
    run_segmentation_probe(task, encoder_name="rand", encoder_spec=SPEC, params=None, seed=0,
                           metrics_json=tmp_path / "m.json", sidecar=tmp_path / "s.json")  # fmt: skip
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["n_train"], m["n_test"], m["protocol"]) == (30, 10, "segmentation_probe")
    test_masks = [np.asarray(Image.open(mask).resize((224, 224), Image.Resampling.NEAREST)) > 0
                  for _, mask in read_seg_pairs(root, "test")]  # fmt: skip
    all_foreground = dice(np.ones((10, 224, 224), bool), np.stack(test_masks))
    assert m["dice"] > all_foreground + 0.05
    assert m["iou"] == pytest.approx(m["dice"] / (2 - m["dice"]))
    assert m["per_class"]["foreground"]["dice"] == pytest.approx(m["dice"])
    assert 0 <= m["per_class"]["background"]["iou"] <= 1


def test_read_seg_pairs_missing_folder_names_layout(tmp_path: Path) -> None:
    """A folder without images/ and masks/ raises ConfigError naming both paths."""
    with pytest.raises(ConfigError, match="masks"):
        read_seg_pairs(tmp_path, "train")
