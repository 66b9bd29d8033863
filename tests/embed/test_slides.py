"""Tests of unipipe.embed.slides.run_embed_slide on a patch store of the real CMU-1 slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unipipe.curate.shards import ShardParams, write_store
from unipipe.embed.slides import run_embed_slide
from unipipe.evaluate.features import read_bag
from unipipe.slide import open_slide

SVS = Path(__file__).resolve().parents[2] / "resources" / "slides" / "CMU-1-Small-Region.svs"


def test_run_embed_slide_writes_bag_read_by_evaluate(
    tiny_random_spec: dict, tmp_path: Path
) -> None:
    """12 real 256 px patches at 0.5 mpp become a (12, D) bag with their level-0 coords."""
    xs, ys = np.meshgrid(np.arange(4) * 512, np.arange(3) * 512 + 600)
    selected = pd.DataFrame({"slide_id": "CMU-1", "x": xs.ravel(), "y": ys.ravel(),
                             "size_px": 256, "mpp": 0.5, "cluster": 0})  # fmt: skip
    store = tmp_path / "CMU-1.zarr"
    with open_slide(SVS, slide_id="CMU-1") as slide:
        write_store(slide, selected, store, ShardParams())
    out = tmp_path / "CMU-1.h5"
    run_embed_slide(store, slide_id="CMU-1", encoder_name="tiny", encoder_spec=tiny_random_spec,
                    out_h5=out, sidecar=tmp_path / "s.json", batch_size=5)  # fmt: skip
    bag = read_bag(out)
    assert bag.schema == "features/coords"
    assert bag.features.shape == (12, 32)
    assert np.isfinite(bag.features).all()
    np.testing.assert_array_equal(bag.coords, selected[["x", "y"]].to_numpy())


def test_run_embed_wsi_embeds_every_kept_tile(tiny_random_spec: dict, tmp_path: Path) -> None:
    """All kept 256 px tiles of CMU-1 (not a selection) become the bag rows, coords as tiled."""
    from unipipe.config import build_params
    from unipipe.curate.artefacts import ArtefactParams
    from unipipe.curate.tiling import TilingParams
    from unipipe.curate.tissue import TissueParams
    from unipipe.embed.slides import run_embed_wsi
    from unipipe.embed.tiles import run_tile_wsi

    # Two specs as in config.yaml: only the first is gridded for slide embedding.
    tiling = build_params(TilingParams, {"specs": [{"size_px": 256, "mpp": 0.5},
                                                   {"size_px": 512, "mpp": 0.5}]}, "t")  # fmt: skip
    files = run_tile_wsi(SVS, slide_id="CMU-1", mpp=None, tissue=TissueParams(),
                         artefacts=ArtefactParams(), tiling=tiling, out_dir=tmp_path / "tiles")  # fmt: skip
    tiles = pd.read_parquet(files["tiles"])
    assert set(tiles["size_px"]) == {256}
    kept = tiles[tiles["keep"]]
    assert len(kept) > 20  # far more than the 24-patch selection budget of the test config

    out = tmp_path / "CMU-1.h5"
    run_embed_wsi(SVS, files["tiles"], slide_id="CMU-1", mpp=None, encoder_name="tiny",
                  encoder_spec=tiny_random_spec, out_h5=out, sidecar=tmp_path / "s.json",
                  batch_size=16)  # fmt: skip
    bag = read_bag(out)
    assert bag.features.shape == (len(kept), 32)
    np.testing.assert_array_equal(bag.coords, kept[["x", "y"]].to_numpy())
    import h5py

    with h5py.File(out) as h5:
        # 256 px at 0.5 µm/px on a 0.499 µm/px scan: 256.5 level-0 px, rounded.
        assert (h5.attrs["size_l0"], h5.attrs["size_px"], h5.attrs["mpp"]) == (257, 256, 0.5)
