"""What several model tests train on: tiny arrays (:func:`blobs`) and a tiny
:class:`~pneumotune.model.config.TrainConfig` (:func:`tiny`) that trains on them in
seconds. Imported by test modules and by ``backend_worker`` (in its own process)."""

from __future__ import annotations

import numpy as np

from pneumotune.model.augment import AugmentConfig
from pneumotune.model.config import TrainConfig

SIZE = 32


def blobs(n: int, size: int = SIZE, seed: int = 0, positive: float = 0.4):
    """``n`` noisy images, a ``positive`` share of them with one bright disc and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = rng.normal(90, 15, (n, size, size))
    masks = np.zeros((n, size, size), np.uint8)
    n_pos = round(positive * n)
    for i in range(n_pos):
        cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
        r = rng.uniform(0.08, 0.2) * size
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        masks[i] = disc
        images[i][disc] += 80
    order = rng.permutation(n)
    return images.clip(0, 255).astype(np.uint8)[order], masks[order]


def tiny(**overrides) -> TrainConfig:
    values = {
        "img_size": SIZE,
        "base_filters": 4,
        "depth": 2,
        "epochs": 2,
        "batch_size": 8,
        "lr": 3e-3,
        "augment": AugmentConfig.none(),
    }
    values.update(overrides)
    return TrainConfig(**values)
