"""The SIIM post-processing "triplet": probabilities -> 0/1 masks, and its tuning.

A :class:`Triplet` is ``(threshold, min_area, lower)``. For one image:

1. ``candidate = prob > threshold``;
2. if ``candidate`` has fewer than ``min_area * H * W`` pixels, the image is called
   negative and its mask is emptied (the score gives 0 to any pixel on a negative
   image, so small uncertain detections cost more than they bring);
3. otherwise the mask is ``prob > lower`` when ``lower`` is set (the image-level
   decision uses the high threshold and the area, the shape uses the lower
   threshold: the top SIIM solutions' rule), else ``candidate``.

``min_area`` is a fraction of the image area so that one triplet means the same at
every resolution: 0.0006 is ~600 px at 1024x1024 and ~10 px at 128x128. The area is
the pixel count of the whole candidate mask, not of each connected component.

:func:`tune_triplet` grid-searches the triplet for the best mean Kaggle Dice
(:func:`model.metrics.per_image_dice` rules) on validation probabilities.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pneumotune.model import metrics

__all__ = [
    "DEFAULT_LOWERS",
    "DEFAULT_MIN_AREAS",
    "DEFAULT_THRESHOLDS",
    "Triplet",
    "apply_triplet",
    "apply_triplet_batch",
    "tune_triplet",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# 0 and ~100..2000 px at 1024x1024 (the top solutions' range), then larger areas for a
# weak model whose noise covers more, and 0.999: "call every image negative". With it the
# tuned triplet never scores below an all-empty prediction on the tuning set.
DEFAULT_MIN_AREAS: tuple[float, ...] = (
    0.0, 0.0001, 0.0003, 0.0006, 0.001, 0.002, 0.005, 0.01, 0.02, 0.999,
)  # fmt: skip
DEFAULT_LOWERS: tuple[float | None, ...] = (None, 0.2, 0.3, 0.4)


@dataclass(frozen=True)
class Triplet:
    """Binarisation rule: pixel ``threshold``, ``min_area`` (fraction of the image
    area) below which the mask is emptied, and an optional ``lower`` threshold for the
    kept mask (``lower <= threshold``)."""

    threshold: float = 0.5
    min_area: float = 0.0
    lower: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold < 1.0):
            raise ValueError(f"threshold must be in [0, 1); got {self.threshold!r}")
        if not (math.isfinite(self.min_area) and 0.0 <= self.min_area < 1.0):
            raise ValueError(
                f"min_area is a fraction of the image area in [0, 1); got {self.min_area!r} "
                "(0.0006 is ~600 px at 1024x1024)"
            )
        if self.lower is not None and not (
            math.isfinite(self.lower) and 0.0 <= self.lower <= self.threshold
        ):
            raise ValueError(
                f"lower must be None or in [0, threshold={self.threshold}]; got {self.lower!r}"
            )


def _as_images(probs: np.ndarray, what: str) -> np.ndarray:
    """``(N, H, W)`` or ``(N, H, W, 1)`` -> ``(N, H, W)``."""
    probs = np.asarray(probs)
    if probs.ndim == 4 and probs.shape[-1] == 1:
        probs = probs[..., 0]
    if probs.ndim != 3:
        raise ValueError(f"{what} has shape {probs.shape}: expected (N, H, W) or (N, H, W, 1)")
    return probs


def apply_triplet_batch(probs: np.ndarray, t: Triplet) -> np.ndarray:
    """Apply ``t`` to each image of ``probs`` ``(N, H, W)`` or ``(N, H, W, 1)`` float.

    Returns ``uint8`` 0/1 masks of shape ``(N, H, W)``.
    """
    probs = _as_images(probs, "probs")
    candidate = probs > t.threshold
    h, w = probs.shape[1:]
    keep = np.count_nonzero(candidate, axis=(1, 2)) >= t.min_area * h * w
    shape = candidate if t.lower is None else probs > t.lower
    return (shape & keep[:, None, None]).astype(np.uint8)


def apply_triplet(prob: np.ndarray, t: Triplet) -> np.ndarray:
    """Apply ``t`` to one image: ``prob`` ``(H, W)`` float -> ``uint8`` 0/1 ``(H, W)``."""
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"prob has shape {prob.shape}: expected one (H, W) image")
    return apply_triplet_batch(prob[None], t)[0]


def tune_triplet(
    probs: np.ndarray,
    truths: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_areas: Sequence[float] = DEFAULT_MIN_AREAS,
    lowers: Sequence[float | None] = DEFAULT_LOWERS,
) -> tuple[Triplet, float]:
    """Grid-search the triplet with the best mean Kaggle Dice on ``(probs, truths)``.

    Args:
        probs: ``(N, H, W)`` or ``(N, H, W, 1)`` probabilities.
        truths: same shape, 0/1 (foreground where ``> 0.5``).
        thresholds, min_areas, lowers: the grid; combinations with
            ``lower > threshold`` are skipped.

    Returns:
        ``(best triplet, its score)``; the score equals
        ``metrics.kaggle_dice(truths, apply_triplet_batch(probs, best))``. Ties go to the
        first combination in grid order (thresholds, then min_areas, then lowers).
    """
    probs = _as_images(probs, "probs")
    truths = _as_images(truths, "truths")
    if probs.shape != truths.shape:
        raise ValueError(f"probs {probs.shape} and truths {truths.shape} differ in shape")
    if not (len(thresholds) and len(min_areas) and len(lowers)):
        raise ValueError("thresholds, min_areas and lowers must each hold at least one value")
    n, h, w = probs.shape
    flat = probs.reshape(n, -1)
    truth = truths.reshape(n, -1) > 0.5
    truth_size = np.count_nonzero(truth, axis=1)

    # Every mask the grid can produce is "prob > u" for some u in thresholds | lowers,
    # so one pass per distinct cut gives each image's (size, intersection); every
    # triplet is then a cheap combination of those per-image counts.
    cuts = sorted({float(x) for x in thresholds} | {float(x) for x in lowers if x is not None})
    size: dict[float, np.ndarray] = {}
    dice: dict[float, np.ndarray] = {}
    for u in cuts:
        pred = flat > u
        size[u] = np.count_nonzero(pred, axis=1)
        inter = np.count_nonzero(pred & truth, axis=1)
        dice[u] = metrics.dice_from_counts(inter, size[u] + truth_size)
    empty_dice = (truth_size == 0).astype(np.float64)  # an emptied mask scores 1 iff truth is empty

    best: tuple[Triplet, float] | None = None
    for thr, area, low in itertools.product(thresholds, min_areas, lowers):
        if low is not None and low > thr:
            continue
        t = Triplet(float(thr), float(area), None if low is None else float(low))
        keep = size[t.threshold] >= t.min_area * h * w
        shape_dice = dice[t.threshold if t.lower is None else t.lower]
        score = float(np.where(keep, shape_dice, empty_dice).mean())
        if best is None or score > best[1]:
            best = (t, score)
    if best is None:
        raise ValueError("every (threshold, lower) pair in the grid has lower > threshold")
    return best
