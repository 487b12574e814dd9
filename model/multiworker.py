"""Keras 3 + ``tf.distribute.MultiWorkerMirroredStrategy``: what :func:`model.train.fit`
needs to train one model on several workers (one process each, e.g. Ray Train workers).

Keras 3.15's TensorFlow trainer is only tested with single-process strategies; under
``MultiWorkerMirroredStrategy`` (MWMS) its ``fit`` fails in two places, and two more
things need care (found on this stack; keras-team/keras#20585, ray-project/ray#47464):

1. ``fit`` first pulls one distributed batch and reduces the ``(x, y)`` *tuple* with
   ``strategy.reduce`` to build the compiled state symbolically; the collective
   all-reduce cannot reduce a tuple ("Attempt to convert a value (PerReplica ...)").
   :func:`adapt_model` builds that state itself from a local dummy batch inside the
   strategy's scope and turns the per-fit attempt into a no-op on this one model.
2. Every train step's logs are reduced with ``strategy.reduce("MEAN", v, axis=0)``,
   which fails on the scalar losses in multi-worker mode ("Invalid reduction dimension
   0 for input with 0 dimensions"). The adapted ``train_step`` returns each log as a
   vector of one value, so the reduction averages it over the workers and hands Keras a
   scalar again.
3. BatchNormalization's moving statistics are created with no aggregation, so each
   worker keeps its own (updated from its part of every batch): the workers' models
   drift apart in inference mode. :class:`AverageMovingStatistics` all-reduces them to
   their mean at the end of every epoch, before validation and the checkpoint, so that
   every worker validates, and rank 0 saves, the same model.
4. ``model.predict`` under MWMS shards the images over the workers and gathers the
   result, which fails when a worker's share of the last batch is empty. The adapted
   model predicts locally (every worker scores the whole validation set; the numbers
   are identical everywhere after 3.), which costs one validation pass per worker
   instead of a share of one, and needs no collective.

Batches are *global*: ``fit`` builds the same stream of ``cfg.batch_size`` batches as in
one process, and TensorFlow's DATA auto-sharding gives each worker its slice of every
batch (``batch_size / workers`` images per worker). So a config means the same training
(same steps, same learning-rate schedule, same augmentation draws) whatever the number
of workers. The price: every worker builds each whole batch and keeps its slice, so the
augmentation runs once per worker (0.3-2 ms per image on one core at 256-512 px, small
next to a training step).

A worker whose slice of a batch is empty fails in BatchNormalization, which happens when
the last batch of an epoch holds fewer images than there are workers:
:func:`rows_for_even_split` drops those few images (fewer than the number of workers).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pneumotune.compat import keras_internals

__all__ = ["AverageMovingStatistics", "adapt_model", "data_sharded", "rows_for_even_split"]


def rows_for_even_split(
    is_positive: np.ndarray, batch_size: int, workers: int, seed: int
) -> np.ndarray:
    """Row indices to train on so that no worker gets an empty share of a batch.

    With ``n`` rows, the last batch of an epoch holds ``r = n % batch_size`` images;
    when ``0 < r < workers`` some worker would get none of them. Then ``r`` negative
    rows (positives are rare; any rows if there are not enough negatives) are left
    out, drawn with ``seed``. Otherwise every row is kept. Returns sorted int64 indices.

    Raises:
        ValueError: fewer rows than workers, or a batch smaller than the workers.
    """
    n = len(is_positive)
    if batch_size < workers:
        raise ValueError(
            f"batch_size {batch_size} is smaller than the {workers} workers: every worker "
            "needs at least one image of each batch"
        )
    if n < workers:
        raise ValueError(f"{n} training images cannot be split over {workers} workers")
    rest = n % batch_size
    keep = np.ones(n, bool)
    if 0 < rest < workers:
        rng = np.random.default_rng([seed, n, batch_size, workers])
        negatives = np.flatnonzero(~is_positive)
        pool = negatives if len(negatives) >= rest else np.arange(n)
        keep[rng.choice(pool, size=rest, replace=False)] = False
    return np.flatnonzero(keep)


def data_sharded(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Shard ``ds`` by element over the workers (said explicitly: the default AUTO policy
    looks for files to shard, finds none and falls back to DATA with a warning)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def adapt_model(
    model: keras.Model, strategy: tf.distribute.Strategy, img_size: int
) -> list[keras.callbacks.Callback]:
    """Make a compiled ``model`` (created in ``strategy.scope()``) trainable by
    ``model.fit`` under MWMS (points 1, 2 and 4 of the module docstring).

    Returns the callbacks ``fit`` must run before any other at each epoch end (3.).
    Changes this model object only; the saved ``.keras`` file is a plain model.
    """
    dummy = np.zeros((1, img_size, img_size, 1), np.float32)
    with strategy.scope():
        # What fit() would have built from its first batch (no-op for parts already built).
        keras_internals.build_compiled_state(model, (dummy, dummy))
    keras_internals.skip_build_in_fit(model)

    step = model.train_step

    def train_step(data: Any) -> dict[str, tf.Tensor]:
        return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

    model.train_step = train_step
    model.predict = _local_predict(model, img_size)
    return [AverageMovingStatistics(strategy)]


def _local_predict(model: keras.Model, img_size: int):
    """``model.predict`` on this worker alone, for ``(N, S, S, 1)`` float32 numpy input."""
    spec = tf.TensorSpec((None, img_size, img_size, 1), tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def predict(x: np.ndarray, batch_size: int = 32, verbose: Any = 0, **_: Any) -> np.ndarray:
        parts = [forward(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, *x.shape[1:]), np.float32)

    return predict


class AverageMovingStatistics(keras.callbacks.Callback):
    """At each epoch end, set every float non-trainable weight (BatchNormalization's
    moving mean and variance) to its mean over the workers: one all-reduce of them all."""

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        weights = [w for w in self.model.non_trainable_weights if "float" in str(w.dtype)]
        if not weights or self.strategy.num_replicas_in_sync == 1:
            return
        flat = tf.concat([tf.reshape(tf.convert_to_tensor(w.value), [-1]) for w in weights], 0)
        mean = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, flat, axis=None)
        offset = 0
        for w in weights:
            size = int(np.prod(w.shape))
            w.assign(tf.reshape(mean[offset : offset + size], w.shape))
            offset += size
