"""The SIIM label CSV, parsed once into a dict keyed by image id.

Both dialects of the file are read the same way: stage 1 (`train-rle.csv`, header
``ImageId, EncodedPixels`` with a leading space in the name *and* the values) and
stage 2 (`stage_2_train.csv`, no spaces). One row per region; ``-1`` marks an image
without pneumothorax. An image with no row at all is *unlabelled*, never negative.

Rows are checked for RLE syntax here (no image size needed); whether runs fit the
image is checked where the image's size is known (the converter's decode step).

The file may be anything (a wrong file, a damaged download, a hostile one): a row that
cannot be used is a :class:`LabelProblem` with a one-line reason and the rest is read;
only a file that is no label CSV at all (no such columns, not UTF-8 in its header, more
than :data:`MAX_BAD_ROWS` unusable rows) raises :class:`LabelFileError`. Lines are read
with a byte cap (:data:`MAX_LINE_BYTES`), so memory does not grow with a line's length.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pneumotune.data import rle
from pneumotune.errors import PneumotuneError

SIIM_LABEL_FILES = ("stage_2_train.csv", "train-rle.csv")
REQUIRED_COLUMNS = ("ImageId", "EncodedPixels")
# A line longer than this is one bad row, skipped without being held whole. Well above any
# real label cell: an RLE is at most ~2 characters per pixel (4 for a 1-pixel checkerboard
# run pair "1 1 "), so 16 MiB holds any mask of a 2048x2048 image and a real SIIM row is
# under 100 KB. Submissions are read with it too, so it also bounds what `score` accepts.
MAX_LINE_BYTES = 16 * 2**20
OVERLONG_KEPT = 64 * 2**10  # of a longer line, only to find its ImageId for the ledger
# More unusable rows than this and the file is refused: it is not a label file (a binary
# file renamed .csv gives a "row" per 256 bytes), and the ledger must not grow without end.
MAX_BAD_ROWS = 100_000


class LabelFileError(PneumotuneError, ValueError):
    """The label file cannot be used at all (missing, unreadable, wrong columns)."""


@dataclass(frozen=True)
class LabelRow:
    line: int  # 1-based line number in the CSV (the header is line 1)
    image_id: str
    rle: str


@dataclass(frozen=True)
class LabelProblem:
    line: int
    image_id: str
    reason: str


@dataclass
class LabelTable:
    """All label rows of one CSV, grouped by image id."""

    path: Path | None = None
    sha256: str | None = None
    dialect: rle.Dialect = "relative"
    n_rows: int = 0
    rows: dict[str, list[LabelRow]] = field(default_factory=dict)
    # Rows that fail the syntax check, by image id: such an image is not labelled at all.
    bad: dict[str, list[LabelProblem]] = field(default_factory=dict)
    # Rows that name no image at all (blank ImageId).
    orphans: list[LabelProblem] = field(default_factory=list)

    def status(self, image_id: str) -> str:
        """``"unlabelled"``, ``"bad"``, ``"negative"`` or ``"positive"``."""
        if image_id in self.bad:
            return "bad"
        rows = self.rows.get(image_id)
        if not rows:
            return "unlabelled"
        return "positive" if any(not rle.is_empty(r.rle) for r in rows) else "negative"

    def regions(self, image_id: str) -> list[LabelRow]:
        """The non-empty region rows of an image (``-1`` rows dropped)."""
        return [r for r in self.rows.get(image_id, ()) if not rle.is_empty(r.rle)]

    def image_ids(self) -> set[str]:
        return set(self.rows) | set(self.bad)


def find_label_file(src: Path) -> Path | None:
    """The SIIM label CSV at the top of ``src`` (stage 2 preferred, as the newer release)."""
    for name in SIIM_LABEL_FILES:
        if (src / name).is_file():
            return src / name
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_labels(path: Path, dialect: rle.Dialect = "relative") -> LabelTable:
    """Parse a label CSV. Raises :class:`LabelFileError` if it cannot be used at all.

    Column names and values are stripped, so stage-1's leading spaces are accepted.

    A row that cannot be used (malformed RLE, not UTF-8, not CSV, longer than
    :data:`MAX_LINE_BYTES`) is one :class:`LabelProblem` with its reason and the file is
    read on. Each physical line is one row (no label cell holds a newline), read with a
    byte cap, so memory stays bounded by the cap whatever the file holds: a 10 GB line is
    skipped in 1 MiB pieces, never held whole. Every non-blank row ends up in exactly one
    of ``rows``, ``bad`` and ``orphans``, and ``n_rows`` counts them all.
    """
    if not path.is_file():
        raise LabelFileError(f"label file {path} does not exist")
    table = LabelTable(path=path, sha256=file_sha256(path), dialect=dialect)
    try:
        with path.open("rb") as fh:
            lines = _lines(fh)
            id_col, rle_col = _read_header(path, next(lines, (1, b"", False)))
            n_bad = 0
            for line, raw, overlong in lines:
                n_bad += not _read_row(table, line, raw, overlong, id_col, rle_col, dialect)
                if n_bad > MAX_BAD_ROWS:
                    raise LabelFileError(
                        f"label file {path.name}: more than {MAX_BAD_ROWS:,} unusable rows "
                        f"(the first: {_first_problem(table)}); is it a SIIM label CSV?"
                    )
    except OSError as exc:
        raise LabelFileError(f"cannot read label file {path}: {exc.strerror or exc}") from None
    return table


def _lines(fh: BinaryIO) -> Iterator[tuple[int, bytes, bool]]:
    """``(line number, bytes without the line end, overlong)`` of each physical line.

    An overlong line yields only its first OVERLONG_KEPT bytes, enough to name its image;
    the rest is read and dropped in 1 MiB pieces.
    """
    for number in itertools.count(1):
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        overlong = len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n")
        if overlong:
            raw = raw[:OVERLONG_KEPT]
            while (piece := fh.readline(1 << 20)) and not piece.endswith(b"\n"):
                pass
        elif raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        yield number, raw, overlong


def _read_header(path: Path, first: tuple[int, bytes, bool]) -> tuple[int, int]:
    """The ImageId and EncodedPixels column indices, from the first line."""
    _, raw, overlong = first
    if overlong:
        raise LabelFileError(
            f"label file {path.name} is not a label CSV: its first line is longer than "
            f"{MAX_LINE_BYTES:,} bytes"
        )
    try:
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"label file {path.name} is not UTF-8 text: {exc}") from None
    if "\r" in text:  # csv's own message would talk of "universal-newline mode"
        raise LabelFileError(
            f"label file {path.name} is not a readable CSV: a carriage return inside its "
            "first line (classic Mac line ends?); save it with LF or CRLF line ends"
        )
    try:
        header = [h.strip() for h in next(csv.reader([text]), [])]
    except csv.Error as exc:
        raise LabelFileError(f"label file {path.name} is not a readable CSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise LabelFileError(
            f"label file {path.name} has columns {_show_columns(header)}; expected "
            f"{list(REQUIRED_COLUMNS)} (missing {missing})"
        )
    return header.index(REQUIRED_COLUMNS[0]), header.index(REQUIRED_COLUMNS[1])


def _show_columns(header: list[str]) -> str:
    """The header for a one-line message: a junk "header" may be megabytes of binary."""
    shown = [h if len(h) <= 40 else h[:40] + "..." for h in header[:6]]
    more = f" and {len(header) - 6:,} more" if len(header) > 6 else ""
    return f"{shown!r}{more}"


def _read_row(
    table: LabelTable,
    line: int,
    raw: bytes,
    overlong: bool,
    id_col: int,
    rle_col: int,
    dialect: rle.Dialect,
) -> bool:
    """File one physical line into ``table`` (see :func:`read_labels`); False if unusable."""
    reason = ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Still split it, replacement characters and all, to name the image if its id
        # is intact: that image's label is then "bad", not silently missing.
        text = raw.decode("utf-8", errors="replace")
        reason = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
    if overlong:
        reason = f"line longer than {MAX_LINE_BYTES:,} bytes, skipped: no label cell is this long"
    try:
        values = next(csv.reader([text]), [])
    except csv.Error as exc:  # in practice a stray CR: the one thing a lone line can fail on
        values = text.split(",")  # only to find the image id for the ledger
        what = "a carriage return inside the row" if "\r" in text else str(exc)
        reason = reason or f"not a readable CSV row ({what})"
    if not reason and not any(v.strip() for v in values):
        return True  # a blank line: no row at all
    table.n_rows += 1
    return _add_row(table, line, values, id_col, rle_col, dialect, reason)


def _first_problem(table: LabelTable) -> str:
    problems = [p for ps in table.bad.values() for p in ps] + table.orphans
    first = min(problems, key=lambda p: p.line)
    if first.reason.startswith("line "):
        return first.reason
    return f"line {first.line}: {first.reason}"


def _add_row(
    table: LabelTable,
    line: int,
    values: list[str],
    id_col: int,
    rle_col: int,
    dialect: rle.Dialect,
    reason: str = "",
) -> bool:
    """File one row (``reason``: why it is unusable, if already known); False if unusable."""
    image_id = values[id_col].strip() if id_col < len(values) else ""
    text = values[rle_col].strip() if rle_col < len(values) else ""
    if reason and "\ufffd" in image_id:  # not UTF-8: no file name to match it with
        image_id = ""
    if not image_id:
        table.orphans.append(LabelProblem(line, "", reason or "label row without an ImageId"))
        return False
    if not reason:
        try:
            rle.parse_runs(text, dialect)
        except rle.RLEError as exc:
            reason = f"malformed RLE: {exc}"
    if reason:
        table.bad.setdefault(image_id, []).append(
            LabelProblem(line, image_id, f"line {line}: {reason}")
        )
        return False
    table.rows.setdefault(image_id, []).append(LabelRow(line, image_id, text))
    return True
