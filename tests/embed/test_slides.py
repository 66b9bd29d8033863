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
