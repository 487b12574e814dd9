"""CSV files a person opens in a spreadsheet: ledger cells that cannot run as formulas.

The project's ledgers (``errors.csv`` of ``convert``, ``<submission>.errors.csv`` of
``predict``, the ledger of ``score``) quote text that came from the user's files: file
names, image ids from a label CSV, parts of a malformed cell. A spreadsheet evaluates a
cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula (CSV injection, OWASP),
so a file named ``=HYPERLINK(...).dcm`` would run in whoever opens the ledger. Every
ledger cell goes through :func:`neutralise`:

* characters that are not printable (NUL, tab, CR, LF, other controls, bidirectional
  overrides, ...) are written as Python escapes (``\\t``, ``\\x00``, ``\\u202e``): a
  ledger row stays one line and shows what the file really held;
* a cell that then starts with ``=``, ``+``, ``-``, ``@`` (or their full-width forms,
  which some spreadsheets also accept) gets a leading ``'``, OWASP's advice: spreadsheets
  show it as text. A plain decimal number (``-1``, ``-0.5``, ``3e-4``) is left as it is:
  it is read as that number, which cannot do anything, and ``-1`` is how SIIM writes an
  empty mask;
* a cell is cut to :data:`MAX_CELL_CHARS` characters, so a hostile 100 MB cell of a
  label file does not make a 100 MB ledger.

The neutralised text is for people: programs that read a ledger back see the ``'``.
Submissions are not written with it: an ImageId must stay byte for byte what Kaggle
expects, so ``predict`` refuses ids that are not DICOM UIDs instead (model/predict.py),
and :func:`formula_risk` lets a writer check a cell it will not rewrite.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pneumotune.text import escaped

# What a spreadsheet may take as the start of a formula once control characters are
# escaped (tab and CR, also on OWASP's list, cannot start a neutralised cell any more).
FORMULA_STARTS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# Numbers a spreadsheet reads as numbers: harmless, so kept as they are.
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")
MAX_CELL_CHARS = 2000


def formula_risk(cell: str) -> bool:
    """True if a spreadsheet could run ``cell`` (as written, without :func:`neutralise`)."""
    return cell[:1] in ("\t", "\r", "\n") or (
        cell.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.match(cell)
    )


def neutralise(cell: object) -> str:
    """``cell`` as a ledger cell that shows its text and runs nothing (module docstring)."""
    text = escaped("" if cell is None else str(cell))
    if len(text) > MAX_CELL_CHARS:
        text = f"{text[:MAX_CELL_CHARS]}... ({len(text):,} characters)"
    if text.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.match(text):
        text = "'" + text
    return text


def write_ledger(
    path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object] | Sequence[object]]
) -> None:
    """Write ``rows`` (dicts keyed by ``columns``, or sequences in their order) as a CSV
    whose every cell, the header included, went through :func:`neutralise`."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([neutralise(c) for c in columns])
        for row in rows:
            cells = [row.get(c, "") for c in columns] if isinstance(row, Mapping) else row
            writer.writerow([neutralise(c) for c in cells])
