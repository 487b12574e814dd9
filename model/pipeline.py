"""The training input pipeline: every batch of a run, a pure function of its number.

A run's batches are numbered globally from epoch 0: batch ``k`` is step ``k % steps`` of
epoch ``k // steps``, its images are that slice of the epoch's plan
(:func:`pneumotune.model.train.epoch_plan`) and, with augmentation, it is augmented by an
albumentations pipeline re-seeded with ``worker_seed(cfg.seed, k)``. So a batch does not
depend on which thread made it, how many threads there are, nor where the run resumed:
a run resumed at epoch ``e`` sees epoch ``e``'s batches.

Two ways to feed Keras the same batches:

* :class:`TrainBatches`, a ``keras.utils.PyDataset`` for every backend (TensorFlow, JAX,
  PyTorch): ``threads`` worker threads make the next batches ahead of the training step
  (OpenCV and numpy's fancy indexing release the GIL);
* :func:`tf_dataset`, TensorFlow only: the same batches from ``tf.data``
  (``tf.numpy_function`` under a parallel ``map``).

Neither copies the training set: a batch's rows are read from the (shared) arrays when
the batch is made.

:func:`make_batches` picks one: ``"auto"`` is ``tf.data`` on TensorFlow (measured faster
there, bench/train.py) and the PyDataset elsewhere.
"""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import keras
import numpy as np

from pneumotune.model.augment import augment_batch, build_augment, worker_seed
from pneumotune.model.config import TrainConfig

PIPELINES = ("auto", "tf.data", "pydataset")


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: every training image once, the last batch smaller."""
    return max(1, -(-n_train // batch_size))


def default_threads() -> int:
    """Input threads: the CPUs this process may use (a trial's share), at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS")  # Ray sets it to a trial's CPU share
    if limit and limit.isdigit():
        cpus = min(cpus, int(limit))
    return max(1, min(8, cpus))


class BatchSource:
    """Batch ``k`` of a run as uint8 ``(images (B, S, S), masks (B, S, S))``, thread-safe.

    ``plan``: int64 ``(E, N)``, the training indices of epochs ``first_epoch ..
    first_epoch + E - 1``; ``k`` counts from epoch 0 (``first_epoch * steps`` is the
    first batch this source has).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        images: np.ndarray,
        masks: np.ndarray,
        plan: np.ndarray,
        first_epoch: int = 0,
    ) -> None:
        self.cfg, self.images, self.masks = cfg, images, masks
        self.n_epochs, self.n = plan.shape
        self.flat_plan = plan.reshape(-1)
        self.steps = steps_per_epoch(self.n, cfg.batch_size)
        self.first = first_epoch * self.steps
        self.stop = (first_epoch + self.n_epochs) * self.steps
        self.identity = cfg.augment.is_identity()
        self._local = threading.local()

    def __len__(self) -> int:
        return self.stop - self.first

    def indices(self, k: int) -> np.ndarray:
        if not self.first <= k < self.stop:
            raise IndexError(f"batch {k} is outside {self.first}..{self.stop - 1}")
        epoch, step = divmod(k - self.first, self.steps)
        start = epoch * self.n + step * self.cfg.batch_size
        return self.flat_plan[start : min(start + self.cfg.batch_size, (epoch + 1) * self.n)]

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices(k)
        images, masks = self.images[idx], self.masks[idx]
        if self.identity:
            return images, masks
        # One albumentations pipeline per thread (a pipeline is stateful and not
        # thread-safe), re-seeded per batch: reproducible whatever thread runs it.
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._local.pipeline = build_augment(
                self.cfg.augment, self.cfg.img_size, seed=0
            )
        seed = worker_seed(self.cfg.seed, k)
        pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return augment_batch(pipeline, images, masks)


def as_model_input(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(B, S, S)`` pairs -> float32 ``(B, S, S, 1)`` pixel values 0..255 and 0/1."""
    return images.astype(np.float32)[..., None], masks.astype(np.float32)[..., None]


class TrainBatches(keras.utils.PyDataset):
    """Every batch of the run's remaining epochs, in order, for ``model.fit`` on any backend.

    Its length is all the remaining epochs' batches: with ``steps_per_epoch`` given, Keras
    keeps one iterator across epochs, so epoch ``e`` reads batches ``e * steps ..``.
    ``threads`` worker threads compute up to ``ahead`` batches past the one asked for
    (Keras' own workers restart their queue at every epoch, from batch 0). Random access
    (Keras' TensorFlow adapter reads the first batches to learn their shapes) computes the
    batch in the caller's thread.
    """

    def __init__(self, source: BatchSource, threads: int | None = None, ahead: int = 0) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.source = source
        self.threads = threads or default_threads()
        self.ahead = ahead or 2 * self.threads
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = self.source.first + index
        if self.threads <= 1:
            return self._make(k)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pneumotune-input")
            future = self._pending.pop(k, None)
            # The batches after this one, so that they are ready when asked for.
            for ahead in range(k + 1, min(k + 1 + self.ahead, self.source.stop)):
                if ahead not in self._pending:
                    self._pending[ahead] = self._pool.submit(self._make, ahead)
            # Futures left behind by a jump (a shape probe, a restart) are dropped.
            for stale in [j for j in self._pending if j <= k or j > k + self.ahead]:
                self._pending.pop(stale).cancel()
        return future.result() if future is not None else self._make(k)

    def _make(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return as_model_input(*self.source.batch(k))

    def close(self) -> None:
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


def tf_dataset(source: BatchSource) -> Any:
    """The batches of ``source`` as a prefetched ``tf.data.Dataset`` (TensorFlow only)."""
    import tensorflow as tf

    size = source.cfg.img_size
    batches = tf.data.Dataset.range(source.first, source.stop)

    def make(k):
        # The batch's rows are copied out of the (shared, possibly memory-mapped) arrays
        # here: no tensor of the whole set, so the trial's memory does not grow with it.
        x, y = tf.numpy_function(
            lambda i: source.batch(int(i)), [k], (tf.uint8, tf.uint8), stateful=False
        )
        x.set_shape((None, size, size))
        y.set_shape((None, size, size))
        return x, y

    ds = batches.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def to_float(x, y):
        return tf.cast(x, tf.float32)[..., None], tf.cast(y, tf.float32)[..., None]

    return ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def resolve_pipeline(kind: str, backend: str) -> str:
    """``"auto"`` -> ``"tf.data"`` on TensorFlow, ``"pydataset"`` on JAX and PyTorch."""
    if kind not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {kind!r}")
    if kind == "auto":
        return "tf.data" if backend == "tensorflow" else "pydataset"
    if kind == "tf.data" and backend != "tensorflow":
        raise ValueError(f"pipeline 'tf.data' needs the TensorFlow backend, not {backend}")
    return kind


def make_batches(source: BatchSource, kind: str = "auto", threads: int | None = None) -> Any:
    """What ``model.fit`` trains on: :func:`tf_dataset` or :class:`TrainBatches`."""
    if resolve_pipeline(kind, keras.backend.backend()) == "tf.data":
        return tf_dataset(source)
    return TrainBatches(source, threads)
