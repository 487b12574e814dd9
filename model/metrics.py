"""Segmentation scores: pure numpy references, and Keras metrics that agree with them.

Shapes. Masks come as a batch ``(B, H, W)`` or ``(B, H, W, 1)``, or as one image
``(H, W)`` (a batch of one). A 3-D array is always a batch: write a single
channel-last image as ``(1, H, W, 1)`` or ``(H, W)``.

Binarisation. Predictions are probabilities and count as foreground when
``> threshold`` (strictly, as in :mod:`model.postprocess`); truths are 0/1 and count
as foreground when ``> 0.5``, so ``uint8`` 0/1, ``bool`` and float masks all work.

Empty masks. ``iou`` and ``dice`` pool the pixels of the whole batch; when truth and
prediction are both empty the ratio is 0/0 and the score is ``empty_score`` (1.0 by
default: nothing to find, nothing found). ``kaggle_dice`` scores each image on its
own (the SIIM-ACR rule): empty truth and empty prediction score 1, empty truth with
any predicted pixel scores 0, non-empty truth with an empty prediction scores 0.
``positive_iou`` pools only images whose truth is non-empty, so the ~78% of
negative images cannot hide whether a model finds pneumothoraces at all.

The Keras metrics (:class:`IoU`, :class:`Dice`, :class:`KaggleDice`,
:class:`PositiveIoU`) accumulate the same sums over ``update_state`` calls, so after
any number of batches their ``result()`` equals the numpy function of the
concatenated batches.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

__all__ = [
    "Dice",
    "IoU",
    "KaggleDice",
    "PositiveIoU",
    "dice",
    "dice_from_counts",
    "dice_from_pooled_counts",
    "image_counts",
    "iou",
    "iou_from_counts",
    "kaggle_dice",
    "per_image_dice",
    "positive_iou",
    "positive_iou_from_counts",
]


# --------------------------------------------------------------------------- numpy core


def _as_batch(x: np.ndarray, what: str) -> np.ndarray:
    """``(H, W)``, ``(B, H, W)`` or ``(B, H, W, 1)`` -> ``(B, H * W)``."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 4:
        if x.shape[-1] != 1:
            raise ValueError(
                f"{what} has shape {x.shape}: a 4-D mask must be (B, H, W, 1) with one channel"
            )
        x = x[..., 0]
    elif x.ndim != 3:
        raise ValueError(f"{what} has shape {x.shape}: expected (H, W), (B, H, W) or (B, H, W, 1)")
    if x.shape[0] == 0:
        raise ValueError(f"{what} holds no images (the batch is empty)")
    return x.reshape(x.shape[0], -1)


def image_counts(
    y_true: np.ndarray, y_pred: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image ``(intersection, truth size, prediction size)`` as int64 arrays of shape (B,).

    Every score here is a function of these counts, so a set too large to hold as
    probabilities is scored chunk by chunk: concatenate the chunks' counts, then score
    with the ``*_from_counts`` functions.
    """
    t = _as_batch(y_true, "y_true") > 0.5
    p = _as_batch(y_pred, "y_pred") > threshold
    if t.shape != p.shape:
        raise ValueError(
            f"y_true and y_pred disagree: {np.shape(y_true)} vs {np.shape(y_pred)} "
            "(expected the same number of images and pixels)"
        )
    inter = np.count_nonzero(t & p, axis=1)
    return inter, np.count_nonzero(t, axis=1), np.count_nonzero(p, axis=1)


def iou(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    threshold: float = 0.5,
    empty_score: float = 1.0,
) -> float:
    """Intersection over union with the pixels of the whole batch pooled.

    ``|T & P| / |T | P|``; ``empty_score`` when truth and prediction are both empty.
    """
    return iou_from_counts(*image_counts(y_true, y_pred, threshold), empty_score)


def dice(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    threshold: float = 0.5,
    empty_score: float = 1.0,
) -> float:
    """Dice coefficient with the pixels of the whole batch pooled.

    ``2 |T & P| / (|T| + |P|)``; ``empty_score`` when truth and prediction are both empty.
    """
    return dice_from_pooled_counts(*image_counts(y_true, y_pred, threshold), empty_score)


def iou_from_counts(
    inter: np.ndarray, t: np.ndarray, p: np.ndarray, empty_score: float = 1.0
) -> float:
    """:func:`iou` from per-image counts."""
    union = int(t.sum() + p.sum() - inter.sum())
    return float(empty_score) if union == 0 else float(inter.sum() / union)


def dice_from_pooled_counts(
    inter: np.ndarray, t: np.ndarray, p: np.ndarray, empty_score: float = 1.0
) -> float:
    """:func:`dice` from per-image counts."""
    total = int(t.sum() + p.sum())
    return float(empty_score) if total == 0 else float(2 * inter.sum() / total)


def per_image_dice(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Dice of each image, shape ``(B,)`` float64, with the SIIM empty rules.

    Both empty -> 1. Exactly one empty -> 0 (falls out of ``2|T&P| / (|T|+|P|)``).
    """
    inter, t, p = image_counts(y_true, y_pred, threshold)
    return dice_from_counts(inter, t + p)


def dice_from_counts(inter: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Per-image Dice from intersection and ``|T| + |P|`` counts (arrays of equal shape).

    ``total == 0`` only when both masks are empty: that image scores 1.
    """
    safe = np.maximum(total, 1)
    return np.where(total == 0, 1.0, 2.0 * inter / safe)


def kaggle_dice(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = 0.5) -> float:
    """The SIIM-ACR leaderboard score: :func:`per_image_dice` averaged over images."""
    return float(per_image_dice(y_true, y_pred, threshold).mean())


def positive_iou(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    threshold: float = 0.5,
    empty_score: float = math.nan,
) -> float:
    """IoU pooled over the images whose truth is non-empty; predictions on the others
    are ignored.

    With no positive image the score is undefined and ``empty_score`` (NaN by default,
    so that it cannot be mistaken for a real score) is returned.
    """
    return positive_iou_from_counts(*image_counts(y_true, y_pred, threshold), empty_score)


def positive_iou_from_counts(
    inter: np.ndarray, t: np.ndarray, p: np.ndarray, empty_score: float = math.nan
) -> float:
    """:func:`positive_iou` from per-image counts."""
    pos = t > 0
    if not pos.any():
        return float(empty_score)
    return float(inter[pos].sum() / (t[pos] + p[pos] - inter[pos]).sum())


# --------------------------------------------------------------------------- Keras wrappers


def _flat_counts(y_true, y_pred, threshold: float):
    """Per-image counts as float32 tensors of shape (B,) (exact: < 2**24 pixels per image)."""
    batch = ops.shape(y_pred)[0]
    t = ops.reshape(ops.cast(y_true, "float32"), (batch, -1))
    p = ops.reshape(ops.cast(y_pred, "float32"), (batch, -1))
    t = ops.cast(t > 0.5, "float32")
    p = ops.cast(p > threshold, "float32")
    return ops.sum(t * p, axis=1), ops.sum(t, axis=1), ops.sum(p, axis=1)


class _ThresholdMetric(keras.metrics.Metric):
    """Shared constructor / config for the mask metrics below.

    Accumulators are float64: a validation set of 1024x1024 images sums billions of
    pixels, past float32's exact integer range (2**24).
    """

    def __init__(self, threshold: float = 0.5, name: str | None = None, dtype=None) -> None:
        super().__init__(name=name, dtype=dtype)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold!r}")
        self.threshold = float(threshold)

    def _sum_var(self, name: str):
        return self.add_variable(shape=(), initializer="zeros", dtype="float64", name=name)

    @staticmethod
    def _no_weights(sample_weight) -> None:
        if sample_weight is not None:
            raise ValueError(
                "pneumotune mask metrics do not support sample_weight "
                "(every image counts once); got a sample_weight"
            )

    def get_config(self) -> dict:
        return {**super().get_config(), "threshold": self.threshold}


class _PooledRatio(_ThresholdMetric):
    """``scale * intersection / denominator``, both summed over every image seen since
    reset; ``empty_score`` while the denominator is 0. :meth:`_sums` says what each image
    adds to the two sums; ``denominator_name`` names the second (a variable of the saved
    metric, created second, so files saved before this base class load the same)."""

    scale = 1.0
    denominator_name = "union"
    # The subclasses' constructors differ only in these defaults (an argument of None
    # picks them), so each subclass sets them instead of repeating the constructor.
    default_name: str
    default_empty_score = 1.0

    def __init__(
        self,
        threshold: float = 0.5,
        empty_score: float | None = None,
        name: str | None = None,
        dtype=None,
    ) -> None:
        name = self.default_name if name is None else name
        super().__init__(threshold=threshold, name=name, dtype=dtype)
        self.empty_score = float(self.default_empty_score if empty_score is None else empty_score)
        self.intersection = self._sum_var("intersection")
        self._denominator = self._sum_var(self.denominator_name)

    def _sums(self, inter, t, p):
        """Per-image ``(numerator, denominator)`` from the per-image counts."""
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        self._no_weights(sample_weight)
        numerator, denominator = self._sums(*_flat_counts(y_true, y_pred, self.threshold))
        self.intersection.assign_add(ops.cast(ops.sum(numerator), "float64"))
        self._denominator.assign_add(ops.cast(ops.sum(denominator), "float64"))

    def result(self):
        score = ops.where(
            self._denominator > 0,
            self.scale * self.intersection / ops.maximum(self._denominator, 1.0),
            ops.cast(self.empty_score, "float64"),
        )
        return ops.cast(score, self.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "empty_score": self.empty_score}


@keras.saving.register_keras_serializable(package="pneumotune")
class IoU(_PooledRatio):
    """Keras version of :func:`iou`: pixels pooled over every image seen since reset.

    Inputs ``(B, H, W, 1)`` (or any shape with the batch first); ``empty_score`` (1.0 by
    default) when nothing was found and nothing was there.
    """

    default_name = "iou"

    def _sums(self, inter, t, p):
        return inter, t + p - inter


@keras.saving.register_keras_serializable(package="pneumotune")
class Dice(_PooledRatio):
    """Keras version of :func:`dice`: pixels pooled over every image seen since reset."""

    scale = 2.0
    denominator_name = "total"
    default_name = "dice"

    def _sums(self, inter, t, p):
        return inter, t + p


@keras.saving.register_keras_serializable(package="pneumotune")
class KaggleDice(_ThresholdMetric):
    """Keras version of :func:`kaggle_dice`: the mean of per-image Dice over every image
    seen since reset (empty/empty = 1, exactly one empty = 0). 0.0 before any update."""

    def __init__(self, threshold: float = 0.5, name: str = "kaggle_dice", dtype=None) -> None:
        super().__init__(threshold=threshold, name=name, dtype=dtype)
        self.score_sum = self._sum_var("score_sum")
        self.count = self._sum_var("count")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        self._no_weights(sample_weight)
        inter, t, p = _flat_counts(y_true, y_pred, self.threshold)
        total = t + p
        scores = ops.where(total > 0, 2.0 * inter / ops.maximum(total, 1.0), 1.0)
        self.score_sum.assign_add(ops.cast(ops.sum(scores), "float64"))
        self.count.assign_add(ops.cast(ops.sum(ops.ones_like(scores)), "float64"))

    def result(self):
        return ops.cast(self.score_sum / ops.maximum(self.count, 1.0), self.dtype)


@keras.saving.register_keras_serializable(package="pneumotune")
class PositiveIoU(_PooledRatio):
    """Keras version of :func:`positive_iou`: IoU pooled over images with a non-empty
    truth. Before any positive image it returns ``empty_score`` (NaN by default)."""

    default_name = "positive_iou"
    default_empty_score = math.nan

    def _sums(self, inter, t, p):
        pos = ops.cast(t > 0, "float32")
        return inter * pos, (t + p - inter) * pos
