"""Tests of the unipipe.jpeg Zarr v3 codec on its own (shard-store use is in test_shards.py)."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import zarr

from unipipe.curate.jpeg_codec import CODEC_NAME, JpegCodec, JpegCodecError
from unipipe.slide import open_slide


@pytest.fixture(scope="module")
def patch(svs_path: Path) -> np.ndarray:
    """A real 256 px H&E patch of CMU-1-Small-Region at 0.5 mpp, mostly tissue."""
    with open_slide(svs_path, slide_id="s1") as slide:
        return slide.read_region(1000, 1200, 256, 0.5)


def test_jpeg_codec_json_round_trip() -> None:
    """to_dict/from_dict round-trip; a missing configuration means the defaults."""
    codec = JpegCodec(quality=75, subsampling="420")
    assert codec.to_dict() == {
        "name": CODEC_NAME,
        "configuration": {"quality": 75, "subsampling": "420"},
    }
    assert JpegCodec.from_dict(codec.to_dict()) == codec
    assert JpegCodec.from_dict({"name": CODEC_NAME}) == JpegCodec()
    assert zarr.registry.get_codec_class(CODEC_NAME) is JpegCodec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quality": 0}, "quality must be an int in 1..100"),
        ({"quality": 100.0}, "quality must be an int in 1..100"),
        ({"subsampling": "411"}, "subsampling must be one of"),
    ],
)
def test_jpeg_codec_rejects_bad_config(kwargs: dict, message: str) -> None:
    """Out-of-range quality or an unknown subsampling raises JpegCodecError (a ValueError)."""
    with pytest.raises(JpegCodecError, match=message):
        JpegCodec(**kwargs)


def test_jpeg_codec_unsharded_chunks_decode_like_imagecodecs(
    patch: np.ndarray, tmp_path: Path
) -> None:
    """As an array's own serializer, each chunk is exactly one JPEG of the patch."""
    codec = JpegCodec(quality=85)
    array = zarr.create_array(
        tmp_path / "a.zarr",
        shape=(2, 256, 256, 3),
        dtype=np.uint8,
        chunks=(1, 256, 256, 3),
        serializer=codec,
        compressors=None,
    )
    array[:] = np.stack([patch, patch[::-1]])
    chunk = (tmp_path / "a.zarr" / "c" / "1" / "0" / "0" / "0").read_bytes()
    assert chunk == bytes(imagecodecs.jpeg_encode(patch[::-1], level=85, subsampling="444"))
    np.testing.assert_array_equal(array[1], imagecodecs.jpeg_decode(chunk))


@pytest.mark.parametrize(
    ("dtype", "shape", "chunks", "shards", "message"),
    [
        (np.uint16, (4, 64, 64, 3), (1, 64, 64, 3), None, "uint8 arrays only"),
        (np.uint8, (4, 64, 64), (1, 64, 64), None, "RGB arrays"),
        (np.uint8, (4, 64, 64, 3), (2, 64, 64, 3), None, "one chunk per RGB patch"),
        (np.uint8, (4, 64, 64, 3), (2, 64, 64, 3), (4, 64, 64, 3), "one chunk per RGB patch"),
    ],
)
def test_jpeg_codec_refuses_layouts_one_jpeg_cannot_hold(
    dtype, shape, chunks, shards, message: str, tmp_path: Path
) -> None:
    """Non-uint8, non-RGB or multi-patch chunks fail at creation or at the first write."""

    def create_and_write() -> None:
        array = zarr.create_array(
            tmp_path / "a.zarr",
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            shards=shards,
            serializer=JpegCodec(),
            compressors=None,
        )
        array[:] = 100

    with pytest.raises(JpegCodecError, match=message):
        create_and_write()
