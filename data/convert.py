"""DICOM tree + RLE CSV -> Parquet dataset, manifest.json and errors.csv, with Ray Data.

Two passes over the files:

1. **headers** (``read_meta``, no pixels), in Ray tasks of a few hundred files: patient
   pseudonyms, tags, and the files that are not DICOM at all. Patient-grouped folds
   need every image's patient *before* any row is written, and this pass is cheap (the
   first 64 KiB of each file). Running it beside the pixel pass was tried: no faster on
   2 cores (it only takes CPU from the decoders) and slower when the workers are cold.
2. **pixels**, a Ray Data job on every core (``read_binary_files`` ->
   ``map_batches``): decode, union the label regions, resize image (area) and mask
   (area + 0.5) to every stored size. The driver streams the results into Parquet
   and the error ledger.

Nothing is lost: every file ends up either as a row or as a line of
``errors.csv`` (``files_seen == converted + errors``), and every label row that
cannot be used is a line there too. An image whose label is malformed is stored
unlabelled, never as a negative.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumotune.compat import attribute_set
from pneumotune.data import dataset, labels, rle
from pneumotune.data.dicom import PIXEL_BUDGET, find_dicoms
from pneumotune.data.ledger import write_ledger
from pneumotune.data.split import assign_folds
from pneumotune.errors import ConfigError, PneumotuneError
from pneumotune.ray_session import ensure_ray, quiet_ray_data
from pneumotune.text import escaped

SIIM_TRAIN_DIR = "dicom-images-train"
# Rows per Parquet file and per row group, by the raw pixel bytes of a row (image + mask at
# every stored size): 2048 and 128 rows up to 256 px, fewer at larger sizes, so that a part
# stays ~512 MiB and a row group (what readers and this writer hold at once) ~32 MiB of
# pixels: 204 and 12 rows at --sizes 512,1024.
PART_ROWS, PART_BYTES = 2048, 512 * 2**20
ROW_GROUP_ROWS, ROW_GROUP_BYTES = 128, 32 * 2**20


def rows_within(sizes: tuple[int, ...], budget: int, most: int) -> int:
    """Rows whose pixels (an image and a mask per size) fit ``budget`` bytes, 1..most."""
    row = 2 * sum(s * s for s in sizes)
    return max(1, min(most, budget // row))


ERROR_COLUMNS = ("path", "image_id", "stage", "reason")
HEADER_FILES_PER_TASK = 256


class ConvertInputError(PneumotuneError):
    """The conversion cannot run at all (no DICOMs, unusable label file, unwritable output)."""


@dataclass(frozen=True)
class ConvertConfig:
    src: Path
    out: Path
    labels: Path | None = None  # None: the SIIM CSV at the top of src, if any
    sizes: tuple[int, ...] = (256, 512)
    rle_dialect: rle.Dialect = "relative"
    n_folds: int = 5
    seed: int = 0
    overwrite: bool = False
    files_per_task: int = 64  # files read and decoded by one Ray task
    # Bytes of pixel data an image may declare (data.dicom): larger ones are ledger rows,
    # refused in the header pass so that the pixel pass never loads them.
    pixel_budget: int = PIXEL_BUDGET

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 16:
            raise ValueError(f"sizes must be a non-empty list of integers >= 16, got {self.sizes}")
        if self.rle_dialect not in rle.DIALECTS:
            raise ValueError(f"rle_dialect must be one of {rle.DIALECTS}, got {self.rle_dialect!r}")
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}")
        if self.pixel_budget <= 0:
            raise ValueError(f"pixel_budget must be a positive byte count, got {self.pixel_budget}")


@dataclass
class ConvertResult:
    out: Path
    manifest: dict[str, Any]
    seconds: float
    error_reasons: Counter = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    def describe(self) -> str:
        c = self.manifest["counts"]
        rate = c["converted"] / self.seconds if self.seconds else 0.0
        lines = [
            f"Converted {c['converted']} of {c['files_seen']} DICOM files into {self.out} "
            f"in {self.seconds:.1f} s ({rate:.1f} images/s); sizes {self.manifest['sizes']}.",
            "  time: "
            + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in self.timings.items()),
            f"  labelled    {c['labelled']:>7}  ({c['positive']} with pneumothorax, "
            f"{c['negative']} without, {c['regions']} regions)",
            f"  unlabelled  {c['unlabelled']:>7}  (no label row, or a malformed one)",
            f"  patients    {c['patients']:>7}  in {self.manifest['split']['n_folds']} folds",
            f"  file errors {c['errors']:>7}   label rows rejected {c['label_errors']}",
        ]
        for reason, n in self.error_reasons.most_common(5):
            lines.append(f"    {n:>5} x {reason}")
        if c["errors"] or c["label_errors"]:
            lines.append(
                f"  Every rejected file and label row is listed in {self.out / 'errors.csv'}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------ worker functions
def read_header(path: Path, key: bytes, pixel_budget: int = PIXEL_BUDGET) -> dict[str, Any]:
    """One file's header fields, or an ``error`` (never raises for a bad file)."""
    from pneumotune.data.dicom import DicomError, read_meta

    row: dict[str, Any] = {"path": str(path), "image_id": path.stem, "error": ""}
    if not path.name.isprintable():  # control characters, or bytes that are not UTF-8
        # Ray Data cannot open such a path (it loses a newline) and Parquet cannot store
        # an id with undecodable bytes: one ledger row, the name written escaped.
        row["image_id"] = escaped(path.stem)
        row["error"] = (
            "file name holds control characters or bytes that are not UTF-8: rename the file"
        )
        return row
    try:
        meta = read_meta(path, image_id=path.stem, key=key, pixel_budget=pixel_budget)
        row.update(dataclasses.asdict(meta))
    except DicomError as exc:
        row["error"] = str(exc)
    except Exception as exc:  # a reader bug must not stop the run: record it
        row["error"] = f"unreadable: {exc!r}"
    return row


def read_header_chunk(
    paths: list[str], key: bytes, pixel_budget: int = PIXEL_BUDGET
) -> list[dict[str, Any]]:
    """``read_header`` for each file of one Ray task, in order."""
    return [read_header(Path(p), key, pixel_budget) for p in paths]


def decode_pixels(
    batch: dict[str, np.ndarray],
    sizes: tuple[int, ...],
    regions: dict[str, list[tuple[int, str]]],
    dialect: rle.Dialect,
    pixel_budget: int = PIXEL_BUDGET,
) -> dict[str, list]:
    """Ray Data UDF: ``{"bytes", "path"}`` -> resized image and mask bytes per size."""
    import cv2

    from pneumotune.data.dicom import DicomError, read_image
    from pneumotune.data.resize import resize_image, resize_mask

    # Ray runs one task per core: OpenCV's own thread pool would only oversubscribe them.
    cv2.setNumThreads(1)

    columns = ["image_id", "error", "label_error", "height", "width", "mask_fraction"]
    columns += [f"{kind}_{s}" for kind in ("image", "mask") for s in sizes]
    out: dict[str, list] = {k: [] for k in columns}
    for data, path in zip(batch["bytes"], batch["path"], strict=True):
        image_id = Path(path).stem
        error = label_error = ""
        image = mask = None
        try:
            image = read_image(bytes(data), pixel_budget=pixel_budget)
        except DicomError as exc:
            error = str(exc)
        except Exception as exc:  # a reader bug must not stop the run: record it
            error = f"undecodable: {exc!r}"
        if image is not None and image_id in regions:
            mask, label_error = _union_regions(regions[image_id], image.shape, dialect)
        out["image_id"].append(image_id)
        out["error"].append(error)
        out["label_error"].append(label_error)
        out["height"].append(image.shape[0] if image is not None else 0)
        out["width"].append(image.shape[1] if image is not None else 0)
        # count_nonzero: mean() would convert the 1024x1024 mask to float64 first.
        fraction = np.count_nonzero(mask) / mask.size if mask is not None else None
        out["mask_fraction"].append(fraction)
        for s in sizes:
            out[f"image_{s}"].append(resize_image(image, s).tobytes() if image is not None else b"")
            out[f"mask_{s}"].append(resize_mask(mask, s).tobytes() if mask is not None else None)
    return out


def _union_regions(
    rows: list[tuple[int, str]], shape: tuple[int, int], dialect: rle.Dialect
) -> tuple[np.ndarray | None, str]:
    """The OR of an image's regions at its own size, or ``(None, reasons)`` if a row is bad."""
    problems = []
    for line, text in rows:
        try:
            rle.check_bounds(*rle.parse_runs(text, dialect), shape)
        except rle.RLEError as exc:
            problems.append(f"line {line}: {exc}")
    if problems:
        return None, "; ".join(problems)
    return rle.merge([text for _, text in rows], shape, dialect), ""


# ------------------------------------------------------------------ driver
def convert(
    cfg: ConvertConfig, address: str | None = None, progress: bool = False
) -> ConvertResult:
    """Run the conversion; see the module docstring. Returns the manifest and timing.

    The phases, in order: list the DICOMs, read the label file, prepare the output, start
    Ray, read the headers (pass 1), join the labels and assign the folds, decode and
    resize the pixels (pass 2, Ray Data) into Parquet, then the manifest and the ledger.
    """
    t0 = time.perf_counter()
    key = _pseudonym_key()  # first: a key that is refused must not leave a half-made output
    root, paths = _list_dicoms(cfg.src)
    label_path, table = _load_labels(cfg)
    _prepare_out(cfg.out, cfg.overwrite)
    ray, ray_seconds = _start_ray(address)
    ledger = _Ledger(cfg.src)

    t_headers = time.perf_counter()
    headers = _read_header_pass(ray, paths, key, cfg.pixel_budget, ledger, progress)
    timings = {"ray_start": ray_seconds, "headers": time.perf_counter() - t_headers}
    status = _join_labels(table, headers, ledger)
    folds = _assign_patient_folds(headers, status, cfg)

    pixel_ds = _pixel_pipeline(ray, headers, status, table, cfg)
    t_pixels = time.perf_counter()
    tally = _write_parquet(pixel_ds, headers, status, folds, table, cfg, ledger, progress)
    timings["pixels"] = time.perf_counter() - t_pixels

    manifest = _manifest(cfg, root, label_path, table, len(paths), tally, ledger)
    c = manifest["counts"]
    # The ledger's invariant; a failure here is a bug in this module, not bad input.
    assert c["files_seen"] == c["converted"] + c["errors"], (
        c["files_seen"],
        c["converted"],
        c["errors"],
    )
    _write_ledger(cfg.out / "errors.csv", ledger.rows)
    (cfg.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    reasons = Counter(_reason_kind(e["reason"]) for e in ledger.rows)
    return ConvertResult(cfg.out, manifest, time.perf_counter() - t0, reasons, timings)


# ------------------------------------------------------------------ phases
@dataclass
class _Ledger:
    """The rows of ``errors.csv``: every rejected file and label row, in the order found."""

    src: Path  # file paths are written relative to it where they can be
    rows: list[dict[str, str]] = field(default_factory=list)

    def rel(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.src))
        except ValueError:
            return str(path)

    def add(self, path: str, image_id: str, stage: str, reason: str) -> None:
        """One row; ``path`` is ``""`` for a label row that names no file."""
        path = self.rel(path) if path else ""
        self.rows.append({"path": path, "image_id": image_id, "stage": stage, "reason": reason})

    def count(self, *stages: str) -> int:
        return sum(1 for e in self.rows if e["stage"] in stages)


@dataclass
class _Tally:
    """What the pixel pass wrote: Parquet files and rows, label counts, patients."""

    files: list[str]
    converted: int
    counts: Counter
    patients: set[str]


def _list_dicoms(src: Path) -> tuple[Path, list[Path]]:
    """The DICOM root (``dicom-images-train`` in a SIIM download) and its ``*.dcm`` files."""
    root = _dicom_root(src)
    paths = find_dicoms(root)
    if not paths:
        raise ConvertInputError(f"no *.dcm files found under {root}")
    return root, paths


def _load_labels(cfg: ConvertConfig) -> tuple[Path | None, labels.LabelTable]:
    """The label file (given, or the SIIM CSV at the top of ``src``) and its rows."""
    label_path = cfg.labels if cfg.labels is not None else labels.find_label_file(cfg.src)
    try:
        table = (
            labels.read_labels(label_path, cfg.rle_dialect)
            if label_path is not None
            else labels.LabelTable(dialect=cfg.rle_dialect)
        )
    except labels.LabelFileError as exc:
        raise ConvertInputError(str(exc)) from None
    return label_path, table


def _start_ray(address: str | None) -> tuple[Any, float]:
    """The ``ray`` module, connected (or started locally), and the seconds that took."""
    t_ray = time.perf_counter()
    ensure_ray(address)
    quiet_ray_data()
    import ray

    return ray, time.perf_counter() - t_ray


def _read_header_pass(
    ray: Any, paths: list[Path], key: bytes, budget: int, ledger: _Ledger, progress: bool
) -> dict[str, dict[str, Any]]:
    """Pass 1: ``image_id -> header row`` of each readable file; the others to the ledger.

    Ray tasks of HEADER_FILES_PER_TASK files: ~0.5 ms per file of GIL-bound parsing, 6 s
    for SIIM's 10,712 files in one driver thread. Results are taken in listing order,
    which decides which of two files with one id is kept.
    """
    headers: dict[str, dict[str, Any]] = {}
    with _bar(progress, len(paths), "headers") as bar:
        for row in _read_headers(ray, paths, key, budget, bar):
            image_id = row["image_id"]
            if row["error"]:
                ledger.add(row["path"], image_id, "read", row["error"])
            elif image_id in headers:
                other = ledger.rel(headers[image_id]["path"])
                reason = f"duplicate image id: the same id was already read from {other}"
                ledger.add(row["path"], image_id, "read", reason)
            else:
                headers[image_id] = row
    return headers


def _join_labels(
    table: labels.LabelTable, headers: dict[str, dict[str, Any]], ledger: _Ledger
) -> dict[str, str]:
    """Each image's label status; label rows for no DICOM and malformed rows to the ledger."""
    for problem in table.orphans:
        ledger.add("", "", "label", f"line {problem.line}: {problem.reason}")
    for image_id, rows in table.rows.items():
        if image_id not in headers:
            for r in rows:
                reason = f"line {r.line}: label for an image id with no DICOM"
                ledger.add("", image_id, "label", reason)
    for image_id, problems in table.bad.items():
        for p in problems:
            suffix = "" if image_id in headers else " (and no DICOM has this image id)"
            ledger.add("", image_id, "label", p.reason + suffix)
    return {i: table.status(i) for i in headers}


def _assign_patient_folds(
    headers: dict[str, dict[str, Any]], status: dict[str, str], cfg: ConvertConfig
) -> dict[str, int]:
    """Folds, on patient pseudonyms, stratified by the label as known so far."""
    ids = list(headers)
    folds = assign_folds(
        ids,
        [headers[i].get("patient_id") for i in ids],
        [{"positive": True, "negative": False}.get(status[i]) for i in ids],
        n_folds=cfg.n_folds,
        seed=cfg.seed,
    )
    return dict(zip(ids, folds.tolist(), strict=True))


def _pixel_pipeline(
    ray: Any,
    headers: dict[str, dict[str, Any]],
    status: dict[str, str],
    table: labels.LabelTable,
    cfg: ConvertConfig,
) -> Any:
    """Pass 2, not yet run: a Ray Data dataset of decoded, resized images and masks."""
    ids = list(headers)
    regions = {
        i: [(r.line, r.rle) for r in table.regions(i)] for i in ids if status[i] == "positive"
    }
    # Whole blocks of files_per_task files (batch_size=None) let Ray Data fuse the read
    # and the decode into one task: no hand-over of raw bytes through the object store.
    blocks = max(2 * _cluster_cpus(ray), -(-len(ids) // cfg.files_per_task))
    with _without_op_reservation(ray.data.DataContext.get_current()):
        return ray.data.read_binary_files(
            [headers[i]["path"] for i in ids], include_paths=True, override_num_blocks=blocks
        ).map_batches(
            decode_pixels,
            batch_size=None,
            fn_kwargs={
                "sizes": cfg.sizes,
                "regions": regions,
                "dialect": cfg.rle_dialect,
                "pixel_budget": cfg.pixel_budget,
            },
        )


def _write_parquet(
    pixel_ds: Any,
    headers: dict[str, dict[str, Any]],
    status: dict[str, str],
    folds: dict[str, int],
    table: labels.LabelTable,
    cfg: ConvertConfig,
    ledger: _Ledger,
    progress: bool,
) -> _Tally:
    """Run pass 2, streaming its rows into Parquet parts; failed decodes to the ledger."""
    part_rows = rows_within(cfg.sizes, PART_BYTES, PART_ROWS)
    writer = dataset.PartWriter(cfg.out, cfg.sizes, part_rows=part_rows)
    group_rows = rows_within(cfg.sizes, ROW_GROUP_BYTES, ROW_GROUP_ROWS)
    counts: Counter = Counter()
    patients: set[str] = set()
    with _bar(progress, len(headers), "decoding") as bar:
        for batch in pixel_ds.iter_batches(batch_size=group_rows, batch_format="pyarrow"):
            rows = []
            for row in batch.to_pylist():
                bar.update(1)
                image_id = row["image_id"]
                header = headers[image_id]
                if row["error"]:
                    ledger.add(header["path"], image_id, "decode", row["error"])
                    continue
                label_status = status[image_id]
                if row["label_error"]:
                    ledger.add(header["path"], image_id, "label", row["label_error"])
                    label_status = "bad"
                out = _output_row(row, header, label_status, folds[image_id], table, cfg.sizes)
                rows.append(out)
                counts[label_status] += 1
                counts["regions"] += out["n_regions"]
                counts["invalid_age"] += header.get("age_status") == "invalid"
                patients.add(header.get("patient_id") or f"image:{image_id}")
            writer.write(rows)
    files = writer.close()
    return _Tally(files, writer.rows, counts, patients)


def _manifest(
    cfg: ConvertConfig,
    root: Path,
    label_path: Path | None,
    table: labels.LabelTable,
    files_seen: int,
    tally: _Tally,
    ledger: _Ledger,
) -> dict[str, Any]:
    """``manifest.json``: what was converted, from what, how it was split, the counts."""
    counts = tally.counts
    return {
        "schema_version": dataset.SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sizes": list(cfg.sizes),
        "files": tally.files,
        "source": {
            "dicom_root": str(root),
            "labels": label_path.name if label_path else None,
            "labels_sha256": table.sha256,
            "label_rows": table.n_rows,
            "rle_dialect": cfg.rle_dialect,
        },
        "split": {
            "n_folds": cfg.n_folds,
            "seed": cfg.seed,
            "method": "patient-grouped, stratified by has_pneumothorax",
        },
        "counts": {
            "files_seen": files_seen,
            "converted": tally.converted,
            "errors": ledger.count("read", "decode"),
            "labelled": counts["positive"] + counts["negative"],
            "unlabelled": counts["unlabelled"] + counts["bad"],
            "positive": counts["positive"],
            "negative": counts["negative"],
            "regions": counts["regions"],
            "label_rows": table.n_rows,
            "label_errors": ledger.count("label"),
            "patients": len(tally.patients),
            "invalid_age": counts["invalid_age"],
        },
    }


def _output_row(
    row: dict[str, Any],
    header: dict[str, Any],
    label_status: str,
    fold: int,
    table: labels.LabelTable,
    sizes: tuple[int, ...],
) -> dict[str, Any]:
    labelled = label_status in ("positive", "negative")
    out = {name: header.get(name) for name in dataset.HEADER_COLUMNS}
    out.update(
        image_id=row["image_id"],
        height=int(row["height"]),
        width=int(row["width"]),
        labelled=labelled,
        has_pneumothorax=(label_status == "positive") if labelled else None,
        n_regions=len(table.regions(row["image_id"])) if labelled else 0,
        mask_fraction=(row["mask_fraction"] if label_status == "positive" else 0.0)
        if labelled
        else None,
        fold=fold,
    )
    for s in sizes:
        out[f"image_{s}"] = row[f"image_{s}"]
        if label_status == "positive":
            out[f"mask_{s}"] = row[f"mask_{s}"]
        elif labelled:
            out[f"mask_{s}"] = bytes(s * s)  # a true negative: known empty mask
        else:
            out[f"mask_{s}"] = None  # unknown: never an empty mask
    return out


def _read_headers(
    ray: Any, paths: list[Path], key: bytes, budget: int, bar: Any
) -> Iterator[dict[str, Any]]:
    """Every file's header row, in the order of ``paths``, read by Ray tasks."""
    n_tasks = max(2 * _cluster_cpus(ray), -(-len(paths) // HEADER_FILES_PER_TASK))
    size = -(-len(paths) // n_tasks)
    chunks = [[str(p) for p in paths[i : i + size]] for i in range(0, len(paths), size)]
    task = ray.remote(num_cpus=1)(read_header_chunk)
    refs = [task.remote(chunk, key, budget) for chunk in chunks]
    for chunk, ref in zip(chunks, refs, strict=True):  # tasks start in this order too
        rows = ray.get(ref)
        bar.update(len(chunk))
        yield from rows


def _cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextlib.contextmanager
def _without_op_reservation(ctx: Any) -> Iterator[None]:
    """Datasets created inside run without Ray Data's per-operator resource reservation.

    The pixel pass is one fused operator. With the reservation on, Ray Data kept two
    tasks "active" on a 2-CPU machine but only one decoding at a time (3.1 s for 1,000
    images; without it 1.8 s, both cores busy). A Dataset copies the DataContext when it
    is created, so the switch is scoped to this pipeline and the user's own are untouched.
    """
    if not hasattr(ctx, "op_resource_reservation_enabled"):  # a Ray without the switch
        yield
        return
    with attribute_set(ctx, "op_resource_reservation_enabled", False):
        yield


def _dicom_root(src: Path) -> Path:
    if not src.is_dir():
        raise ConvertInputError(f"source folder {src} does not exist or is not a folder")
    # A SIIM download holds dicom-images-train/ and dicom-images-test/ side by side:
    # only the training images belong in a training dataset.
    return src / SIIM_TRAIN_DIR if (src / SIIM_TRAIN_DIR).is_dir() else src


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConvertInputError(
                f"output folder {out} is not empty (use --overwrite to replace it)"
            )
        if not (out / "manifest.json").exists() and not (out / "errors.csv").exists():
            raise ConvertInputError(
                f"refusing to overwrite {out}: it is not empty and does not look like a "
                "pneumotune dataset"
            )
        for child in out.iterdir():
            if child.is_file() and (child.suffix in (".parquet", ".json", ".csv")):
                child.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConvertInputError(f"cannot write to output folder {out}: {exc.strerror}") from None


PSEUDONYM_KEY_MIN_BYTES = 16


def _pseudonym_key() -> bytes:
    # A fresh random key per run: pseudonyms are unlinkable across conversions unless the
    # user sets PNEUMOTUNE_PSEUDONYM_KEY to make them stable. Folds do not depend on it.
    # A short key can be found by trying keys against a known patient id (HMAC-SHA256 is
    # fast), and then every pseudonym is a patient id again: fewer than 16 bytes refused.
    env = os.environ.get("PNEUMOTUNE_PSEUDONYM_KEY")
    if not env:
        return os.urandom(32)
    key = env.encode()
    if len(key) < PSEUDONYM_KEY_MIN_BYTES:
        raise ConfigError(
            f"PNEUMOTUNE_PSEUDONYM_KEY is {len(key)} bytes long, fewer than "
            f"{PSEUDONYM_KEY_MIN_BYTES}: a short key can be guessed, which undoes the "
            "pseudonyms. Set it to a long random secret, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`, or unset it for a "
            "fresh random key per run"
        )
    return key


def _reason_kind(reason: str) -> str:
    """A reason without its per-row details, for the summary's top-5 list."""
    text = reason.split(": ", 1)[1] if reason.startswith("line ") else reason
    return text.split(" (")[0][:90]


def _write_ledger(path: Path, ledger: list[dict[str, str]]) -> None:
    # Through data.ledger: paths and image ids are the user's file names and label cells,
    # and a spreadsheet would run one that starts with "=" (its docstring has the rules).
    rows = sorted(ledger, key=lambda e: (e["stage"], e["path"], e["image_id"]))
    write_ledger(path, ERROR_COLUMNS, rows)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
