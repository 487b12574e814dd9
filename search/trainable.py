"""The Tune trainable: one trial = one `model.train.fit`, one report per epoch.

Thin on purpose: the arrays arrive through the object store
(``tune.with_parameters``), the flat config becomes a ``TrainConfig``, every epoch
reports its metrics with a checkpoint, and a restarted trial resumes from
``tune.get_checkpoint()`` — model, optimizer state (so the LR schedule goes on from
the same step) and epoch count.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pneumotune.data.dataset import Arrays, split_fold
from pneumotune.search.checkpoint import MODEL_FILE, unpack_checkpoint, write_checkpoint


def train_trial(config: dict[str, Any], data: dict[int, Arrays]) -> None:
    """Tune function trainable. ``data`` maps img_size -> the labelled arrays at that size."""
    from ray import tune

    from pneumotune.model.devices import limit_tf_threads
    from pneumotune.model.train import fit
    from pneumotune.search.space import train_config

    limit_tf_threads(float(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = train_config(config)
    train, val = split_fold(data[cfg.img_size], cfg.val_fold)

    initial_epoch, resume_from, scratch = 0, None, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        scratch = Path(tempfile.mkdtemp(prefix="pneumotune-resume-"))
        initial_epoch = unpack_checkpoint(checkpoint, scratch)
        resume_from = scratch / MODEL_FILE

    def on_epoch_end(epoch: int, metrics: dict[str, float], model: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="pneumotune-ckpt-") as d:
            write_checkpoint(model, Path(d), epoch)
            tune.report({**metrics, "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        fit(
            cfg,
            (train.images, train.masks),
            (val.images, val.masks),
            on_epoch_end=on_epoch_end,
            initial_epoch=initial_epoch,
            resume_from=resume_from,
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
