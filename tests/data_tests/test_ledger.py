"""data.ledger: ledger cells a spreadsheet shows as text and never runs, on real files."""

from __future__ import annotations

import csv

import pytest

from pneumotune.data import ledger


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+1+2", "'+1+2"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\uff1d1+1", "'\uff1d1+1"),  # full-width "="
        ("\t=1+2", "\\t=1+2"),  # control characters are escaped: the cell starts with "\"
        ("\r=1+2", "\\r=1+2"),
        ("a\nb", "a\\nb"),  # one ledger row stays one line
        ("id\x00x", "id\\x00x"),
        ("evil\u202etxt.dcm", "evil\\u202etxt.dcm"),  # right-to-left override
        # plain numbers are read as numbers by a spreadsheet: harmless, kept
        ("-1", "-1"),
        ("-0.5", "-0.5"),
        ("-3e-4", "-3e-4"),
        ("", ""),
        (None, ""),
        (7, "7"),
        ("line 3: malformed RLE", "line 3: malformed RLE"),
        ("1.2.840.10008", "1.2.840.10008"),
    ],
)
def test_neutralise(cell, written):
    assert ledger.neutralise(cell) == written


def test_a_huge_cell_is_cut():
    cell = ledger.neutralise("x" * 10**6)
    assert len(cell) < ledger.MAX_CELL_CHARS + 40 and cell.endswith("(1,000,000 characters)")


def test_formula_risk_is_what_a_submission_must_not_carry():
    assert not ledger.formula_risk("-1")  # SIIM's empty mask
    assert not ledger.formula_risk(" -1")  # stage-1 style
    assert not ledger.formula_risk("0 4 10 2")
    for cell in ("=1", "+1 2", "-1+1", "@x", "\t1", "\r1", "\uff201"):
        assert ledger.formula_risk(cell), cell


def test_written_file_reads_back_as_neutral_text(tmp_path):
    path = tmp_path / "errors.csv"
    rows = [
        {"path": "=cmd.dcm", "image_id": "=cmd", "reason": "not DICOM"},
        ("a/b.dcm", "-1", "line 2: bad\nrow"),
    ]
    ledger.write_ledger(path, ("path", "image_id", "reason"), rows)
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 3  # header + two rows, each on one line
    got = list(csv.reader(text.splitlines()))
    assert got == [
        ["path", "image_id", "reason"],
        ["'=cmd.dcm", "'=cmd", "not DICOM"],
        ["a/b.dcm", "-1", "line 2: bad\\nrow"],
    ]
    for row in got:
        assert not any(ledger.formula_risk(c) for c in row)
