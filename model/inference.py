"""Inference and evaluation of a Keras model on arrays: probabilities
(:func:`predict_probs`), the validation metrics a trial reports every epoch
(:func:`validation_metrics`), and its predictions on a few images of a set, positives and
negatives, that a report shows (:func:`sample_predictions`).

Every ``model.predict`` call takes whole batches of at most :data:`PREDICT_PIXELS` pixels,
so a set of any size, held in memory or memory-mapped, is scored a chunk at a time.
Keras 3 only (``keras.ops``): TensorFlow, JAX or PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from pneumotune.data.dataset import Rows
from pneumotune.model import metrics as M

# Pixels per model.predict call (128 images at 128 px, 16 at 1024 px): bounds the float32
# copy of the input and the probabilities whatever the size of the set or of its images.
PREDICT_PIXELS = 128 * 128 * 128


def predict_chunk(image_pixels: int, batch_size: int) -> int:
    """Images per predict call: whole batches within :data:`PREDICT_PIXELS` (at least one)."""
    return batch_size * max(1, PREDICT_PIXELS // max(1, image_pixels) // batch_size)


def predict_probs(model: keras.Model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Probabilities ``float32 (N, S, S)`` for ``uint8 (N, S, S)`` images.

    Every batch the model sees is whole (the last one padded with blank images, whose
    outputs are dropped): a smaller last batch would trace the predict step a second time,
    a second or two of every trial's first validation pass. Inference mode scores each
    image on its own, so the padding changes no probability.
    """
    out = np.empty(images.shape, np.float32)
    chunk_rows = predict_chunk(int(np.prod(images.shape[1:])), batch_size)
    for start in range(0, len(images), chunk_rows):
        chunk = images[start : start + chunk_rows]
        n = len(chunk)
        x = np.zeros((-(-n // batch_size) * batch_size, *chunk.shape[1:], 1), np.float32)
        x[:n, ..., 0] = chunk
        out[start : start + n] = model.predict(x, batch_size=batch_size, verbose=0)[:n, ..., 0]
    return out


def validation_metrics(
    model: keras.Model,
    images: np.ndarray,
    masks: np.ndarray,
    threshold: float,
    batch_size: int = 32,
    index: np.ndarray | None = None,
) -> dict[str, float]:
    """The ``val_*`` metrics of :data:`pneumotune.model.train.METRIC_KEYS` for a
    compiled model.

    ``index``: the rows of ``images`` and ``masks`` to score (all when ``None``), read a
    chunk at a time, so that a trial scoring a fold of shared (memory-mapped) arrays holds
    one chunk of it. Each chunk is predicted, its loss computed and its probabilities
    reduced to per-image counts at ``threshold`` (:func:`model.metrics.image_counts`);
    the scores of :mod:`model.metrics` computed from the counts of the whole set equal
    their value on the probabilities at ``threshold``. ``val_loss`` is the compiled loss
    averaged over images (what ``model.evaluate`` would report). ``val_positive_iou`` is
    0.0, not NaN, when the set has no positive image: a search sorts on it and NaN would
    poison the ranking.
    """
    index = np.arange(len(images)) if index is None else index
    chunk_rows = predict_chunk(int(np.prod(images.shape[1:])), batch_size)
    losses, counts = [], []
    for start in range(0, len(index), chunk_rows):
        rows = index[start : start + chunk_rows]
        probs = predict_probs(model, images[rows], batch_size)
        truth = masks[rows]
        counts.append(M.image_counts(truth, probs, threshold))
        for b in range(0, len(probs), batch_size):
            t = truth[b : b + batch_size, ..., None].astype(np.float32)
            p = probs[b : b + batch_size, ..., None]
            losses.append(keras.ops.convert_to_numpy(model.loss.call(t, p)))
    inter, t, p = (np.concatenate(c) for c in zip(*counts, strict=True))
    pos_iou = M.positive_iou_from_counts(inter, t, p)
    return {
        "val_loss": float(np.mean(np.concatenate(losses))),
        "val_iou": M.iou_from_counts(inter, t, p),
        "val_dice": M.dice_from_pooled_counts(inter, t, p),
        "val_kaggle_dice": float(M.dice_from_counts(inter, t + p).mean()),
        "val_positive_iou": 0.0 if math.isnan(pos_iou) else pos_iou,
    }


@dataclass(frozen=True)
class SamplePredictions:
    """A model's predictions on some rows of a set (:func:`sample_predictions`), one entry
    per row in every field, positives first."""

    rows: list[int]  # positions in the set
    images: np.ndarray  # uint8 (k, S, S)
    truths: np.ndarray  # 0/1 (k, S, S)
    predictions: np.ndarray  # 0/1 (k, S, S): probability > threshold
    dice: np.ndarray  # float64 (k,): each image's Dice (model.metrics.per_image_dice)
    positive: np.ndarray  # bool (k,): the truth is not empty


def choose_rows(rng: np.random.Generator, positive: np.ndarray, k: int) -> list[int]:
    """``k`` rows: ceil(k/2) positive and the rest negative where possible, positives first."""
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    k = min(k, len(positive))
    n_pos = min(len(pos), max(math.ceil(k / 2), k - len(neg)))
    n_neg = k - n_pos
    take_pos = sorted(int(i) for i in rng.choice(pos, n_pos, replace=False)) if n_pos else []
    take_neg = sorted(int(i) for i in rng.choice(neg, n_neg, replace=False)) if n_neg else []
    return take_pos + take_neg


def sample_predictions(
    model: keras.Model, rows: Rows, threshold: float, seed: int, k: int
) -> SamplePredictions:
    """The model's predictions on ``k`` rows of a set drawn with ``seed``
    (:func:`choose_rows`: half of them positive, rounded up, where the set has that many),
    binarised at ``threshold``; only those rows are read."""
    positive = rows.positive
    chosen = choose_rows(np.random.default_rng(seed), positive, k)
    images, truths = rows.take(chosen)
    probs = predict_probs(model, images)
    return SamplePredictions(
        rows=chosen,
        images=images,
        truths=truths,
        predictions=(probs > threshold).astype(np.uint8),
        dice=M.per_image_dice(truths, probs, threshold),
        positive=positive[chosen],
    )
