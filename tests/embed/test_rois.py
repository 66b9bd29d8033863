"""Tests of unipipe.embed.rois and the zip_class_folders adapter on UNI's TCGA tiles."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from unipipe.embed.datasets import ZipClassFolders, build_dataset, to_model_input
from unipipe.embed.rois import run_embed_rois
from unipipe.errors import ConfigError


def test_zip_class_folders_counts_real_zip(demo_task: dict) -> None:
    """The zip holds 70/60 train and 30/30 test LUAD/LUSC tiles, sorted by name."""
    ds = ZipClassFolders(demo_task["path"], classes=demo_task["classes"])
    counts = {}
    for it in ds.items:
        counts[(it.split, it.label)] = counts.get((it.split, it.label), 0) + 1
    assert counts == {("train", 0): 70, ("train", 1): 60, ("test", 0): 30, ("test", 1): 30}
    assert [it.path for it in ds.items] == sorted(it.path for it in ds.items)
    assert ds.read_rgb(0).shape == (256, 256, 3)


def test_to_model_input_resizes_and_normalises() -> None:
    """A constant 256 px patch becomes (3, 224, 224) with (v - mean) / std per channel."""
    rgb = np.full((256, 256, 3), 128, dtype=np.uint8)
    x = to_model_input(rgb, img_size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(
        x[:, 0, 0].numpy(), (128 / 255 - 0.5) / np.array([0.25, 0.5, 1]), rtol=1e-4
    )


def test_build_dataset_unknown_adapter_lists_known() -> None:
    """An unimplemented adapter raises ConfigError listing the registered ones."""
    with pytest.raises(ConfigError, match="zip_class_folders"):
        build_dataset(
            {"adapter": "imagefolder", "path": "x", "classes": []},
            img_size=224,
        )


def test_dataset_items_are_uint8_and_normalise_on_batch(demo_task: dict) -> None:
    """Items are resized uint8 patches; batch normalisation equals the one-patch transform."""
    from unipipe.embed.datasets import normalise_batch

    ds = ZipClassFolders(demo_task["path"], classes=demo_task["classes"], img_size=224)
    x, idx = ds[5]
    assert (x.dtype, tuple(x.shape), idx) == (torch.uint8, (3, 224, 224), 5)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    one = to_model_input(ds.read_rgb(5), img_size=224, mean=mean, std=std)
    torch.testing.assert_close(normalise_batch(x[None], mean=mean, std=std)[0], one)


def test_run_embed_rois_writes_contract_h5(
    demo_task: dict, tiny_random_spec: dict, tmp_path: Path
) -> None:
    """The ROI h5 has features/labels/split/paths and attrs; a rerun is byte-identical."""
    outs = []
    for i in range(2):
        out = tmp_path / f"f{i}.h5"
        run_embed_rois(
            demo_task,
            encoder_name="rand",
            encoder_spec=tiny_random_spec,
            out_h5=out,
            sidecar=tmp_path / f"s{i}.json",
            batch_size=64,
            num_workers=0,
            img_size=224,
        )
        outs.append(out.read_bytes())
    with h5py.File(tmp_path / "f0.h5") as h5:
        assert h5["features"].shape == (190, 32)
        assert h5["features"].dtype == np.float32
        assert h5["labels"].dtype == np.int64
        assert set(h5["split"][:].tolist()) == {b"train", b"test"}
        assert h5["paths"][0].startswith(b"tcga_luadlusc/")
        assert [str(n) for n in h5.attrs["label_names"]] == ["LUAD", "LUSC"]
        assert h5.attrs["encoder"] == "rand"
        assert np.isfinite(h5["features"][:]).all()
    assert outs[0] == outs[1]
    assert (tmp_path / "s0.json").read_bytes() == (tmp_path / "s1.json").read_bytes()


def _copy_tiles(zip_path: str, out: Path, n: int) -> list[tuple[str, str, str]]:
    """Copy the first n train and test tiles of each class out of the zip into tmp."""
    import zipfile

    rows = []
    with zipfile.ZipFile(zip_path) as zf:
        for split in ("train", "test"):
            for cls in ("LUAD", "LUSC"):
                prefix = f"tcga_luadlusc/{split}/{cls}/"
                names = sorted(m for m in zf.namelist() if m.startswith(prefix) and m != prefix)
                for name in names[:n]:
                    rel = f"{split}/{cls}/{Path(name).name}"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    (out / rel).write_bytes(zf.read(name))
                    rows.append((rel, cls, split))
    return rows


@pytest.mark.parametrize("adapter", ["class_folders", "csv_manifest"])
def test_file_adapters_read_copied_tiles(adapter: str, demo_task: dict, tmp_path: Path) -> None:
    """Folder and CSV adapters list the same 12 tiles with the zip's pixels."""
    rows = _copy_tiles(demo_task["path"], tmp_path, 3)
    if adapter == "csv_manifest":
        lines = ["path,label,split"] + [",".join(r) for r in rows]
        (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
        spec = {"adapter": adapter, "path": str(tmp_path / "manifest.csv")}
    else:
        spec = {"adapter": adapter, "path": str(tmp_path), "classes": ["LUAD", "LUSC"]}
    ds = build_dataset(spec, img_size=224)
    zipped = ZipClassFolders(demo_task["path"], classes=["LUAD", "LUSC"])
    assert len(ds) == 12
    assert ds.label_names == ["LUAD", "LUSC"]
    assert sorted((it.split, it.label) for it in ds.items).count(("test", 1)) == 3
    first = ds.items[0].path.split("/")[-1]
    ref = next(i for i, it in enumerate(zipped.items) if it.path.endswith("/" + first))
    np.testing.assert_array_equal(ds.read_rgb(0), zipped.read_rgb(ref))


def test_run_embed_rois_workers_give_same_features(
    demo_task: dict, tiny_random_spec: dict, tmp_path: Path
) -> None:
    """Two DataLoader workers (each opening the zip itself) give the single-process features."""
    for workers in (0, 2):
        run_embed_rois(demo_task, encoder_name="rand", encoder_spec=tiny_random_spec,
                       out_h5=tmp_path / f"w{workers}.h5", sidecar=tmp_path / f"w{workers}.json",
                       batch_size=48, num_workers=workers, img_size=224)  # fmt: skip
    with h5py.File(tmp_path / "w0.h5") as a, h5py.File(tmp_path / "w2.h5") as b:
        np.testing.assert_array_equal(a["features"][:], b["features"][:])
        assert a["paths"][:].tolist() == b["paths"][:].tolist()


def test_demo_embeddings_match_pil_reference_path(demo_task: dict) -> None:
    """The demo ViT's features of 64 real tiles move < 0.1% (L2) from the PIL reference path."""
    import io

    from PIL import Image
    from torch.utils.data import DataLoader, Subset

    from unipipe.embed.encoders import resolve_encoder
    from unipipe.embed.rois import embed_batches

    # The demo's random_init encoder: config/pretrain/tiny_cpu.yaml's model at seed 0.
    spec = {"kind": "random", "arch": "vit_tiny_patch16_224", "seed": 0,
            "kwargs": {"img_size": 112, "depth": 4, "init_values": 0.1}}  # fmt: skip
    model, meta = resolve_encoder("random_init", spec)
    ds = ZipClassFolders(demo_task["path"], classes=demo_task["classes"], img_size=224)
    picks = list(range(0, len(ds), 3))  # both classes, both splits
    loader = DataLoader(Subset(ds, picks), batch_size=32)
    fast = embed_batches(model, loader, mean=meta.mean, std=meta.std)

    images = []
    for i in picks:
        with Image.open(io.BytesIO(ds._read_bytes(i))) as im:
            im = im.convert("RGB").resize((224, 224), Image.BILINEAR)
        images.append(torch.from_numpy(np.array(im)).permute(2, 0, 1))
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    x = (torch.stack(images).float() / 255.0 - mean) / std  # (64, 3, 224, 224)
    with torch.inference_mode():
        ref = torch.cat([model(x[i : i + 32]) for i in range(0, len(x), 32)]).numpy()

    change = np.linalg.norm(fast - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert change.max() < 1e-3
