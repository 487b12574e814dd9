"""The SIIM label CSV, parsed once into a dict keyed by image id.

Both dialects of the file are read the same way: stage 1 (`train-rle.csv`, header
``ImageId, EncodedPixels`` with a leading space in the name *and* the values) and
stage 2 (`stage_2_train.csv`, no spaces). One row per region; ``-1`` marks an image
without pneumothorax. An image with no row at all is *unlabelled*, never negative.

Rows are checked for RLE syntax here (no image size needed); whether runs fit the
image is checked where the image's size is known (the converter's decode step).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from pneumotune.data import rle
from pneumotune.errors import PneumotuneError

SIIM_LABEL_FILES = ("stage_2_train.csv", "train-rle.csv")
REQUIRED_COLUMNS = ("ImageId", "EncodedPixels")


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
    """
    if not path.is_file():
        raise LabelFileError(f"label file {path} does not exist")
    table = LabelTable(path=path, sha256=file_sha256(path), dialect=dialect)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise LabelFileError(
                    f"label file {path.name} has columns {header}; expected "
                    f"{list(REQUIRED_COLUMNS)} (missing {missing})"
                )
            id_col, rle_col = (header.index(c) for c in REQUIRED_COLUMNS)
            for line, values in enumerate(reader, start=2):
                if not values or not any(v.strip() for v in values):
                    continue  # blank line
                table.n_rows += 1
                _add_row(table, line, values, id_col, rle_col, dialect)
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"label file {path.name} is not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise LabelFileError(f"label file {path.name} is not a readable CSV: {exc}") from None
    return table


def _add_row(
    table: LabelTable, line: int, values: list[str], id_col: int, rle_col: int, dialect: rle.Dialect
) -> None:
    image_id = values[id_col].strip() if id_col < len(values) else ""
    text = values[rle_col].strip() if rle_col < len(values) else ""
    if not image_id:
        table.orphans.append(LabelProblem(line, "", "label row without an ImageId"))
        return
    try:
        rle.parse_runs(text, dialect)
    except rle.RLEError as exc:
        table.bad.setdefault(image_id, []).append(
            LabelProblem(line, image_id, f"line {line}: malformed RLE: {exc}")
        )
        return
    table.rows.setdefault(image_id, []).append(LabelRow(line, image_id, text))
