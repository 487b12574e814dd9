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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
    pa.field("age", pa.int16()),  # null when missing or invalid (see age_status)
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
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{root} is not a pneumotune dataset (no {MANIFEST}); create one with "
            "`pneumotune convert SRC OUT`"
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
    """One stored size of the labelled images, in memory.

    ``images``: uint8 ``(N, S, S)``; ``masks``: uint8 0/1 ``(N, S, S)``;
    ``meta``: a pandas DataFrame of the metadata columns, row-aligned.
    """

    images: np.ndarray
    masks: np.ndarray
    meta: Any

    def __len__(self) -> int:
        return len(self.images)

    @property
    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images, masks)``, as ``model.train.fit`` takes a set."""
        return self.images, self.masks

    def subset(self, index: np.ndarray) -> Arrays:
        return Arrays(
            self.images[index], self.masks[index], self.meta.iloc[index].reset_index(drop=True)
        )


def split_fold(arrays: Arrays, val_fold: int) -> tuple[Arrays, Arrays]:
    """Training rows (every other fold) and validation rows (``val_fold``)."""
    folds = arrays.meta["fold"].to_numpy()
    is_val = folds == val_fold
    if not is_val.any() or is_val.all():
        side = "no validation" if not is_val.any() else "no training"
        raise DatasetError(
            f"val_fold {val_fold} leaves {side} image (folds of the labelled images: "
            f"{sorted(set(folds.tolist()))})"
        )
    return arrays.subset((~is_val).nonzero()[0]), arrays.subset(is_val.nonzero()[0])


def check_size(manifest: dict[str, Any], size: int, root: Path) -> None:
    if size not in manifest["sizes"]:
        raise DatasetError(
            f"size {size} is not stored in {root} (stored: {manifest['sizes']}); choose one of "
            f"those or convert again with --sizes including {size}"
        )


def load_arrays(root: Path, size: int, labelled_only: bool = True) -> Arrays:
    """Images and masks at ``size`` (labelled rows only unless told otherwise).

    With ``labelled_only=False`` unlabelled rows are included and their masks are
    all zeros in ``masks`` — use ``meta.labelled`` before treating them as truth.
    """
    root = Path(root)
    manifest = read_manifest(root)
    check_size(manifest, size, root)
    table = read_table(root, [*META_COLUMNS, f"image_{size}", f"mask_{size}"])
    if labelled_only:
        table = table.filter(pc.equal(table.column("labelled"), True))
    images = bytes_to_array(table.column(f"image_{size}"), size)
    mask_col = table.column(f"mask_{size}").fill_null(bytes(size * size))
    masks = bytes_to_array(mask_col, size)
    meta = table.select(list(META_COLUMNS)).to_pandas()
    return Arrays(images, masks, meta)


def bytes_to_array(column: pa.ChunkedArray, size: int) -> np.ndarray:
    """A binary column of ``size*size``-byte cells -> uint8 ``(N, size, size)``."""
    out = np.empty((len(column), size, size), np.uint8)
    row = 0
    for chunk in column.chunks:
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
