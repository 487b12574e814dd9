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
the file stem. Files the reader rejects are written to ``<out stem>.errors.csv``
(``path,image_id,reason``), counted and reported: never silently skipped.

:func:`score_submission` computes the SIIM-ACR leaderboard score of such a CSV against a
label CSV (see its docstring for the rules).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumotune.data import rle
from pneumotune.data.dicom import DicomError, find_dicoms, read, read_meta
from pneumotune.data.labels import LabelFileError, LabelTable, read_labels
from pneumotune.data.resize import resize_image, resize_probabilities
from pneumotune.errors import PneumotuneError

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
                f"  {len(self.errors)} file(s) could not be read and have no row; "
                f"reasons in {self.errors_csv}:"
            )
            lines += [f"    {path}: {reason}" for path, _, reason in self.errors[:5]]
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
) -> PredictResult:
    """Write the submission CSV for every DICOM below ``dicom_dir`` (see the module docstring).

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
                if image_id in seen:
                    reason = (
                        f"duplicate image id: the same file name was read from {seen[image_id]}"
                    )
                    errors.append((rel, image_id, reason))
                    continue
                try:
                    _, image = read(path, image_id=image_id)
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
    with out_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUBMISSION_COLUMNS)
        writer.writerows(rows)
    # Written even when empty, so that a stale ledger of an earlier run cannot mislead.
    err_csv = errors_path(out_csv)
    with err_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ERROR_COLUMNS)
        writer.writerows(errors)
    return PredictResult(
        out_csv=out_csv,
        errors_csv=err_csv,
        files=len(paths),
        predicted=len(rows),
        positive=sum(not rle.is_empty(r) for _, r in rows),
        errors=errors,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- score


@dataclass(frozen=True)
class ScoreResult:
    """The Kaggle score of a submission over the images of a truth file.

    ``score`` is the mean per-image Dice; ``positive_score`` / ``negative_score`` are the
    means over images whose truth is non-empty / empty (NaN when there are none);
    ``empty_baseline`` is what an all-empty submission would score (the share of negative
    images). ``missing`` truth images had no submission row and were scored as predicted
    empty; ``extra`` submission rows name images absent from the truth (ignored).
    """

    score: float
    images: int
    positive: int
    positive_score: float
    negative_score: float
    empty_baseline: float
    missing: int
    extra: int

    def describe(self) -> str:
        return (
            f"Kaggle score {self.score:.4f} over {self.images} images "
            f"(all-empty baseline {self.empty_baseline:.4f})\n"
            f"  {self.positive} positive images: mean Dice {self.positive_score:.4f}; "
            f"{self.images - self.positive} negative: {self.negative_score:.4f} "
            f"(share predicted empty)\n"
            f"  {self.missing} truth image(s) without a submission row (scored as empty), "
            f"{self.extra} submission row(s) for images not in the truth (ignored)"
        )


def dicom_shapes(dicom_dir: Path) -> dict[str, tuple[int, int]]:
    """``{file stem: (Rows, Columns)}`` of every readable DICOM header below ``dicom_dir``."""
    shapes: dict[str, tuple[int, int]] = {}
    for path in find_dicoms(dicom_dir):
        try:
            meta = read_meta(path, image_id=path.stem)
        except DicomError:
            continue  # unreadable: its truth (if any) is decoded at the default size
        shapes[path.stem] = (meta.height, meta.width)
    return shapes


def _read_table(path: Path, what: str, dialect: rle.Dialect) -> LabelTable:
    try:
        table = read_labels(Path(path), dialect)
    except LabelFileError as exc:
        raise PredictInputError(f"{what}: {exc}") from None
    if table.bad:
        first = next(iter(table.bad.values()))[0]
        raise PredictInputError(
            f"{what} {path} has {len(table.bad)} image(s) with malformed RLE, e.g. "
            f"{first.image_id}: {first.reason}"
        )
    return table


def score_submission(
    submission_csv: Path,
    truth_csv: Path,
    dialect: rle.Dialect = "relative",
    *,
    shapes: dict[str, tuple[int, int]] | None = None,
    dicom_dir: Path | None = None,
) -> ScoreResult:
    """The SIIM-ACR leaderboard score of ``submission_csv`` against ``truth_csv``.

    Per image Dice of the masks, averaged over the images of the truth file: truth and
    prediction both empty score 1, exactly one empty scores 0. Several rows of one image
    (in either file) are OR-ed. A truth image without a submission row counts as predicted
    empty. Both files are read with :func:`data.labels.read_labels`, so stage-1 headers
    and values with leading spaces work.

    Masks are decoded at each image's ``(height, width)``: from ``shapes``, else from the
    DICOM headers below ``dicom_dir``, else 1024x1024 (the SIIM size).

    Raises:
        PredictInputError: a file is missing, has the wrong columns or malformed RLE, or a
            mask does not fit its image size.
    """
    truth = _read_table(truth_csv, "truth file", dialect)
    sub = _read_table(submission_csv, "submission", dialect)
    sizes = dict(shapes or {})
    if dicom_dir is not None:
        if not Path(dicom_dir).is_dir():
            raise PredictInputError(f"DICOM folder {dicom_dir} does not exist")
        sizes = {**dicom_shapes(dicom_dir), **sizes}
    if not truth.rows:
        raise PredictInputError(f"truth file {truth_csv} has no labelled image")

    scores, is_pos = [], []
    for image_id, truth_rows in truth.rows.items():
        shape = sizes.get(image_id, SIIM_SHAPE)
        try:
            t = rle.merge([r.rle for r in truth_rows], shape, dialect)
            p = rle.merge([r.rle for r in sub.rows.get(image_id, [])], shape, dialect)
        except rle.RLEError as exc:
            raise PredictInputError(
                f"image {image_id}: a mask does not fit {shape[0]}x{shape[1]} ({exc}); pass the "
                "DICOM folder (--dicoms) so that each image's own size is used"
            ) from None
        t, p = t.astype(bool), p.astype(bool)
        total = int(t.sum() + p.sum())
        scores.append(1.0 if total == 0 else 2.0 * np.count_nonzero(t & p) / total)
        is_pos.append(bool(t.any()))

    scores_a, pos = np.asarray(scores), np.asarray(is_pos)
    return ScoreResult(
        score=float(scores_a.mean()),
        images=len(scores_a),
        positive=int(pos.sum()),
        positive_score=float(scores_a[pos].mean()) if pos.any() else float("nan"),
        negative_score=float(scores_a[~pos].mean()) if (~pos).any() else float("nan"),
        empty_baseline=float((~pos).mean()),
        missing=sum(1 for i in truth.rows if i not in sub.rows),
        extra=sum(1 for i in sub.rows if i not in truth.rows),
    )
