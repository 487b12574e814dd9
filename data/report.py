"""The EDA report of a converted dataset: one HTML page and its PNGs (``pneumotune report``).

Reads only what ``data.convert`` wrote (``manifest.json``, ``errors.csv``, the Parquet
parts), never the DICOMs. Pixels are shown at the largest stored size <= 256 px; they
are streamed one batch of rows at a time, so a full SIIM dataset (10k images) is
summarised in bounded memory: only the sampled images are kept, and the heat map and
mean radiograph are running sums. The figures are drawn by :mod:`data.eda_plots`; the
page is assembled by :mod:`pneumotune.reports.page`.

Privacy: the report shows counts, tag values that do not identify anyone (sex, age with
90 and over as one "90+" group, view position) and pictures. It never prints a patient
pseudonym, an image id or a file path (sample images are "image 3 of the sample");
:func:`report_dataset` checks the page text against every pseudonym and image id before
writing it (:mod:`pneumotune.reports.privacy`).
"""

from __future__ import annotations

import csv
import re
import textwrap
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pneumotune.data import dataset
from pneumotune.data.dicom import AGE_TOP_CODE, MAX_AGE_YEARS
from pneumotune.data.eda_plots import (
    MIN_SHAPE_N,
    Pixels,
    fig_age,
    fig_class_balance,
    fig_errors,
    fig_folds,
    fig_heatmap,
    fig_mask_area,
    fig_positive_examples,
    fig_regions_per_image,
    fig_samples,
    fig_sex,
    fig_view_position,
    label_states,
    patient_keys,
    pct,
    sex_of,
    view_of,
)
from pneumotune.reports import page, privacy
from pneumotune.reports.figures import NO_PNEUMOTHORAX, PNEUMOTHORAX, UNLABELLED
from pneumotune.reports.page import Section, Table, figure_section, plural

REPORT_DIR = "report"  # default output folder inside the dataset folder
MAX_PIXEL_SIZE = 256  # the report's pictures do not need more, and 256 px keeps it fast
POSITIVE_EXAMPLES = 4  # rows of the three-panel positive figure
FOLD_COLUMNS = ("fold", "images", "patients", "positive", "negative", "unlabelled", "pos. share")
_BATCH_ROWS = 256  # rows decoded at a time while streaming pixels


@dataclass(frozen=True)
class ReportResult(page.WrittenReport):
    """What :func:`report_dataset` wrote (the page, its PNGs and section keys, and:)."""

    size: int  # the stored size the pictures were taken from
    seconds: float

    def describe(self) -> str:
        return (
            f"Wrote the EDA report ({len(self.sections)} sections, {len(self.pngs)} figures, "
            f"pictures at {self.size} px) to {self.html.parent} in {self.seconds:.1f} s.\n"
            f"{self.html}"
        )


def report_dataset(
    dataset_dir: Path, out_dir: Path | None = None, *, seed: int = 0, samples: int = 12
) -> ReportResult:
    """Write the EDA report of the dataset in ``dataset_dir`` to ``out_dir``.

    ``out_dir`` defaults to ``<dataset_dir>/report/``. ``samples`` random images
    (labelled or not) and up to :data:`POSITIVE_EXAMPLES` positive images are drawn
    with ``numpy.random.default_rng(seed)``. Raises ``data.dataset.DatasetError`` when
    ``dataset_dir`` is not a readable dataset.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    t0 = time.perf_counter()
    root = Path(dataset_dir)
    manifest = dataset.read_manifest(root)
    out = Path(out_dir) if out_dir is not None else root / REPORT_DIR
    size = pixel_size(manifest["sizes"])
    meta = dataset.read_meta(root)
    meta["label_state"] = label_states(meta)
    errors = read_errors(root / dataset.ERRORS)

    rng = np.random.default_rng(seed)
    sample_rows = _choose(rng, np.arange(len(meta)), samples)
    positive_rows = _choose(
        rng, np.flatnonzero(meta["label_state"] == PNEUMOTHORAX), POSITIVE_EXAMPLES
    )
    pixels = scan_pixels(root, manifest["files"], size, meta, {*sample_rows, *positive_rows})

    sections = build_sections(manifest, meta, errors, pixels, sample_rows, positive_rows)
    intro = _intro(root, manifest, meta, size, seed)
    check_no_identifiers([*intro, *page.section_text(sections)], meta, errors)
    written = page.write_report(out, f"Dataset report: {root.resolve().name}", intro, sections)
    return ReportResult.extending(written, size=size, seconds=time.perf_counter() - t0)


def build_sections(
    manifest: dict[str, Any],
    meta: pd.DataFrame,
    errors: pd.DataFrame | None,
    pixels: Pixels,
    sample_rows: list[int],
    positive_rows: list[int],
) -> list[Section]:
    """Every section of the page, in order (figures rendered to PNG bytes here)."""
    return [
        overview_section(manifest),
        samples_section(pixels, meta, sample_rows),
        positives_section(pixels, meta, positive_rows),
        class_balance_section(meta),
        regions_section(meta),
        age_section(meta),
        *meta_figure_sections(meta),
        mask_area_section(meta),
        heatmap_section(pixels),
        quality_section(manifest, meta),
        errors_section(errors),
        folds_section(meta),
    ]


def pixel_size(sizes: list[int]) -> int:
    """The largest stored size <= :data:`MAX_PIXEL_SIZE`, else the smallest stored size."""
    small = [s for s in sizes if s <= MAX_PIXEL_SIZE]
    return max(small) if small else min(sizes)


def _choose(rng: np.random.Generator, rows: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` of ``rows`` without replacement, in row order (stable pictures)."""
    if k <= 0 or len(rows) == 0:
        return []
    return sorted(int(r) for r in rng.choice(rows, size=min(k, len(rows)), replace=False))


# --------------------------------------------------------------------------- pixels
def scan_pixels(
    root: Path, files: list[str], size: int, meta: pd.DataFrame, keep: set[int]
) -> Pixels:
    """Stream the ``image_S`` / ``mask_S`` columns once, keeping only the ``keep`` rows.

    Rows are numbered as in :func:`data.dataset.read_meta` (files in manifest order).
    """
    positive = (meta["label_state"] == PNEUMOTHORAX).to_numpy()
    labelled = meta["labelled"].fillna(False).astype(bool).to_numpy()
    out = Pixels(size, {}, {}, np.zeros((size, size)), 0, np.zeros((size, size)), 0)
    columns = [f"image_{size}", f"mask_{size}"]
    start = 0
    for name in files:
        for batch in pq.ParquetFile(root / name).iter_batches(_BATCH_ROWS, columns=columns):
            n = batch.num_rows
            stop = start + n
            images = dataset.bytes_to_array(pa.chunked_array([batch.column(0)]), size)
            out.image_sum += images.sum(axis=0, dtype=np.float64)
            out.n_images += n
            is_pos = positive[start:stop]
            if is_pos.any():
                # Only positive rows carry a non-empty mask: decode just those for the heat map.
                pos_masks = batch.column(1).filter(pa.array(is_pos))
                masks = dataset.bytes_to_array(pa.chunked_array([pos_masks]), size)
                out.mask_sum += masks.sum(axis=0, dtype=np.float64)
                out.n_positive += len(masks)
            for row in sorted(r for r in keep if start <= r < stop):
                out.images[row] = images[row - start]
                if labelled[row]:
                    cell = batch.column(1).slice(row - start, 1)  # never null when labelled
                    out.masks[row] = dataset.bytes_to_array(pa.chunked_array([cell]), size)[0]
            start = stop
    if start != len(meta):
        raise dataset.DatasetError(
            f"{root}: the pixel columns hold {start} rows but the metadata {len(meta)}; "
            "convert the data again"
        )
    return out


# --------------------------------------------------------------------------- errors ledger
def read_errors(path: Path) -> pd.DataFrame | None:
    """``errors.csv`` with an added ``short`` reason column; ``None`` if there is no ledger."""
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    frame = pd.DataFrame(rows, columns=["path", "image_id", "stage", "reason"]).fillna("")
    names = {*frame["image_id"], *frame["path"], *(Path(p).name for p in frame["path"])} - {""}
    frame["short"] = [short_reason(r, names) for r in frame["reason"]]
    return frame


_LINE_PREFIX = re.compile(r"^line \d+: ")
# A file path ("a/b/c.dcm", "C:\\x\\y.dcm"), not any slash ("start/length pairs").
_PATH_LIKE = re.compile(r"\S*[/\\]\S*\.[A-Za-z0-9]{1,5}\b")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([:;,.])")


def short_reason(reason: str, hide: Collection[str] = ()) -> str:
    """A ledger reason without its per-row details, so that rows group by cause.

    Drops a ``line N:`` prefix, every parenthesised part (data.dicom and data.rle put
    per-file details such as sizes and decoder messages there), and everything after
    ``; `` (several label rows of one image); replaces path-like words and the strings
    in ``hide`` (image ids, file names) by ``…``; at most 80 characters.
    """
    text = _LINE_PREFIX.sub("", reason.strip()).split("; ", 1)[0]
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(_drop_parenthesised(text).split()))
    text = privacy.hide(_PATH_LIKE.sub(privacy.HIDDEN, text), hide, min_chars=4)
    return textwrap.shorten(text, 80, placeholder=" …") or "(no reason given)"


def _drop_parenthesised(text: str) -> str:
    # Balanced, so that "(... Decode(): ...)" goes as a whole; an unclosed "(" drops the rest.
    kept, depth = [], 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            kept.append(char)
    return "".join(kept)


# --------------------------------------------------------------------------- privacy
def check_no_identifiers(texts: list[str], meta: pd.DataFrame, errors: pd.DataFrame | None) -> None:
    """Raise ``RuntimeError`` if a patient pseudonym or an image id of ``meta`` or of the
    ledger ``errors`` appears in ``texts`` (the guard of :mod:`pneumotune.reports.privacy`)."""
    ledger = errors["image_id"] if errors is not None else ()
    forbidden = privacy.identifiers(meta["patient_id"], meta["image_id"], ledger)
    privacy.check_no_identifiers(texts, forbidden, "data.report")


# --------------------------------------------------------------------------- sections
def overview_section(manifest: dict[str, Any]) -> Section:
    counts = manifest.get("counts", {})
    meanings = {
        "files_seen": "DICOM files found under the source folder",
        "converted": "files converted into rows",
        "errors": "files rejected (read or decode), see Conversion errors",
        "labelled": "rows with a usable label",
        "positive": "labelled with pneumothorax",
        "negative": "labelled without pneumothorax",
        "unlabelled": "rows without a label row, or with a malformed one",
        "regions": "annotated regions of the positive images",
        "label_rows": "rows in the label CSV",
        "label_errors": "label rows that could not be used",
        "patients": "distinct patients (counted, not listed)",
        "invalid_age": "rows whose PatientAge is not a valid age",
    }
    rows = [(k, counts[k], meanings.get(k, "")) for k in counts]
    source = manifest.get("source", {})
    split = manifest.get("split", {})
    facts = [
        ("stored sizes (px)", ", ".join(map(str, manifest.get("sizes", [])))),
        ("label file", source.get("labels") or "none (every image unlabelled)"),
        ("RLE dialect", source.get("rle_dialect", "")),
        (
            "folds",
            f"{split.get('n_folds', '?')} ({split.get('method', '')}, seed "
            f"{split.get('seed', '?')})",
        ),
        ("converted on", manifest.get("created", "")),
    ]
    return Section(
        "overview",
        "Overview",
        paragraphs=["The counts recorded by `pneumotune convert` in manifest.json."],
        tables=[
            Table(("count", "value", "meaning"), rows, caption="manifest.json counts"),
            Table(("setting", "value"), facts, caption="conversion settings"),
        ],
    )


def samples_section(pixels: Pixels, meta: pd.DataFrame, rows: list[int]) -> Section:
    fig = fig_samples(pixels, meta, rows)
    return figure_section(
        "samples",
        "Sample radiographs",
        fig,
        "No images were converted, so there is nothing to show."
        if meta.empty
        else "No sample was asked for (samples=0).",
        caption=f"{len(rows)} images drawn at random from all {len(meta)} (labelled or not), "
        f"shown at {pixels.size} px. Positive images have their mask outlined; the title "
        "colour is the label.",
    )


def positives_section(pixels: Pixels, meta: pd.DataFrame, rows: list[int]) -> Section:
    return figure_section(
        "positives",
        "Positive images: mask, CLAHE, raw",
        fig_positive_examples(pixels, meta, rows),
        "There is no image with a pneumothorax in this dataset, so no mask to show.",
        caption=f"{len(rows)} positive images drawn at random. Left: the mask in colour with a "
        "box around each connected region (at the shown size, overlapping annotated regions "
        "merge into one box); middle: contrast-limited adaptive histogram equalisation "
        "(CLAHE, clip 2, 8x8 tiles), which makes the missing lung markings easier to see; "
        "right: the image as stored.",
    )


def class_balance_section(meta: pd.DataFrame) -> Section:
    counts = meta["label_state"].value_counts()
    labelled = int(counts.get(PNEUMOTHORAX, 0) + counts.get(NO_PNEUMOTHORAX, 0))
    text = (
        f"{counts.get(PNEUMOTHORAX, 0)} of {labelled} labelled images "
        f"({pct(counts.get(PNEUMOTHORAX, 0), labelled)}) have a pneumothorax; "
        f"{plural(counts.get(UNLABELLED, 0), 'image')} unlabelled (no label row: unknown, not "
        "negative)."
    )
    return figure_section(
        "class_balance",
        "Class balance",
        fig_class_balance(meta),
        "No images were converted.",
        caption="Images per label state. Unlabelled images are kept apart: a missing label "
        "row does not mean an empty mask.",
        paragraphs=[text],
    )


def regions_section(meta: pd.DataFrame) -> Section:
    pos = meta[meta["label_state"] == PNEUMOTHORAX]
    paragraphs = []
    if len(pos):
        several = int((pos["n_regions"] > 1).sum())
        paragraphs.append(
            f"{several} of {len(pos)} positive images ({pct(several, len(pos))}) have more "
            "than one annotated region (one label row each; rows of one image can overlap)."
        )
    return figure_section(
        "regions",
        "Annotations per image",
        fig_regions_per_image(meta),
        "No image with a pneumothorax, so no annotated region.",
        caption="Label rows (regions) per positive image. Negative images have one '-1' row "
        "and no region.",
        paragraphs=paragraphs,
    )


def age_section(meta: pd.DataFrame) -> Section:
    no_age = int(meta["age"].isna().sum())
    return figure_section(
        "age",
        "Age by class",
        fig_age(meta),
        "No image has a valid PatientAge.",
        caption="Left: images per 5-year age band, stacked by label state. Right: each "
        "class's own age distribution (% of the class per band), to compare shapes across "
        f"unequal classes; a class with fewer than {MIN_SHAPE_N} ages is left out there. "
        f"Ages of {AGE_TOP_CODE} and over are one group ({AGE_TOP_CODE}+), as converted: an "
        "exact age above 89 can identify a person (HIPAA Safe Harbor).",
        paragraphs=[
            f"{plural(no_age, 'image')} without a valid age (missing or invalid): not drawn."
            if no_age
            else "Every image has a valid age."
        ],
    )


# The sections that are a figure of the metadata and its caption, nothing more:
# (key, title, figure, text when there is no figure, caption), in page order.
META_FIGURES = (
    (
        "sex",
        "Sex by class",
        fig_sex,
        "No images were converted.",
        "PatientSex within each label state: stacked shares (bar labels are image counts) "
        "and the same as pies.",
    ),
    (
        "view_position",
        "View position by class",
        fig_view_position,
        "No images were converted.",
        "Left: images per ViewPosition and label state. Right: the share of labelled images "
        "with a pneumothorax in each view (bedside AP films are often sicker patients).",
    ),
)


def meta_figure_sections(meta: pd.DataFrame) -> list[Section]:
    """The sections of :data:`META_FIGURES`."""
    return [
        figure_section(key, title, figure(meta), empty, caption=caption)
        for key, title, figure, empty, caption in META_FIGURES
    ]


def mask_area_section(meta: pd.DataFrame) -> Section:
    frac = meta.loc[meta["label_state"] == PNEUMOTHORAX, "mask_fraction"].astype(float) * 100
    paragraphs = []
    if len(frac):
        q = frac.quantile([0.1, 0.5, 0.9])
        paragraphs.append(
            f"Median mask area {q[0.5]:.2f}% of the image (10th percentile {q[0.1]:.2f}%, "
            f"90th {q[0.9]:.2f}%). At 1024 px, 1% is about {0.01 * 1024 * 1024:.0f} pixels; "
            "small regions are what a post-processing minimum area can delete."
        )
    return figure_section(
        "mask_area",
        "Mask area",
        fig_mask_area(meta),
        "No image with a pneumothorax, so no mask area to show.",
        caption="Area of the union mask of each positive image, relative to the image, "
        "measured at the DICOM's own size. Log scale: the areas span orders of magnitude.",
        paragraphs=paragraphs,
    )


def heatmap_section(pixels: Pixels) -> Section:
    return figure_section(
        "heatmap",
        "Where the regions lie",
        fig_heatmap(pixels),
        "No image with a pneumothorax, so no heat map.",
        caption=f"Left: the share of the {pixels.n_positive} positive images whose mask covers "
        f"each pixel (image orientation: the patient's right is on the left). Right: the same "
        f"over the mean of all {pixels.n_images} images.",
    )


def quality_section(manifest: dict[str, Any], meta: pd.DataFrame) -> Section:
    n = len(meta)
    counts = manifest.get("counts", {})
    states = meta["label_state"].value_counts()
    ages = meta["age_status"].fillna("missing").value_counts()
    images_per_patient = patient_keys(meta).value_counts()
    sizes = Counter(f"{h}x{w}" for h, w in zip(meta["height"], meta["width"], strict=True))
    spacing = meta["pixel_spacing"].dropna()
    rows: list[tuple[str, object, str]] = [
        ("unlabelled images", states.get(UNLABELLED, 0), pct(states.get(UNLABELLED, 0), n)),
        ("label rows rejected", counts.get("label_errors", 0), "see Conversion errors"),
        ("age valid", ages.get("ok", 0), pct(ages.get("ok", 0), n)),
        ("age missing", ages.get("missing", 0), pct(ages.get("missing", 0), n)),
        (
            f"age invalid (unreadable, > {MAX_AGE_YEARS} y)",
            ages.get("invalid", 0),
            pct(ages.get("invalid", 0), n),
        ),
        ("sex not M/F/O", int((meta["sex"].map(sex_of) == "unknown").sum()), ""),
        ("view position missing", int((meta["view_position"].map(view_of) == "unknown").sum()), ""),
        ("patients", len(images_per_patient), "counted by pseudonym, never listed"),
        (
            "patients with several images",
            int((images_per_patient > 1).sum()),
            f"at most {int(images_per_patient.max()) if len(images_per_patient) else 0} "
            "images per patient: folds are grouped by patient",
        ),
    ]
    rows += [(f"original size {s}", c, pct(c, n)) for s, c in sizes.most_common(5)]
    if len(spacing):
        rows.append(
            ("pixel spacing (mm)", f"{spacing.min():.3f} - {spacing.max():.3f}", "min - max")
        )
    return Section(
        "quality",
        "Data quality",
        paragraphs=[
            "Unlabelled images are kept in the dataset for prediction but never used as "
            "negatives. Invalid ages are stored as missing, not clipped."
        ],
        tables=[Table(("check", "images", "note"), rows)],
    )


def errors_section(errors: pd.DataFrame | None) -> Section:
    if errors is None:
        return Section(
            "errors",
            "Conversion errors",
            ["This dataset has no errors.csv, so rejected files cannot be shown."],
            level=3,
        )
    if errors.empty:
        return Section(
            "errors",
            "Conversion errors",
            ["No conversion errors: every DICOM file was converted and every label row was used."],
            level=3,
        )
    grouped = errors.groupby(["stage", "short"]).size().sort_values(ascending=False)
    by_stage = errors["stage"].value_counts()
    return figure_section(
        "errors",
        "Conversion errors",
        fig_errors(errors),
        "",
        caption="Rejected files (read: not a usable DICOM header; decode: pixels unreadable) "
        "and label rows (label) by reason, with per-file details removed.",
        paragraphs=[
            f"{plural(len(errors), 'row')} in errors.csv: "
            + ", ".join(f"{by_stage[s]} at the {s} stage" for s in by_stage.index)
            + ". errors.csv beside the dataset lists each file and the full reason."
        ],
        tables=[
            Table(
                ("stage", "reason", "rows"),
                [(s, r, int(n)) for (s, r), n in grouped.items()],
                caption="errors.csv grouped by stage and reason",
            )
        ],
        level=3,
    )


def folds_section(meta: pd.DataFrame) -> Section:
    rows = []
    if len(meta):
        keyed = meta.assign(key=patient_keys(meta))
        for fold, part in keyed.groupby("fold"):
            states = part["label_state"].value_counts()
            pos, neg = states.get(PNEUMOTHORAX, 0), states.get(NO_PNEUMOTHORAX, 0)
            unl, patients = states.get(UNLABELLED, 0), int(part["key"].nunique())
            rows.append((int(fold), len(part), patients, pos, neg, unl, pct(pos, pos + neg)))
    return figure_section(
        "folds",
        "Fold balance",
        fig_folds(meta),
        "No images were converted, so there are no folds.",
        caption="Left: images per fold by label state. Right: patients per fold (each "
        "patient's images are all in one fold, so validation never sees a training patient).",
        tables=[Table(FOLD_COLUMNS, rows)] if rows else [],
        level=3,
    )


def _intro(
    root: Path, manifest: dict[str, Any], meta: pd.DataFrame, size: int, seed: int
) -> list[str]:
    counts = manifest.get("counts", {})
    return [
        f"{len(meta)} images converted from {counts.get('files_seen', '?')} DICOM files "
        f"(dataset folder {root.resolve().name}, converted {manifest.get('created', '?')}). "
        f"Pictures at {size} px; random choices with seed {seed}.",
        "No patient identifiers: patients are counted, never listed, and images are "
        "numbered within this page only.",
    ]
