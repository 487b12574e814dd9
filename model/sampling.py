"""Positive-share sampling: which training images one epoch sees (pure numpy).

About 22% of SIIM images are positive and their regions are small, so a model trained on the
natural mix learns to predict empty masks. The 1st-place solution instead fixed the share of
positive images per epoch and slid it down over training (e.g. 0.8 -> 0.4): many positives
early to learn the shape of a pneumothorax, closer to the natural share late so that the
false-positive rate on empty images is learnt too. :func:`positive_share` is that schedule,
:func:`epoch_indices` draws one epoch's indices for a share.
"""

from __future__ import annotations

import math

import numpy as np


def positive_share(epoch: int, epochs: int, start: float = 0.8, end: float = 0.4) -> float:
    """The share of positive images in ``epoch`` (0-based) of ``epochs``: linear, start -> end.

    Epoch 0 gets ``start`` and epoch ``epochs - 1`` gets ``end``; ``start == end`` is a
    constant share and a one-epoch run gets ``start``. Shares are in ``[0, 1]``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs - 1}] for {epochs} epochs, got {epoch}")
    for name, value in (("start", start), ("end", end)):
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(f"{name} share must be in [0, 1], got {value}")
    if epochs == 1:
        return float(start)
    return float(start + (end - start) * epoch / (epochs - 1))


def _draw(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` items of ``pool``: without replacement while ``k <= len(pool)``, else every item
    ``k // len(pool)`` times plus a without-replacement draw of the remainder, so that repeats
    are spread as evenly as possible (no item appears twice before every item appeared once)."""
    full, rest = divmod(k, len(pool))
    parts = [pool] * full + [rng.choice(pool, size=rest, replace=False)]
    return np.concatenate(parts)


def epoch_indices(
    is_positive: np.ndarray,
    share: float | None,
    n: int | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices into the training set for one epoch, shuffled, as an ``int64`` array ``(n,)``.

    ``is_positive``: ``(N,)`` booleans (or 0/1), one per training image, True when its mask
    is not empty. ``n`` defaults to ``N``. ``share`` is the fraction of the ``n`` draws that
    are positive (``round(share * n)`` of them); each class is drawn without replacement
    while it has enough members and with (evenly spread) repeats when it is smaller than
    needed, e.g. 80 positives out of a class of 10 uses each positive 8 times.

    ``share=None`` keeps the natural share: a plain permutation of all indices (for
    ``n > N``, consecutive permutations; for ``n < N``, the first ``n`` of one). When the
    set has no positives or no negatives the requested share cannot be met and the natural
    permutation is returned instead. All randomness comes from ``rng``.
    """
    flags = np.asarray(is_positive)
    if flags.ndim != 1:
        raise ValueError(f"is_positive must be 1-D (N,), got shape {flags.shape}")
    if flags.dtype != bool:
        if flags.size and not np.isin(flags, (0, 1)).all():
            raise ValueError("is_positive must hold booleans or 0/1 values")
        flags = flags.astype(bool)
    total = len(flags)
    n = total if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer or None, got {n!r}")
    n = int(n)
    if share is not None and not 0.0 <= share <= 1.0:  # also rejects NaN
        raise ValueError(f"share must be in [0, 1] or None, got {share}")
    if n == 0:
        return np.zeros(0, np.int64)
    if total == 0:
        raise ValueError(f"cannot draw {n} samples from an empty training set")

    positives = np.flatnonzero(flags)
    negatives = np.flatnonzero(~flags)
    if share is None or len(positives) == 0 or len(negatives) == 0:
        return _draw(np.arange(total, dtype=np.int64), n, rng)[rng.permutation(n)]

    n_pos = math.floor(share * n + 0.5)  # round half up, not to even: 0.5 * 5 -> 3
    chosen = np.concatenate((_draw(positives, n_pos, rng), _draw(negatives, n - n_pos, rng)))
    return rng.permutation(chosen).astype(np.int64, copy=False)
