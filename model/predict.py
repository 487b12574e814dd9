"""DICOMs -> masks -> a SIIM submission CSV, and the Kaggle score of a submission.

:func:`predict_folder` applies an exported model (:mod:`model.export`) to every
``*.dcm`` below a folder, with exactly the training preprocessing: the same reader
(:func:`data.dicom.read`) and the same resize to the model's ``img_size``
(:func:`data.resize.resize_image`, area interpolation). The probability map is then
upsampled bilinearly to the DICOM's own size and the model card's triplet is applied
there. Thresholding the upsampled probabilities, rather than upsampling the binary mask
with nearest-neighbour, puts the mask boundary where the interpolated probability
crosses the threshold instead of on the staircase of low-resolution pixels (an 8x8 block
per pixel at 128 -> 1024); the triplet's ``min_area`` is a fraction of the image area,
so the same triplet means the same at either size.

The CSV has one row per readable image, ``ImageId,EncodedPixels`` (relative RLE,
column-major, over the DICOM's own height and width; ``-1`` when empty), ImageId being
the file stem, which must be a DICOM UID (:func:`is_dicom_uid`). Files the reader
rejects, and files whose stem is not a UID, are written to ``<out stem>.errors.csv``
(``path,image_id,reason``), counted and reported: never silently skipped.

:func:`score_submission` computes the SIIM-ACR leaderboard score of such a CSV against a
label CSV (see its docstring for the rules).
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumotune.data import rle
from pneumotune.data.dicom import PIXEL_BUDGET, DicomError, find_dicoms, read, read_meta
from pneumotune.data.labels import LabelFileError, LabelTable, read_labels
from pneumotune.data.ledger import write_ledger
from pneumotune.data.resize import resize_image, resize_probabilities
from pneumotune.errors import PneumotuneError
from pneumotune.text import escaped

__all__ = [
    "PredictInputError",
    "PredictResult",
    "ScoreResult",
    "dicom_shapes",
    "find_dicoms",
    "predict_folder",
    "score_submission",
]

SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels")
ERROR_COLUMNS = ("path", "image_id", "reason")
SIIM_SHAPE = (1024, 1024)
# A DICOM UID (PS3.5 9.1): ASCII digits and dots, no empty component, no leading zero in
# one, at most 64 characters. SIIM's ImageIds are SOPInstanceUIDs and so are those of
# `pneumotune synth` ("2.25.<uuid as an integer>"). Only such a file stem becomes an
# ImageId: it is written to the submission as it is (Kaggle matches it byte for byte,
# so it cannot be escaped), and a UID cannot start a spreadsheet formula.
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")
UID_MAX_CHARS = 64
# What an EncodedPixels cell may hold: relative RLE (ASCII digits and single spaces) or
# "-1", the one cell starting with "-" that the SIIM format requires.
_RLE_CELL = re.compile(r"(-1|[0-9]+( [0-9]+)*)\Z")


def is_dicom_uid(text: str) -> bool:
    """True if ``text`` is a syntactically valid DICOM UID (see :data:`UID`)."""
    return len(text) <= UID_MAX_CHARS and UID.match(text) is not None


class PredictInputError(PneumotuneError, ValueError):
    """The command cannot run on these inputs (no DICOMs, unusable CSV, ...)."""


# --------------------------------------------------------------------------- predict


@dataclass
class PredictResult:
    out_csv: Path
    errors_csv: Path
    files: int  # *.dcm files found
    predicted: int  # rows written
    positive: int  # rows with a non-empty mask
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (path, image_id, reason)
    seconds: float = 0.0

    def describe(self) -> str:
        rate = self.predicted / self.seconds if self.seconds else 0.0
        lines = [
            f"Predicted {self.predicted} of {self.files} DICOM files in {self.seconds:.1f} s "
            f"({rate:.1f} images/s): {self.positive} with a pneumothorax mask, "
            f"{self.predicted - self.positive} empty.",
            f"  submission: {self.out_csv}",
        ]
        if self.errors:
            lines.append(
                f"  {len(self.errors)} file(s) could not be read or are not named by a DICOM "
                f"UID, and have no row; reasons in {self.errors_csv}:"
            )
            # escaped(): a file name may hold terminal escape sequences.
            lines += [f"    {escaped(path)}: {reason}" for path, _, reason in self.errors[:5]]
            if len(self.errors) > 5:
                lines.append(f"    ... and {len(self.errors) - 5} more")
        return "\n".join(lines)


def errors_path(out_csv: Path) -> Path:
    """``submission.csv`` -> ``submission.errors.csv`` (next to it)."""
    return out_csv.with_name(f"{out_csv.stem}.errors.csv")


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_folder(
    model_dir: Path,
    dicom_dir: Path,
    out_csv: Path,
    *,
    batch_size: int = 16,
    progress: bool = False,
    pixel_budget: int = PIXEL_BUDGET,
) -> PredictResult:
    """Write the submission CSV for every DICOM below ``dicom_dir`` (see the module docstring).

    ``pixel_budget``: bytes of pixel data an image may declare (:mod:`data.dicom`); a
    larger image is an errors-CSV row, refused before it is decoded.

    Raises:
        model.export.ModelDirError: ``model_dir`` is not an exported model.
        PredictInputError: ``dicom_dir`` holds no ``*.dcm`` file.
    """
    from tqdm import tqdm

    from pneumotune.model.export import load_model
    from pneumotune.model.postprocess import apply_triplet

    t0 = time.perf_counter()
    dicom_dir, out_csv = Path(dicom_dir), Path(out_csv)
    exported = load_model(model_dir)
    if not dicom_dir.is_dir():
        raise PredictInputError(f"{dicom_dir} is not a folder")
    paths = find_dicoms(dicom_dir)
    if not paths:
        raise PredictInputError(f"no *.dcm files found under {dicom_dir}")
    size, triplet = exported.img_size, exported.triplet

    rows: list[tuple[str, str]] = []
    errors: list[tuple[str, str, str]] = []
    seen: dict[str, str] = {}
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for chunk in _batches(paths, batch_size):
            ids, shapes, small = [], [], []
            for path in chunk:
                rel, image_id = str(path.relative_to(dicom_dir)), path.stem
                if not is_dicom_uid(image_id):
                    errors.append((rel, image_id, _NOT_A_UID))
                    continue
                if image_id in seen:
                    reason = (
                        f"duplicate image id: the same file name was read from {seen[image_id]}"
                    )
                    errors.append((rel, image_id, reason))
                    continue
                try:
                    _, image = read(path, image_id=image_id, pixel_budget=pixel_budget)
                except DicomError as exc:
                    errors.append((rel, image_id, str(exc)))
                    continue
                seen[image_id] = rel
                ids.append(image_id)
                shapes.append(image.shape)
                small.append(resize_image(image, size))
            if small:
                probs = exported.predict_probs(np.stack(small), batch_size=batch_size)
                for image_id, (h, w), prob in zip(ids, shapes, probs, strict=True):
                    mask = apply_triplet(resize_probabilities(prob, h, w), triplet)
                    rows.append((image_id, rle.encode(mask, "relative")))
            bar.update(len(chunk))

    out_csv.parent.mkdir(parents=True, exist_ok=True)
    _write_submission(out_csv, rows)
    # Written even when empty, so that a stale ledger of an earlier run cannot mislead.
    # Its paths and ids are the user's file names: data.ledger keeps a spreadsheet from
    # running one as a formula.
    err_csv = errors_path(out_csv)
    write_ledger(err_csv, ERROR_COLUMNS, errors)
    return PredictResult(
        out_csv=out_csv,
        errors_csv=err_csv,
        files=len(paths),
        predicted=len(rows),
        positive=sum(not rle.is_empty(r) for _, r in rows),
        errors=errors,
        seconds=time.perf_counter() - t0,
    )


_NOT_A_UID = (
    "file name is not a DICOM UID (digits and dots, at most 64 characters): its stem would "
    "be the submission's ImageId; name the file after its SOPInstanceUID"
)


def _write_submission(path: Path, rows: list[tuple[str, str]]) -> None:
    """``ImageId,EncodedPixels`` rows, each cell checked, none rewritten.

    Ids were checked when the files were listed and the RLE comes from :func:`rle.encode`;
    a cell that is neither would be a bug here, so it stops the write with a traceback
    rather than put something a spreadsheet could run into the file.
    """
    for image_id, encoded in rows:
        if not is_dicom_uid(image_id) or not _RLE_CELL.match(encoded):
            raise AssertionError(f"unsafe submission cell: {image_id!r}, {encoded[:40]!r}")
    with path.open("w", newline="", encoding="ascii") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUBMISSION_COLUMNS)
        writer.writerows(rows)


# --------------------------------------------------------------------------- score


SCORE_ERROR_COLUMNS = ("file", "line", "image_id", "reason")


@dataclass(frozen=True)
class ScoreResult:
    """The Kaggle score of a submission over the images of a truth file.

    ``score`` is the mean per-image Dice; ``positive_score`` / ``negative_score`` are the
    means over images whose truth is non-empty / empty (NaN when there are none);
    ``empty_baseline`` is what an all-empty submission would score (the share of negative
    images). ``missing`` truth images had no submission row and were scored as predicted
    empty; ``extra`` submission rows name images absent from the truth (ignored).

    Rows that cannot be decoded (malformed RLE, runs past the image, no ImageId, not
    UTF-8, ...) are the ``problems``: ``(file, line, image_id, reason)``, ``file`` being
    ``"truth"`` or ``"submission"``, also written to ``errors_csv`` when one was asked
    for. A truth image with such a row is ``unscored`` (its truth is unknown), so
    ``images + unscored`` is the number of truth images; an image whose submission row is
    unreadable scores 0 and is counted in ``unreadable``.
    """

    score: float
    images: int
    positive: int
    positive_score: float
    negative_score: float
    empty_baseline: float
    missing: int
    extra: int
    unscored: int = 0
    unreadable: int = 0
    problems: tuple[tuple[str, int, str, str], ...] = ()
    errors_csv: Path | None = None

    def describe(self) -> str:
        text = (
            f"Kaggle score {self.score:.4f} over {self.images} images "
            f"(all-empty baseline {self.empty_baseline:.4f})\n"
            f"  {self.positive} positive images: mean Dice {self.positive_score:.4f}; "
            f"{self.images - self.positive} negative: {self.negative_score:.4f} "
            f"(share predicted empty)\n"
            f"  {self.missing} truth image(s) without a submission row (scored as empty), "
            f"{self.extra} submission row(s) for images not in the truth (ignored)"
        )
        if self.problems:
            where = f"; all in {self.errors_csv}" if self.errors_csv else ""
            text += (
                f"\n  {len(self.problems)} row(s) rejected: {self.unscored} truth image(s) "
                f"left unscored, {self.unreadable} unreadable prediction(s) scored 0{where}"
            )
            text += "".join(
                f"\n    {file} line {line}: {reason}" for file, line, _, reason in self.problems[:5]
            )
        return text


def dicom_shapes(dicom_dir: Path, pixel_budget: int = PIXEL_BUDGET) -> dict[str, tuple[int, int]]:
    """``{file stem: (Rows, Columns)}`` of every readable DICOM header below ``dicom_dir``.

    A header over ``pixel_budget`` is left out like an unreadable one: its masks would be
    decoded at its size, and 16384x16384 declared in a 1 KB file is 256 MiB per mask.
    """
    shapes: dict[str, tuple[int, int]] = {}
    for path in find_dicoms(dicom_dir):
        try:
            meta = read_meta(path, image_id=path.stem, pixel_budget=pixel_budget)
        except DicomError:
            continue  # unreadable: its truth (if any) is decoded at the default size
        shapes[path.stem] = (meta.height, meta.width)
    return shapes


def _read_table(path: Path, what: str, dialect: rle.Dialect) -> LabelTable:
    try:
        return read_labels(Path(path), dialect)
    except LabelFileError as exc:
        raise PredictInputError(f"{what}: {exc}") from None


def _table_problems(table: LabelTable, name: str) -> list[tuple[str, int, str, str]]:
    """The rows :func:`read_labels` could not use, as score ledger rows."""
    rows = [(name, p.line, "", p.reason) for p in table.orphans]
    rows += [(name, p.line, i, _LINE.sub("", p.reason)) for i, ps in table.bad.items() for p in ps]
    return rows


_LINE = re.compile(r"^line \d+: ")
_UNKNOWN_SIZE = (
    f" (this image's size is unknown, so it was decoded at {SIIM_SHAPE[0]}x{SIIM_SHAPE[1]}; "
    "pass its DICOM folder with --dicoms to use its own size)"
)


def _mask(
    table: LabelTable,
    name: str,
    image_id: str,
    shape: tuple[int, int],
    dialect: rle.Dialect,
    problems: list[tuple[str, int, str, str]],
    hint: str,
) -> np.ndarray | None:
    """The OR of an image's rows at ``shape``; None (rows that do not fit in ``problems``)
    if any of its rows is unusable."""
    rows = table.rows.get(image_id, [])
    fits = image_id not in table.bad
    for r in rows:
        try:
            rle.check_bounds(*rle.parse_runs(r.rle, dialect), shape)
        except rle.RLEError as exc:
            problems.append((name, r.line, image_id, f"{exc}{hint}"))
            fits = False
    return rle.merge([r.rle for r in rows], shape, dialect).astype(bool) if fits else None


def score_submission(
    submission_csv: Path,
    truth_csv: Path,
    dialect: rle.Dialect = "relative",
    *,
    shapes: dict[str, tuple[int, int]] | None = None,
    dicom_dir: Path | None = None,
    errors_csv: Path | None = None,
    pixel_budget: int = PIXEL_BUDGET,
) -> ScoreResult:
    """The SIIM-ACR leaderboard score of ``submission_csv`` against ``truth_csv``.

    Per image Dice of the masks, averaged over the images of the truth file: truth and
    prediction both empty score 1, exactly one empty scores 0. Several rows of one image
    (in either file) are OR-ed. A truth image without a submission row counts as predicted
    empty. Both files are read with :func:`data.labels.read_labels`, so stage-1 headers
    and values with leading spaces work.

    Masks are decoded at each image's ``(height, width)``: from ``shapes``, else from the
    DICOM headers below ``dicom_dir`` (those within ``pixel_budget``, see
    :func:`dicom_shapes`), else 1024x1024 (the SIIM size).

    A row that cannot be decoded does not stop the scoring (Kaggle would refuse the whole
    file; a local score should still say how the rest did): it is a ledger row with its
    reason (``ScoreResult.problems``, and ``errors_csv`` if given, written even when
    empty). A truth image with such a row is left out of the score, its truth being
    unknown. An image whose submission row is unreadable scores 0: scoring it as an empty
    prediction would reward garbage with a 1 on every negative image.

    Raises:
        PredictInputError: a file is missing or has the wrong columns, or no image of the
            truth file can be scored.
    """
    truth = _read_table(truth_csv, "truth file", dialect)
    sub = _read_table(submission_csv, "submission", dialect)
    sizes = dict(shapes or {})
    if dicom_dir is not None:
        if not Path(dicom_dir).is_dir():
            raise PredictInputError(f"DICOM folder {dicom_dir} does not exist")
        sizes = {**dicom_shapes(dicom_dir, pixel_budget), **sizes}
    truth_ids = list(truth.rows) + [i for i in truth.bad if i not in truth.rows]
    if not truth_ids:
        raise PredictInputError(f"truth file {truth_csv} has no labelled image")

    problems = _table_problems(truth, "truth") + _table_problems(sub, "submission")
    scores, is_pos = [], []
    unscored = unreadable = missing = 0
    for image_id in truth_ids:
        shape = sizes.get(image_id, SIIM_SHAPE)
        hint = "" if image_id in sizes else _UNKNOWN_SIZE
        t = _mask(truth, "truth", image_id, shape, dialect, problems, hint)
        p = _mask(sub, "submission", image_id, shape, dialect, problems, hint)
        if t is None:
            unscored += 1
            continue
        missing += image_id not in sub.rows and image_id not in sub.bad
        if p is None:
            unreadable += 1
            scores.append(0.0)
        else:
            total = np.count_nonzero(t) + np.count_nonzero(p)
            scores.append(1.0 if total == 0 else 2.0 * np.count_nonzero(t & p) / total)
        is_pos.append(bool(t.any()))

    problems.sort(key=lambda e: (e[0] != "truth", e[1]))
    if errors_csv is not None:
        try:
            write_ledger(Path(errors_csv), SCORE_ERROR_COLUMNS, problems)
        except OSError as exc:
            raise PredictInputError(
                f"cannot write the score ledger {errors_csv}: {exc.strerror or exc} "
                "(name another file with --errors)"
            ) from None
    if not scores:
        raise PredictInputError(
            f"no image of the truth file {truth_csv} could be scored: every one has a row "
            f"that cannot be decoded, e.g. line {problems[0][1]}: {problems[0][3]}"
        )
    scores_a, pos = np.asarray(scores), np.asarray(is_pos)
    return ScoreResult(
        score=float(scores_a.mean()),
        images=len(scores_a),
        positive=int(pos.sum()),
        positive_score=float(scores_a[pos].mean()) if pos.any() else float("nan"),
        negative_score=float(scores_a[~pos].mean()) if (~pos).any() else float("nan"),
        empty_baseline=float((~pos).mean()),
        missing=missing,
        extra=len(sub.image_ids() - set(truth_ids)),
        unscored=unscored,
        unreadable=unreadable,
        problems=tuple(problems),
        errors_csv=Path(errors_csv) if errors_csv is not None else None,
    )
