"""The converted dataset on disk: its Parquet schema, the writer, and the loaders.

A dataset folder holds ``manifest.json``, ``errors.csv`` and ``part-NNNNN.parquet``
files. One row per converted DICOM: de-identified metadata (no PatientName, no raw
PatientID: ``patient_id`` is a keyed pseudonym), the label state, the fold, and for
each stored size ``S`` the columns ``image_S`` (``S*S`` bytes, uint8, row-major) and
``mask_S`` (``S*S`` bytes of 0/1; **null** when the image is unlabelled, so an
unknown mask can never be read as an empty one). Parquet's column projection lets a
search read only the size it trains at.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pneumotune.errors import PneumotuneError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ERRORS = "errors.csv"

# Header fields copied from data.dicom.DicomMeta (none of them identifies a person).
HEADER_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "sex",
    "age",
    "age_status",
    "view_position",
    "pixel_spacing",
    "modality",
    "body_part",
    "photometric",
    "bits_stored",
    "transfer_syntax",
)

META_FIELDS: list[pa.Field] = [
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("patient_id", pa.string()),  # HMAC pseudonym, see data.dicom.pseudonymise
    pa.field("sex", pa.string()),
    pa.field("age", pa.int16()),  # 90 means "90 or over"; null when missing or invalid
    pa.field("age_status", pa.string()),  # ok | missing | invalid
    pa.field("view_position", pa.string()),
    pa.field("pixel_spacing", pa.float32()),  # mm
    pa.field("modality", pa.string()),
    pa.field("body_part", pa.string()),
    pa.field("photometric", pa.string()),
    pa.field("bits_stored", pa.int16()),
    pa.field("transfer_syntax", pa.string()),
    pa.field("height", pa.int32()),  # the DICOM's own size, for predictions at full size
    pa.field("width", pa.int32()),
    pa.field("labelled", pa.bool_()),
    pa.field("has_pneumothorax", pa.bool_()),  # null when unlabelled
    pa.field("n_regions", pa.int16()),
    pa.field("mask_fraction", pa.float32()),  # mask area / image area at full size
    pa.field("fold", pa.int16()),
]
META_COLUMNS: tuple[str, ...] = tuple(f.name for f in META_FIELDS)


def schema(sizes: tuple[int, ...]) -> pa.Schema:
    fields = list(META_FIELDS)
    for s in sizes:
        fields += [pa.field(f"image_{s}", pa.binary()), pa.field(f"mask_{s}", pa.binary())]
    return pa.schema(fields, metadata={"pneumotune.sizes": ",".join(map(str, sizes))})


class PartWriter:
    """Streams rows into ``part-NNNNN.parquet`` files of at most ``part_rows`` rows."""

    def __init__(self, out: Path, sizes: tuple[int, ...], part_rows: int = 2048) -> None:
        self.out, self.schema, self.part_rows = out, schema(sizes), part_rows
        self.rows = 0
        self._files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_part = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        while rows:
            if self._writer is None or self._in_part >= self.part_rows:
                self._open_next()
            take = rows[: self.part_rows - self._in_part]
            rows = rows[len(take) :]
            assert self._writer is not None
            self._writer.write_table(pa.Table.from_pylist(take, schema=self.schema))
            self._in_part += len(take)
            self.rows += len(take)

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        name = f"part-{len(self._files):05d}.parquet"
        # zstd level 1: masks shrink ~100x, images a little, at little CPU cost.
        self._writer = pq.ParquetWriter(
            self.out / name, self.schema, compression="zstd", compression_level=1
        )
        self._files.append(name)
        self._in_part = 0

    def close(self) -> list[str]:
        if self._writer is None:
            # No row converted: still leave a readable, empty dataset behind.
            self._open_next()
        assert self._writer is not None
        self._writer.close()
        return list(self._files)


# ------------------------------------------------------------------ reading
class DatasetError(PneumotuneError, ValueError):
    """A dataset folder that cannot be read as asked (the message says what to do)."""


def read_manifest(root: Path) -> dict[str, Any]:
    path = DatasetError.require_file(
        root, MANIFEST, "a pneumotune dataset", "create one with `pneumotune convert SRC OUT`"
    )
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(
            f"{root} has schema version {manifest.get('schema_version')}, this pneumotune reads "
            f"version {SCHEMA_VERSION}: convert the data again"
        )
    return manifest


def read_table(root: Path, columns: list[str] | None = None) -> pa.Table:
    """All rows of a dataset, only the named columns (Parquet column projection)."""
    manifest = read_manifest(root)
    tables = [pq.read_table(Path(root) / f, columns=columns) for f in manifest["files"]]
    return pa.concat_tables(tables) if tables else schema(tuple(manifest["sizes"])).empty_table()


def read_meta(root: Path) -> Any:
    """The metadata columns as a pandas DataFrame (no pixels)."""
    return read_table(root, list(META_COLUMNS)).to_pandas()


@dataclass(frozen=True)
class Arrays:
    """One stored size of the labelled images: ``images`` uint8 ``(N, S, S)``, ``masks``
    uint8 0/1 ``(N, S, S)`` and ``meta``, a pandas DataFrame of the metadata columns,
    row-aligned.

    The arrays may be read-only memory maps shared by every process of a node
    (:mod:`pneumotune.data.node_cache`); nothing here copies them: a subset of rows is a
    :class:`Rows` view.
    ``positive``: per row, whether the mask has a pixel at this size (the node cache
    stores it; otherwise it is computed once from the masks).
    """

    images: np.ndarray
    masks: np.ndarray
    meta: Any
    positive_rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images, masks)``, as ``model.train.fit`` takes a set."""
        return self.images, self.masks

    @functools.cached_property
    def positive(self) -> np.ndarray:
        if self.positive_rows is not None:
            return self.positive_rows
        return has_foreground(self.masks)

    def rows(self, index: np.ndarray | None = None) -> Rows:
        """A view of rows ``index`` (all by default): no pixel is copied."""
        index = np.arange(len(self)) if index is None else np.asarray(index, np.int64)
        return Rows(self, index)


def has_foreground(masks: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Per mask of ``(N, S, S)``, whether any pixel is set; read ``chunk`` masks at a time
    (no copy of the whole set: the masks may be a memory map larger than memory)."""
    out = np.zeros(len(masks), bool)
    for start in range(0, len(masks), chunk):
        block = masks[start : start + chunk]
        out[start : start + len(block)] = block.reshape(len(block), -1).any(axis=1)
    return out


@dataclass(frozen=True)
class Rows:
    """Some rows of an :class:`Arrays` (a fold, a training set) without copying them.

    ``index`` holds row numbers of ``source``; the pixels stay in the source's (shared,
    possibly memory-mapped) arrays and are read a batch at a time by whoever trains or
    scores on them (:func:`model.train.fit`, :func:`model.inference.validation_metrics`), so a
    trial's memory does not grow with the dataset. :meth:`take` copies the rows asked for;
    :attr:`pair` copies them all (for small sets and for tools that need arrays).
    """

    source: Arrays
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def images(self) -> np.ndarray:
        """The source's images (all rows, shared): select with :attr:`index`."""
        return self.source.images

    @property
    def masks(self) -> np.ndarray:
        """The source's masks (all rows, shared): select with :attr:`index`."""
        return self.source.masks

    @property
    def meta(self) -> Any:
        return self.source.meta.iloc[self.index].reset_index(drop=True)

    @property
    def positive(self) -> np.ndarray:
        return self.source.positive[self.index]

    def take(self, which: Any = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the images and masks of rows ``which`` (a slice or positions in
        this view), in that order."""
        rows = self.index[which]
        return self.source.images[rows], self.source.masks[rows]

    @property
    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of every row's ``(images, masks)``."""
        return self.take()

    def subset(self, positions: np.ndarray) -> Rows:
        """The rows at ``positions`` of this view (still no copy of the pixels)."""
        return Rows(self.source, self.index[np.asarray(positions, np.int64)])


def split_fold(arrays: Arrays, val_fold: int) -> tuple[Rows, Rows]:
    """Training rows (every other fold) and validation rows (``val_fold``), as views."""
    folds = arrays.meta["fold"].to_numpy()
    is_val = folds == val_fold
    if not is_val.any() or is_val.all():
        side = "no validation" if not is_val.any() else "no training"
        raise DatasetError(
            f"val_fold {val_fold} leaves {side} image (folds of the labelled images: "
            f"{sorted(set(folds.tolist()))})"
        )
    return arrays.rows((~is_val).nonzero()[0]), arrays.rows(is_val.nonzero()[0])


def check_size(manifest: dict[str, Any], size: int, root: Path) -> None:
    if size not in manifest["sizes"]:
        raise DatasetError(
            f"size {size} is not stored in {root} (stored: {manifest['sizes']}); choose one of "
            f"those or convert again with --sizes including {size}"
        )


def load_arrays(
    root: Path, size: int, labelled_only: bool = True, fold: int | None = None
) -> Arrays:
    """Images and masks at ``size`` in memory (labelled rows only unless told otherwise;
    ``fold``: that fold's rows only, e.g. the validation fold an export tunes on).

    With ``labelled_only=False`` unlabelled rows are included and their masks are
    all zeros in ``masks`` — use ``meta.labelled`` before treating them as truth.
    The arrays are filled one row group at a time: loading holds one copy of the
    pixels, not the Arrow table and a numpy copy. A search does not call this: its
    trials map the node's copy (:mod:`pneumotune.data.node_cache`).
    """
    root = Path(root)
    manifest = read_manifest(root)
    check_size(manifest, size, root)
    meta = read_table(root, list(META_COLUMNS))
    keep = labelled_rows(meta) if labelled_only else np.ones(len(meta), bool)
    if fold is not None:
        keep &= meta.column("fold").to_numpy(zero_copy_only=False) == fold
    images = np.empty((int(keep.sum()), size, size), np.uint8)
    masks = np.empty_like(images)
    row = 0
    for batch_images, batch_masks in iter_pixels(root, manifest, size, keep):
        n = len(batch_images)
        images[row : row + n], masks[row : row + n] = batch_images, batch_masks
        row += n
    return Arrays(images, masks, meta.filter(keep).to_pandas())


def labelled_rows(meta: pa.Table) -> np.ndarray:
    """Per row of the metadata table, whether the image is labelled."""
    return meta.column("labelled").to_numpy(zero_copy_only=False).astype(bool)


def load_fold(root: Path, size: int, fold: int) -> Arrays:
    """The labelled images of one fold (what an export tunes on): a fifth of the
    dataset in memory, not all of it."""
    arrays = load_arrays(root, size, fold=fold)
    if len(arrays) == 0:
        raise DatasetError(f"fold {fold} of {root} holds no labelled image at {size} px")
    return arrays


def iter_pixels(root: Path, manifest: dict[str, Any], size: int, keep: np.ndarray, rows: int = 32):
    """``(images, masks)``, uint8 ``(n, size, size)``, of the rows ``keep`` selects, read
    ``rows`` rows of the dataset at a time, in order (an unlabelled row's mask is zeros):
    memory stays at one batch of decompressed pixels (data.convert writes row groups of
    at most ~32 MiB)."""
    start = 0
    for name in manifest["files"]:
        parquet = pq.ParquetFile(Path(root) / name)
        for batch in parquet.iter_batches(
            batch_size=rows, columns=[f"image_{size}", f"mask_{size}"]
        ):
            selected = pa.array(keep[start : start + batch.num_rows])
            start += batch.num_rows
            mask_col = batch.column(f"mask_{size}").filter(selected)
            yield (
                bytes_to_array(batch.column(f"image_{size}").filter(selected), size),
                bytes_to_array(mask_col.fill_null(bytes(size * size)), size),
            )


def bytes_to_array(column: pa.ChunkedArray | pa.Array, size: int) -> np.ndarray:
    """A binary column of ``size*size``-byte cells -> uint8 ``(N, size, size)``."""
    out = np.empty((len(column), size, size), np.uint8)
    row = 0
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        # A binary array's values buffer is every cell concatenated: one copy per chunk.
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset : chunk.offset + n + 1]
        if chunk.null_count or not np.all(np.diff(offsets) == size * size):
            raise DatasetError(
                f"a cell of the size-{size} column does not hold {size}x{size} bytes"
            )
        values = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        out[row : row + n] = values.reshape(n, size, size)
        row += n
    return out
