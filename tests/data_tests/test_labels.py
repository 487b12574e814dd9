"""The label CSV in both SIIM dialects, and every way it can be wrong."""

from __future__ import annotations

import csv
import json
import random
import tracemalloc
from pathlib import Path

import pytest

from pneumotune.cli import main
from pneumotune.data import labels, rle
from pneumotune.data.ledger import formula_risk
from pneumotune.data.synth import SynthConfig, write_dataset


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


# --------------------------------------------------------------------------- hostile input
HEADER = b"ImageId,EncodedPixels\n"


def _write_bytes(tmp_path: Path, data: bytes, name: str = "stage_2_train.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _reconciles(table: labels.LabelTable) -> bool:
    used = sum(map(len, table.rows.values()))
    bad = sum(map(len, table.bad.values()))
    return table.n_rows == used + bad + len(table.orphans)


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ("11111111111111111111 2", "RLE number too large (20 digits"),
        ("1" * 5000 + " 2", "RLE number too large (5000 digits"),
        ("\u00b2 1", "non-integer RLE value '\u00b2'"),
        ("\u0661\u0662 3", "non-integer RLE value '\u0661\u0662'"),
        (f"{2**63 - 1} 1 {2**63 - 1} 1 5 1", "RLE number too large (19 digits"),
        ("-1 -1", "negative RLE value '-1'"),
        ("\u22121", "non-integer RLE value '\u22121'"),  # a Unicode minus is not "-1"
        ("- 1", "non-integer RLE value '-'"),
        ("=1+2", "non-integer RLE value '=1+2'"),
        ("0\x001", r"non-integer RLE value '0\x001'"),
    ],
)
def test_hostile_cells_make_the_image_bad_with_a_one_line_reason(tmp_path, cell, fragment):
    path = _write_bytes(tmp_path, HEADER + f"victim,{cell}\nok,0 4\n".encode())
    table = labels.read_labels(path)
    assert table.status("victim") == "bad" and table.status("ok") == "positive"
    (problem,) = table.bad["victim"]
    assert problem.reason.startswith("line 2: malformed RLE: ")
    assert fragment in problem.reason
    assert "\n" not in problem.reason and len(problem.reason) < 200
    assert _reconciles(table)


def test_empty_mask_spellings_and_duplicates(tmp_path):
    path = _write(
        tmp_path,
        "ImageId, EncodedPixels\n"
        "neg, -1\n"  # stage 1: a leading space
        "neg2,-1 \n"
        "dup, 0 2\n"
        "dup, 0 2\n"  # the same region twice: OR-ed, so the mask is unchanged
        "mixed, -1\n"
        "mixed, 3 1\n",  # "-1" beside a region: the region wins (union with nothing)
    )
    table = labels.read_labels(path)
    assert table.status("neg") == table.status("neg2") == "negative"
    assert table.status("dup") == "positive" and len(table.regions("dup")) == 2
    merged = rle.merge([r.rle for r in table.regions("dup")], (2, 2))
    assert merged.tolist() == [[1, 0], [1, 0]]
    assert table.status("mixed") == "positive"
    assert _reconciles(table) and not table.bad


def test_nul_bytes_cr_and_non_utf8_lines_are_bad_rows_and_the_file_reads_on(tmp_path):
    data = HEADER + (
        b"nul\x00id,0 1\n"  # a NUL in an id: kept as it is (it will match no file)
        b"cr,0\r1\n"  # a stray carriage return inside a row
        b"latin,\xff 1\n"  # not UTF-8, but the id is intact: the image is bad
        b"\xfe\xff,0 1\n"  # not UTF-8 in the id: no image to name
        b"ok,0 4\r\n"  # CRLF line ends are fine
    )
    table = labels.read_labels(_write_bytes(tmp_path, data))
    assert table.status("nul\x00id") == "positive"
    assert "carriage return" in table.bad["cr"][0].reason
    assert table.bad["latin"][0].reason == "line 4: not UTF-8 text (byte 0xff at column 7)"
    assert [(p.line, p.reason) for p in table.orphans] == [
        (5, "not UTF-8 text (byte 0xfe at column 1)")
    ]
    assert table.status("ok") == "positive" and table.regions("ok")[0].rle == "0 4"
    assert _reconciles(table)


def test_a_huge_line_is_skipped_without_being_held_in_memory(tmp_path):
    huge = 4 * labels.MAX_LINE_BYTES  # 64 MiB of one RLE cell
    path = tmp_path / "stage_2_train.csv"
    with path.open("wb") as fh:
        fh.write(HEADER + b"before,0 1\nhuge,")
        chunk = b"1 " * (1 << 20)
        for _ in range(huge // len(chunk)):
            fh.write(chunk)
        fh.write(b"\nafter,0 2\n")
    tracemalloc.start()
    try:
        table = labels.read_labels(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * labels.MAX_LINE_BYTES, peak  # the line is 4x the cap
    assert table.bad["huge"][0].reason.startswith("line 3: line longer than 16,777,216 bytes")
    assert table.status("before") == table.status("after") == "positive"
    assert _reconciles(table)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (bytes(range(255, -1, -1)) * 64, "is not UTF-8 text"),  # binary junk
        (bytes(range(256)) * 64, "has columns ['\\x00\\x01"),  # its first "line" is ASCII
        (b"\x00" * 5000, "has columns ['\\x00\\x00"),  # NULs: cut to a short message
        (b"ImageId,EncodedPixels\ra,-1\rb,-1\r", "carriage return inside its first line"),
        (b"x" * (labels.MAX_LINE_BYTES + 10), "first line is longer than 16,777,216 bytes"),
    ],
)
def test_files_that_are_no_label_csv_are_one_clear_error(tmp_path, data, fragment):
    path = _write_bytes(tmp_path, data)
    with pytest.raises(labels.LabelFileError) as info:
        labels.read_labels(path)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and len(message) < 500


def test_binary_junk_after_a_good_header_is_ledger_rows_up_to_a_limit(tmp_path):
    junk = random.Random(0).randbytes(1 << 16)
    path = _write_bytes(tmp_path, HEADER + b"ok,0 1\n" + junk + b"\nlast,-1\n")
    table = labels.read_labels(path)
    assert table.status("ok") == "positive" and table.status("last") == "negative"
    assert table.bad or table.orphans
    assert _reconciles(table)
    # A "label file" that is nearly all junk is refused instead of filling the ledger.
    path = _write_bytes(tmp_path, HEADER + b"x\n" * (labels.MAX_BAD_ROWS + 1), "junk.csv")
    with pytest.raises(labels.LabelFileError, match="more than 100,000 unusable rows"):
        labels.read_labels(path)


def test_convert_puts_every_hostile_label_cell_in_the_ledger(tmp_path, ray_local):
    """`pneumotune convert` on a real synthetic tree: exit 0, one ledger row per bad cell,
    the counts reconcile, and no ledger cell a spreadsheet would run."""
    src = tmp_path / "raw"
    write_dataset(src, SynthConfig(n_images=6, size=64, seed=3), workers=1)
    csv_path = src / "train-rle.csv"
    ids = [line.split(",")[0] for line in csv_path.read_text().splitlines()[1:]]
    hostile = {
        ids[0]: "11111111111111111111 2",
        ids[1]: "1" * 5000 + " 2",
        ids[2]: "\u00b2 1",
        ids[3]: "\u0661\u0662 3",
        # wraps around in int64 to a run at pixel 5, which fits a 64x64 image
        ids[4]: f"{2**63 - 1} 1 {2**63 - 1} 1 5 1",
    }
    extra = [f"{i}, {cell}" for i, cell in hostile.items()]
    extra += ['=HYPERLINK("http://example.invalid"), 5 1', "@SUM(1+1), -1", "-2+3, -1"]
    with csv_path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(extra) + "\n")
    with csv_path.open("ab") as fh:
        fh.write(b"nul\x00id, 0 1\n" + ids[5].encode() + b", \xff 1\n")
    out = tmp_path / "ds"

    assert main(["convert", str(src), str(out), "--sizes", "32"]) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    with (out / "errors.csv").open(newline="", encoding="utf-8") as fh:
        ledger = list(csv.DictReader(fh))
    label_rows = [e for e in ledger if e["stage"] == "label"]
    assert counts["label_errors"] == len(label_rows) == 10
    assert counts["files_seen"] == counts["converted"] == 6 and counts["errors"] == 0
    assert counts["unlabelled"] == 6  # every image had a bad row: none is a negative
    reasons = {e["image_id"]: e["reason"] for e in label_rows}
    assert "RLE number too large (20 digits" in reasons[ids[0]]
    assert "RLE number too large (5000 digits" in reasons[ids[1]]
    assert "non-integer RLE value '\u00b2'" in reasons[ids[2]]
    assert "non-integer RLE value '\u0661\u0662'" in reasons[ids[3]]
    assert "RLE number too large (19 digits" in reasons[ids[4]]
    assert "not UTF-8 text" in reasons[ids[5]]
    # Ids from the label file reach the ledger neutralised and on one line.
    assert {'\'=HYPERLINK("http://example.invalid")', "'@SUM(1+1)", "'-2+3"} <= set(reasons)
    assert "nul\\x00id" in reasons
    for row in ledger:
        assert not any(formula_risk(cell) for cell in row.values()), row
        assert len(row["reason"]) < 400
