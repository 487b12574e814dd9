"""Each node's copy of a dataset's arrays: uncompressed ``.npy`` files that every trial
on the node memory-maps, read-only.

A search does not hand its trials arrays. It hands them a :class:`SharedDataset`, a few
hundred bytes naming the dataset folder and its version; the first trial on a node that
trains at a size writes that size's labelled images and masks to the node's disk, one
row group at a time (``images.npy``, ``masks.npy``, ``positive.npy``, ``meta.parquet``
under ``<cache>/<dataset>-<version>/size-<S>/``), and every trial on the node then maps
those files. So:

* a trial holds no copy of the data: its training and validation rows are index arrays
  (:class:`pneumotune.data.dataset.Rows`) over the shared map, and a batch is copied
  when it is made;
* a node holds each size its trials train at once, in the page cache, shared by all
  of them, and nothing of a size none of them trains at;
* the driver holds no arrays at all;
* a dataset larger than memory still trains: the kernel pages the files in and out
  (the fast path, all pages resident, is simply the case where they fit).

Where the copy lives: ``$PNEUMOTUNE_CACHE``, else ``~/.cache/pneumotune/arrays``, on
the node that trains (the cluster YAMLs point it at the nodes' local disk). The dataset
folder itself must be readable at the same path on every node (the cluster's shared
volume). A copy is complete when its ``complete.json`` exists; builders take an
exclusive lock so two trials of a node never build the same size twice, and a copy
interrupted mid-way is started again (it is written under a temporary name first).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from pneumotune.data.dataset import (
    MANIFEST,
    META_COLUMNS,
    Arrays,
    DatasetError,
    check_size,
    has_foreground,
    iter_pixels,
    labelled_rows,
    read_manifest,
    read_table,
)

CACHE_ENV = "PNEUMOTUNE_CACHE"
COMPLETE = "complete.json"
# Room left on the cache's disk after a copy, besides the copy itself.
DISK_MARGIN = 1 << 30
# Pixels of one image column read at a time while writing a copy (8 rows at 1024 px).
BATCH_BYTES = 8 << 20


def default_cache_root() -> Path:
    """``$PNEUMOTUNE_CACHE`` or ``~/.cache/pneumotune/arrays`` (read on the node)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pneumotune" / "arrays"


def dataset_version(root: Path) -> str:
    """A short digest of the manifest and of every part's name, size and mtime: a dataset
    converted again (or edited) gets a new version, hence a new copy."""
    root = Path(root)
    manifest = read_manifest(root)
    digest = hashlib.sha256((root / MANIFEST).read_bytes())
    for name in manifest["files"]:
        st = (root / name).stat()
        digest.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def size_bytes(rows: int, size: int) -> int:
    """Bytes of one size's copy: images and masks, one byte per pixel each."""
    return 2 * rows * size * size


@dataclass(frozen=True)
class SharedDataset:
    """What a trial gets instead of arrays: ``data[size]`` is the labelled
    :class:`Arrays` at ``size``, memory-mapped from this node's copy (made on first use).

    ``cache_root`` ``None`` means the node's own default (:func:`default_cache_root`), so
    a driver's path is never imposed on another machine.
    """

    root: Path
    version: str
    cache_root: Path | None = None

    @classmethod
    def of(cls, root: Path, cache_root: Path | None = None) -> SharedDataset:
        root = Path(root).absolute()
        return cls(root, dataset_version(root), cache_root)

    def folder(self, size: int) -> Path:
        base = self.cache_root or default_cache_root()
        return base / f"{self.root.name}-{self.version}" / f"size-{size}"

    def __getitem__(self, size: int) -> Arrays:
        return open_copy(ensure_copy(self, int(size)))


def ensure_copy(data: SharedDataset, size: int, progress: bool = False) -> Path:
    """The folder of this node's complete copy of ``size``, written first if need be
    (``progress``: with a progress bar on stderr)."""
    folder = data.folder(size)
    if (folder / COMPLETE).is_file():
        return folder
    if not data.root.is_dir():
        raise DatasetError(
            f"this node cannot read the dataset at {data.root}: on a cluster, put it on the "
            "volume every node mounts at the same path (cluster/README.md, Storage)"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"size-{size}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another trial of this node may be writing it
        try:
            if not (folder / COMPLETE).is_file():
                if dataset_version(data.root) != data.version:
                    raise DatasetError(
                        f"{data.root} changed since the search started (converted again?): "
                        "start a new search on it"
                    )
                write_copy(data.root, size, folder, progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


def write_copy(root: Path, size: int, folder: Path, progress: bool = False) -> None:
    """Write the labelled rows of ``size`` as ``.npy`` files in ``folder``, a few MiB of
    rows at a time (peak memory: a batch, whatever the dataset's size). Plain writes,
    not a writable memory map: written pages stay the page cache's, not this process'."""
    manifest = read_manifest(root)
    check_size(manifest, size, root)
    meta = read_table(root, list(META_COLUMNS))
    keep = labelled_rows(meta)
    n = int(keep.sum())
    need = size_bytes(n, size)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    free = shutil.disk_usage(tmp).free
    if free < need + DISK_MARGIN:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(
            f"the {size}-px arrays of {root.name} need {need / 2**30:.1f} GiB on this node's "
            f"disk and {tmp.parent} has {free / 2**30:.1f} GiB free: point {CACHE_ENV} at a "
            "larger local disk"
        )
    t0 = time.perf_counter()
    bar = tqdm(
        total=n,
        desc=f"copying the {size}-px arrays to {folder.parent}",
        unit="img",
        disable=not progress,
    )
    positive = np.zeros(n, bool)
    shape = (n, size, size)
    with open(tmp / "images.npy", "wb") as fi, open(tmp / "masks.npy", "wb") as fm:
        for fh in (fi, fm):
            np.lib.format.write_array_header_1_0(
                fh, {"descr": "|u1", "fortran_order": False, "shape": shape}
            )
        row = 0
        batch_rows = max(1, min(128, BATCH_BYTES // (size * size)))
        for images, masks in iter_pixels(root, manifest, size, keep, batch_rows):
            fi.write(images)  # the array's buffer: no bytes copy
            fm.write(masks)
            positive[row : row + len(masks)] = has_foreground(masks)
            row += len(masks)
            bar.update(len(masks))
        for fh in (fi, fm):
            # On disk before anyone maps it: a page written but not yet written back
            # counts as Private_Dirty in every process that maps it (smaps), so without
            # this a trial would seem to hold a copy until the kernel flushed the pages.
            fh.flush()
            os.fsync(fh.fileno())
    bar.close()
    np.save(tmp / "positive.npy", positive)
    pq.write_table(meta.filter(keep), tmp / "meta.parquet")
    record = {
        "dataset": str(root),
        "size": size,
        "rows": n,
        "bytes": need,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (tmp / COMPLETE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


@functools.lru_cache(maxsize=8)
def open_copy(folder: Path) -> Arrays:
    """The copy in ``folder`` as read-only memory maps (one mapping per process: trials
    that a process runs one after another share it)."""
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r")
    positive = np.load(folder / "positive.npy")
    meta = pq.read_table(folder / "meta.parquet").to_pandas()
    return Arrays(images, masks, meta, positive)


def copies_on_node(data: SharedDataset) -> dict[int, dict[str, Any]]:
    """The sizes of ``data`` this node holds, each with its ``complete.json`` record."""
    base = data.folder(0).parent
    out = {}
    for done in sorted(base.glob(f"size-*/{COMPLETE}")):
        record = json.loads(done.read_text())
        out[int(record["size"])] = record
    return out
