"""The slide manifest is read as text and every bad row is named with its fix."""

from __future__ import annotations

import logging
import math

import pytest

from tests.conftest import SLIDES
from unipipe.errors import ConfigError
from unipipe.manifest import read_manifest

SVS = SLIDES / "CMU-1-Small-Region.svs"
OME = SLIDES / "OS-1-detail.ome.tif"


def _write(tmp_path, text):
    path = tmp_path / "slides.tsv"
    path.write_text(text)
    return path


def test_read_manifest_keeps_ids_as_text(tmp_path):
    """Case ids like 001, a numeric tissue type and the slide id NA stay exactly as written."""
    path = _write(
        tmp_path,
        f"slide_id\tpath\tmpp\tcase_id\ttissue_type\nNA\t{SVS}\t\t001\t3\nb\t{OME}\t0.25\t002\tx\n",
    )
    table = read_manifest(path)
    assert table.loc["NA", "case_id"] == "001"
    assert table.loc["NA", "tissue_type"] == "3"
    assert math.isnan(table.loc["NA", "mpp"])
    assert table.loc["b", "mpp"] == 0.25


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("slide_id\tpath\tmpp\na\t{svs}\t40\n", "not the objective power"),
        ("slide_id\tpath\tmpp\na\t{svs}\t0\n", "not the objective power"),
        ("slide_id\tpath\tmpp\na\t{svs}\tabc\n", "slide 'a' has mpp 'abc', not a number"),
        ("slide_id\tpath\tmpp \na\t{svs}\t0.25\n", "column 'mpp ' looks like 'mpp'"),
        ("slide_id\tpath\tMPP\na\t{svs}\t0.25\n", "column 'MPP' looks like 'mpp'"),
        ("slide_id,path\na,{svs}\n", "not tab-separated"),
        ("slide_id\tmpp\na\t0.5\n", "has no path column"),
        ("slide_id\tpath\n", "lists no slides"),
        ("slide_id\tpath\na b\t{svs}\n", "slide_id 'a b' may hold only"),
        ("slide_id\tpath\na\t{svs}\na\t{ome}\n", "repeated: ['a']"),
        ("slide_id\tpath\na\t\n", "slide 'a' has an empty path"),
    ],
)
def test_read_manifest_bad_rows_name_file_slide_and_fix(tmp_path, text, expected):
    """Each malformed manifest is refused with a message naming the file and what to change."""
    path = _write(tmp_path, text.format(svs=SVS, ome=OME))
    with pytest.raises(ConfigError) as info:
        read_manifest(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_read_manifest_warns_on_same_file_twice(tmp_path, caplog):
    """Two slide ids on one file are allowed but warned about (its patches count twice)."""
    path = _write(tmp_path, f"slide_id\tpath\na\t{SVS}\nb\t{SVS}\n")
    with caplog.at_level(logging.WARNING, logger="unipipe.manifest"):
        read_manifest(path)
    assert "['a', 'b'] are the same file" in caplog.text


def test_read_manifest_handles_crlf_and_bom(tmp_path):
    """A manifest saved by a spreadsheet (UTF-8 BOM, CRLF line ends) reads the same."""
    path = tmp_path / "slides.tsv"
    path.write_bytes(f"\ufeffslide_id\tpath\tmpp\r\na\t{SVS}\t0.5\r\n".encode())
    table = read_manifest(path)
    assert list(table.index) == ["a"]
    assert table.loc["a", "path"] == str(SVS)
    assert table.loc["a", "mpp"] == 0.5


def test_read_manifest_hash_inside_a_value_is_data(tmp_path):
    """Only a line starting with # is a comment; a # inside a path is kept whole."""
    path = _write(
        tmp_path,
        f"# slides of run 1\nslide_id\tpath\tmpp\n#a\tskipped.svs\t\nb\tres#1.svs\t0.5\nc\t{SVS}\t\n",
    )
    table = read_manifest(path)
    assert list(table.index) == ["b", "c"]
    assert table.loc["b", "path"] == "res#1.svs"
    assert table.loc["b", "mpp"] == 0.5


def test_read_manifest_short_rows_leave_trailing_columns_empty(tmp_path):
    """A row without its trailing empty cells (or with extra empty ones) reads as blanks."""
    path = _write(tmp_path, f"slide_id\tpath\tmpp\tcase_id\na\t{SVS}\nb\t{OME}\t0.25\t\t\t\n")
    table = read_manifest(path)
    assert table.loc["a", "case_id"] == ""
    assert math.isnan(table.loc["a", "mpp"])
    assert table.loc["b", "mpp"] == 0.25


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty; its first line must be the tab-separated header"),
        ("# only a comment\n\n", "is empty"),
        ("slide_id\tpath\tmpp\na\t{svs}\t\t\textra\n", "line 2: 5 tab-separated fields"),
        ("slide_id\tpath\n# note\n\na\t{svs}\nb\t{ome}\t0.5\n", "line 5: 3 tab-separated fields"),
        ("slide_id\tpath\tmpp\tmpp\na\t{svs}\t0.5\t0.5\n", "column(s) ['mpp'] twice"),
    ],
)
def test_read_manifest_bad_layout_names_file_and_line(tmp_path, text, expected):
    """An empty file, a row with more cells than the header or a repeated column is refused."""
    path = _write(tmp_path, text.format(svs=SVS, ome=OME))
    with pytest.raises(ConfigError) as info:
        read_manifest(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_read_manifest_folder_is_refused(tmp_path):
    """A folder given as the manifest is named as a folder, with the config key to fix."""
    with pytest.raises(ConfigError, match="is a folder, not a file; set `slides:`"):
        read_manifest(tmp_path)
