"""The Tune trainable: one trial = one `model.train.fit`, one report per epoch.

Thin on purpose (STYLE.md): the arrays arrive through the object store
(``tune.with_parameters``), the flat config becomes a ``TrainConfig``, every epoch
reports its metrics with a checkpoint, and a restarted trial resumes from
``tune.get_checkpoint()`` — model, optimizer state (so the LR schedule goes on from
the same step) and epoch count.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pneumotune.data.dataset import Arrays

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"


def split_fold(arrays: Arrays, val_fold: int) -> tuple[Arrays, Arrays]:
    """Training rows (every other fold) and validation rows (``val_fold``)."""
    folds = arrays.meta["fold"].to_numpy()
    is_val = folds == val_fold
    if not is_val.any() or is_val.all():
        side = "no validation" if not is_val.any() else "no training"
        raise ValueError(
            f"val_fold {val_fold} leaves {side} image (folds of the labelled images: "
            f"{sorted(set(folds.tolist()))})"
        )
    return arrays.subset((folds != val_fold).nonzero()[0]), arrays.subset(
        (folds == val_fold).nonzero()[0]
    )


def write_checkpoint(model: Any, directory: Path, epoch: int) -> None:
    """A trial's checkpoint, one-worker or multi-worker: the model and the epoch it ended."""
    model.save(directory / MODEL_FILE)
    (directory / STATE_FILE).write_text(json.dumps({"epoch": epoch}))


def unpack_checkpoint(checkpoint: Any, scratch: Path) -> int:
    """Copy a Tune/Train checkpoint's model to ``scratch / MODEL_FILE`` (the checkpoint's
    own directory may be temporary) and return the epoch it ended."""
    with checkpoint.as_directory() as d:
        shutil.copy(Path(d) / MODEL_FILE, scratch / MODEL_FILE)
        return int(json.loads((Path(d) / STATE_FILE).read_text())["epoch"])


def limit_tf_threads(cpus: float) -> None:
    """Keep TensorFlow inside the trial's CPU share (two trials on two cores must not
    each start a pool as wide as the machine). Must run before TF builds anything."""
    import tensorflow as tf

    n = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(min(n, 2))
    except RuntimeError:
        pass  # TF already initialised in this process (a reused worker): keep its pools


def train_trial(config: dict[str, Any], data: dict[int, Arrays]) -> None:
    """Tune function trainable. ``data`` maps img_size -> the labelled arrays at that size."""
    from ray import tune

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
