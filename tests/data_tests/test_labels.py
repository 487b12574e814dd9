"""The label CSV in both SIIM dialects, and every way it can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumotune.data import labels


def _write(tmp_path: Path, text: str, name: str = "train-rle.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_stage1_leading_spaces(tmp_path):
    path = _write(
        tmp_path,
        "ImageId, EncodedPixels\na, -1\nb, 5 3 10 2\nb, 0 1\nc, 7 1\n",
    )
    table = labels.read_labels(path)
    assert table.n_rows == 4
    assert table.status("a") == "negative"
    assert table.status("b") == "positive"
    assert [r.rle for r in table.regions("b")] == ["5 3 10 2", "0 1"]
    assert [r.line for r in table.regions("b")] == [3, 4]
    assert table.status("zzz") == "unlabelled"  # no row: unlabelled, never negative
    assert table.regions("a") == []
    assert len(table.sha256 or "") == 64


def test_stage2_no_spaces(tmp_path):
    path = _write(
        tmp_path, "ImageId,EncodedPixels\nID_0011fe81e,-1\nID_2,3 4\n", "stage_2_train.csv"
    )
    table = labels.read_labels(path)
    assert table.status("ID_0011fe81e") == "negative"
    assert table.status("ID_2") == "positive"


def test_malformed_row_makes_the_image_bad_not_negative(tmp_path):
    path = _write(tmp_path, "ImageId,EncodedPixels\na,1 2 3\nb,-1\nb,5 x\n,4 4\nc,\n")
    table = labels.read_labels(path)
    assert table.status("a") == "bad"
    assert table.status("b") == "bad"  # one bad row spoils the image's label
    assert table.status("c") == "bad"  # an empty value is not "-1"
    assert "odd number" in table.bad["a"][0].reason
    assert table.bad["a"][0].reason.startswith("line 2:")
    assert table.orphans[0].line == 5
    assert table.image_ids() == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("ImageId,Pixels\n", "missing ['EncodedPixels']"),
        ("id,EncodedPixels\n", "missing ['ImageId']"),
        ("", "missing"),
    ],
)
def test_wrong_columns_is_a_file_error(tmp_path, header, fragment):
    path = _write(tmp_path, header + "a,-1\n")
    with pytest.raises(
        labels.LabelFileError, match=fragment.replace("[", r"\[").replace("]", r"\]")
    ):
        labels.read_labels(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(labels.LabelFileError, match="does not exist"):
        labels.read_labels(tmp_path / "nope.csv")
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(labels.LabelFileError, match="not UTF-8"):
        labels.read_labels(path)


def test_find_label_file_prefers_stage2(tmp_path):
    assert labels.find_label_file(tmp_path) is None
    _write(tmp_path, "ImageId, EncodedPixels\n")
    assert labels.find_label_file(tmp_path).name == "train-rle.csv"
    _write(tmp_path, "ImageId,EncodedPixels\n", "stage_2_train.csv")
    assert labels.find_label_file(tmp_path).name == "stage_2_train.csv"
