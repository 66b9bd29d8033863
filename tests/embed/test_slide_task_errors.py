"""Slide errors raised for a slide task's WSI name that task's slides.csv, not config/slides.tsv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from unipipe.curate.artefacts import ArtefactParams
from unipipe.curate.tiling import TilingParams
from unipipe.curate.tissue import TissueParams
from unipipe.embed.slides import run_embed_wsi
from unipipe.embed.tiles import run_tile_wsi
from unipipe.errors import SlideReadError, UnsupportedSlideError
from unipipe.slide.messages import in_slide_task, not_found

SVS = Path(__file__).resolve().parents[2] / "resources" / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture
def half_svs(tmp_path: Path) -> Path:
    """The first half of the real CMU-1 SVS: a slide cut off mid-copy, which no reader opens."""
    data = SVS.read_bytes()
    path = tmp_path / "half.svs"
    path.write_bytes(data[: len(data) // 2])
    return path


def _assert_names_task_manifest(message: str, manifest: Path) -> None:
    assert f"remove its row from the slide task's manifest {manifest}" in message
    assert "config/slides.tsv" not in message


def test_run_tile_wsi_error_names_the_task_manifest(half_svs: Path, tmp_path: Path) -> None:
    """A corrupt WSI in a slide task is refused as before, but the fix points at slides.csv."""
    manifest = tmp_path / "task" / "slides.csv"
    with pytest.raises(UnsupportedSlideError, match="slide 'bad' .* no reader opens it") as err:
        run_tile_wsi(half_svs, slide_id="bad", mpp=None, tissue=TissueParams(),
                     artefacts=ArtefactParams(), tiling=TilingParams(), out_dir=tmp_path / "out",
                     manifest_csv=manifest)  # fmt: skip
    _assert_names_task_manifest(str(err.value), manifest)


def test_run_embed_wsi_error_names_the_task_manifest(
    half_svs: Path, tiny_random_spec: dict, tmp_path: Path
) -> None:
    """The embedding job of the same WSI words its error the same way."""
    tiles = tmp_path / "tiles.parquet"
    pd.DataFrame({"x": [0], "y": [0], "size_px": [256], "mpp": [0.5], "keep": [True]}).to_parquet(
        tiles
    )
    manifest = tmp_path / "task" / "slides.csv"
    with pytest.raises(UnsupportedSlideError) as err:
        run_embed_wsi(half_svs, tiles, slide_id="bad", mpp=None, encoder_name="tiny",
                      encoder_spec=tiny_random_spec, out_h5=tmp_path / "b.h5",
                      sidecar=tmp_path / "s.json", manifest_csv=manifest)  # fmt: skip
    _assert_names_task_manifest(str(err.value), manifest)
    assert not (tmp_path / "b.h5").exists()


def test_in_slide_task_rewords_every_manifest_fix(tmp_path: Path) -> None:
    """Decode and not-found errors keep their class; their fixes name slides.csv's columns."""
    manifest = tmp_path / "slides.csv"
    missing = in_slide_task(not_found("w", tmp_path / "w.svs"), manifest)
    assert type(missing) is type(not_found("w", tmp_path / "w.svs"))
    assert f"fix the `slide_path` column of the slide task's manifest {manifest}" in str(missing)
    assert "from the CSV's folder" in str(missing)
    decode = in_slide_task(SlideReadError("... or remove its row from the slide manifest"), None)
    assert isinstance(decode, SlideReadError)
    assert str(decode).endswith("remove its row from the slide task's slides.csv")
