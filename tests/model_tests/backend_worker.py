"""Run one step of a cross-backend check in its own process (the backend is per process):

KERAS_BACKEND=jax python -m tests.model_tests.backend_worker train OUT.json
KERAS_BACKEND=tensorflow python -m tests.model_tests.backend_worker save MODEL.keras X.npy OUT.npy
KERAS_BACKEND=jax python -m tests.model_tests.backend_worker load MODEL.keras X.npy OUT.npy
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def train(out: Path) -> None:
    """A small real training run on blobs: its validation IoU per epoch, and the backend."""
    import keras

    from pneumotune.model.train import fit
    from tests.model_tests.helpers import blobs, tiny

    images, masks = blobs(96, seed=0)
    val_images, val_masks = blobs(32, seed=1)
    cfg = tiny(epochs=6, base_filters=8, batch_size=8, lr=3e-3, pos_share_start=0.8,
               pos_share_end=0.5)  # fmt: skip
    result = fit(cfg, (images, masks), (val_images, val_masks))
    out.write_text(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                "val_iou": [h["val_iou"] for h in result.history],
                "loss": [h["loss"] for h in result.history],
            }
        )
    )


def save(model_path: Path, x_path: Path, out: Path) -> None:
    """Train a tiny model two epochs, save it as .keras, and write its predictions on x."""
    from pneumotune.model.train import fit
    from tests.model_tests.helpers import blobs, tiny

    images, masks = blobs(32, seed=2)
    result = fit(tiny(epochs=2), (images, masks), (images[:8], masks[:8]))
    result.model.save(model_path)
    x = np.load(x_path)
    np.save(out, result.model.predict(x, verbose=0))


def load(model_path: Path, x_path: Path, out: Path) -> None:
    """Load a .keras file (saved on another backend) and write its predictions on x."""
    import keras

    from pneumotune.model.export import load_model  # registers pneumotune's classes  # noqa: F401

    model = keras.saving.load_model(model_path, compile=True)
    np.save(out, model.predict(np.load(x_path), verbose=0))


if __name__ == "__main__":
    step, *paths = sys.argv[1:]
    {"train": train, "save": save, "load": load}[step](*map(Path, paths))
