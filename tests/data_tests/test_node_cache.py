"""Each node's copy of a dataset (data.node_cache): what a search's trials train on.

Real converted data (the session's ``tiny_dataset``, 32 and 64 px), real files, real
memory maps; the copies go to a folder of this test (``cache_root``).
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from pneumotune.data import node_cache
from pneumotune.data.dataset import DatasetError, load_arrays, split_fold
from pneumotune.data.node_cache import SharedDataset, copies_on_node, open_copy


def test_a_copy_holds_the_labelled_rows_read_only_and_only_the_size_asked(tiny_dataset, tmp_path):
    data = SharedDataset.of(tiny_dataset, cache_root=tmp_path)
    arrays = data[32]
    expected = load_arrays(tiny_dataset, 32)
    assert isinstance(arrays.images, np.memmap) and not arrays.images.flags.writeable
    assert not arrays.masks.flags.writeable
    np.testing.assert_array_equal(arrays.images, expected.images)
    np.testing.assert_array_equal(arrays.masks, expected.masks)
    assert arrays.meta["image_id"].tolist() == expected.meta["image_id"].tolist()
    np.testing.assert_array_equal(arrays.positive, expected.masks.reshape(len(expected), -1).any(1))
    assert list(copies_on_node(data)) == [32]  # nothing of the 64-px size
    assert data[32] is arrays  # one mapping per process
    # A trial receives the handle, not the data: a few hundred bytes whatever the size.
    assert len(pickle.dumps(data)) < 1000


def test_folds_are_views_of_the_shared_map_not_copies(tiny_dataset, tmp_path):
    arrays = SharedDataset.of(tiny_dataset, cache_root=tmp_path)[64]
    train, val = split_fold(arrays, 0)
    assert np.shares_memory(train.images, arrays.images)
    assert np.shares_memory(val.masks, arrays.masks)
    assert len(train) + len(val) == len(arrays)
    assert set(train.meta["fold"]) == set(arrays.meta["fold"]) - {0}
    images, _ = val.take(slice(0, 3))  # a batch is copied when asked for
    np.testing.assert_array_equal(images, arrays.images[val.index[:3]])
    assert images.flags.writeable and not np.shares_memory(images, arrays.images)


def test_the_copy_is_written_once_and_again_when_the_dataset_changes(tiny_dataset, tmp_path):
    data = SharedDataset.of(tiny_dataset, cache_root=tmp_path)
    folder = node_cache.ensure_copy(data, 32)
    written = (folder / node_cache.COMPLETE).stat().st_mtime_ns
    assert node_cache.ensure_copy(data, 32) == folder
    assert (folder / node_cache.COMPLETE).stat().st_mtime_ns == written
    # A dataset converted again is another version: another folder.
    part = tiny_dataset / "part-00000.parquet"
    stat = part.stat()
    try:
        os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        changed = SharedDataset.of(tiny_dataset, cache_root=tmp_path)
        assert changed.version != data.version and changed.folder(32) != folder
        # The handle a running search holds refuses to copy a changed dataset.
        with pytest.raises(DatasetError, match="changed since the search started"):
            node_cache.ensure_copy(data, 64)
    finally:
        os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_disk_too_small_for_the_copy_is_refused_with_the_fix(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(node_cache, "DISK_MARGIN", 1 << 60)  # no disk has this much room
    data = SharedDataset.of(tiny_dataset, cache_root=tmp_path)
    with pytest.raises(DatasetError, match=r"need .* GiB on this node's disk.*PNEUMOTUNE_CACHE"):
        data[64]
    assert not list(tmp_path.rglob("*.npy"))  # nothing half-written left behind


def test_a_node_that_cannot_see_the_dataset_says_where_it_must_be(tmp_path):
    missing = SharedDataset(tmp_path / "not-mounted", "0123", cache_root=tmp_path)
    with pytest.raises(DatasetError, match=r"cannot read the dataset.*every node mounts"):
        missing[32]


def test_reading_a_mapped_set_adds_no_private_memory(tiny_dataset, tmp_path):
    """Pages of the map are the page cache's: touching all of them copies nothing."""
    import shutil

    from pneumotune.memory import process_private_mb

    folder = node_cache.ensure_copy(SharedDataset.of(tiny_dataset, tmp_path), 64)
    big = tmp_path / "big"  # the same files with 64 MiB of images and masks
    shutil.copytree(folder, big)
    rows = 2**25 // (64 * 64)
    for name in ("images", "masks"):
        with open(big / f"{name}.npy", "wb") as fh:
            np.save(fh, np.ones((rows, 64, 64), np.uint8))
            fh.flush()
            os.fsync(fh.fileno())  # as write_copy does: mapped dirty pages count as private
    arrays = open_copy(big)
    before = process_private_mb()
    assert int(arrays.images.sum(dtype=np.int64)) + int(arrays.masks.sum(dtype=np.int64)) > 0
    assert process_private_mb() - before < 8  # MiB, of 64 read
