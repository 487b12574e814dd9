"""The input pipeline on every backend: each epoch's plan in order, the positive share,
augmentation reproducible whatever the thread count, a resumed run's batches equal to the
full run's; the TensorFlow ``tf.data`` path and the PyDataset serve the same batches."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pneumotune.model.augment import AugmentConfig
from pneumotune.model.pipeline import (
    BatchSource,
    TrainBatches,
    make_batches,
    resolve_pipeline,
    steps_per_epoch,
)
from pneumotune.model.sampling import positive_share
from pneumotune.model.train import epoch_plan
from tests.model_tests.helpers import SIZE, blobs, tiny

pytestmark = pytest.mark.backend  # runs on TensorFlow and, in CI, on JAX too

ON_TF = keras.backend.backend() == "tensorflow"
KINDS = ["pydataset", pytest.param("tf.data", marks=pytest.mark.skipif(not ON_TF, reason="TF"))]


def served(source: BatchSource, kind: str, threads: int = 2) -> list[tuple[np.ndarray, ...]]:
    """Every batch the pipeline ``kind`` gives Keras, as numpy."""
    ds = make_batches(source, kind, threads)
    if isinstance(ds, TrainBatches):
        try:
            return [ds[i] for i in range(len(ds))]
        finally:
            ds.close()
    return [(x.numpy(), y.numpy()) for x, y in ds]


def make_dataset(cfg, images, masks, plan, first_epoch=0, kind="pydataset", threads=2):
    return served(BatchSource(cfg, images, masks, plan, first_epoch), kind, threads)


@pytest.mark.parametrize("kind", KINDS)
def test_identity_pipeline_serves_each_epoch_plan_in_order(kind):
    images, masks = blobs(20)
    cfg = tiny(epochs=3, batch_size=8)
    plan = epoch_plan(cfg, masks.reshape(20, -1).any(axis=1))
    assert plan.shape == (3, 20)
    got = make_dataset(cfg, images, masks, plan, kind=kind)
    steps = steps_per_epoch(20, 8)
    assert steps == 3 and len(got) == 3 * steps
    assert [len(x) for x, _ in got[:steps]] == [8, 8, 4]  # the last batch is smaller
    for e in range(3):
        x = np.concatenate([b[0] for b in got[e * steps : (e + 1) * steps]])
        y = np.concatenate([b[1] for b in got[e * steps : (e + 1) * steps]])
        assert x.dtype == np.float32 and x.shape == (20, SIZE, SIZE, 1)
        np.testing.assert_array_equal(x[..., 0], images[plan[e]].astype(np.float32))
        np.testing.assert_array_equal(y[..., 0], masks[plan[e]].astype(np.float32))


def test_epoch_plan_does_not_depend_on_the_first_epoch():
    _, masks = blobs(30)
    cfg = tiny(epochs=4, pos_share_start=0.8, pos_share_end=0.4)
    flags = masks.reshape(30, -1).any(axis=1)
    np.testing.assert_array_equal(epoch_plan(cfg, flags)[2:], epoch_plan(cfg, flags, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_positive_share_is_honoured_per_epoch(kind):
    images, masks = blobs(40, positive=0.25)
    cfg = tiny(epochs=3, pos_share_start=0.8, pos_share_end=0.4, batch_size=16)
    plan = epoch_plan(cfg, masks.reshape(40, -1).any(axis=1))
    got = make_dataset(cfg, images, masks, plan, kind=kind)
    steps = steps_per_epoch(40, 16)
    for e in range(3):
        y = np.concatenate([b[1] for b in got[e * steps : (e + 1) * steps]])
        n_pos = int(y.reshape(40, -1).any(axis=1).sum())
        assert n_pos == round(positive_share(e, 3, 0.8, 0.4) * 40)  # 32, 24, 16 of 40


@pytest.mark.parametrize("kind", KINDS)
def test_augmented_pipeline_is_reproducible_aligned_and_keeps_shapes(kind):
    images, masks = blobs(24, positive=1.0)
    cfg = tiny(epochs=2, augment=AugmentConfig.tutorial())
    plan = epoch_plan(cfg, np.ones(24, bool))
    first = make_dataset(cfg, images, masks, plan, kind=kind, threads=1)
    second = make_dataset(cfg, images, masks, plan, kind=kind, threads=4)
    assert len(first) == 2 * steps_per_epoch(24, 8)
    changed = 0
    for (x1, y1), (x2, y2), k in zip(first, second, range(len(first)), strict=True):
        np.testing.assert_array_equal(x1, x2)  # per-batch seeds: same whatever thread ran it
        np.testing.assert_array_equal(y1, y2)
        assert x1.shape[1:] == (SIZE, SIZE, 1) and set(np.unique(y1)) <= {0.0, 1.0}
        e, s = divmod(k, steps_per_epoch(24, 8))
        idx = plan[e, s * 8 : s * 8 + 8]
        changed += int(not np.array_equal(x1[..., 0], images[idx]))
        # The disc is bright: wherever the augmented mask is, the augmented image is too.
        assert x1[y1 == 1].mean() > x1[y1 == 0].mean() + 40
    assert changed > 0  # augmentation did something


@pytest.mark.parametrize("kind", KINDS)
def test_resumed_dataset_repeats_the_full_runs_later_batches(kind):
    images, masks = blobs(16)
    cfg = tiny(epochs=3, augment=AugmentConfig.tutorial())
    flags = masks.reshape(16, -1).any(axis=1)
    full = make_dataset(cfg, images, masks, epoch_plan(cfg, flags), kind=kind)
    later = make_dataset(
        cfg, images, masks, epoch_plan(cfg, flags, 1), first_epoch=1, kind=kind, threads=3
    )
    assert len(later) == 2 * steps_per_epoch(16, 8)
    for (x1, y1), (x2, y2) in zip(full[steps_per_epoch(16, 8) :], later, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


@pytest.mark.skipif(not ON_TF, reason="tf.data is TensorFlow's")
def test_tf_data_and_pydataset_serve_the_same_batches():
    images, masks = blobs(24, positive=0.5)
    cfg = tiny(epochs=2, augment=AugmentConfig.tutorial())
    plan = epoch_plan(cfg, masks.reshape(24, -1).any(axis=1))
    a = make_dataset(cfg, images, masks, plan, kind="tf.data")
    b = make_dataset(cfg, images, masks, plan, kind="pydataset", threads=3)
    for (x1, y1), (x2, y2) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_a_batch_jump_is_served_right_and_out_of_range_is_an_index_error():
    images, masks = blobs(16)
    cfg = tiny(epochs=2, augment=AugmentConfig.tutorial())
    source = BatchSource(cfg, images, masks, epoch_plan(cfg, np.ones(16, bool)))
    ds = TrainBatches(source, threads=2)
    try:
        late, early = ds[3], ds[0]  # Keras' TF adapter probes the first batches out of order
        again = [ds[i] for i in range(len(ds))]
        np.testing.assert_array_equal(late[0], again[3][0])
        np.testing.assert_array_equal(early[0], again[0][0])
        with pytest.raises(IndexError):
            ds[len(ds)]
    finally:
        ds.close()


@pytest.mark.parametrize(
    ("kind", "backend", "resolved"),
    [
        ("auto", "tensorflow", "tf.data"),
        ("auto", "jax", "pydataset"),
        ("auto", "torch", "pydataset"),
        ("pydataset", "tensorflow", "pydataset"),
        ("tf.data", "tensorflow", "tf.data"),
    ],
)
def test_resolve_pipeline(kind, backend, resolved):
    assert resolve_pipeline(kind, backend) == resolved


@pytest.mark.parametrize(("kind", "backend"), [("tf.data", "jax"), ("tfdata", "tensorflow")])
def test_resolve_pipeline_refuses(kind, backend):
    with pytest.raises(ValueError):
        resolve_pipeline(kind, backend)
