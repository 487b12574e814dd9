"""A cheap trainable for wiring tests: real Tune reports and checkpoints, no Keras.

Its score rises with the epoch and peaks at lr = 1e-3 and wide filters, so TPE and
ASHA have something to find. ``make_cheap_trial`` builds variants: low-lr trials that
raise at epoch 2 (after a checkpoint), to test retries; slow epochs for kill tests; a
log of every attempt and the epoch it started from. (Options travel inside the
function, which Tune ships with cloudpickle: the workers' environment is fixed when
Ray starts.)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from pneumotune.data.dataset import Arrays, split_fold


def score(config: dict[str, Any], epoch: int, epochs: int) -> float:
    peak = math.exp(-((math.log10(config["lr"]) + 3.0) ** 2))
    width = config.get("base_filters", 16) / 32
    return round(0.5 * peak * (0.5 + width) * epoch / epochs, 6)


def make_cheap_trial(
    fail_below_lr: float = 0.0, epoch_seconds: float = 0.0, attempt_log: str | None = None
):
    def cheap_trial(config: dict[str, Any], data: dict[int, Arrays]) -> None:
        train, val = split_fold(data[config["img_size"]], config["val_fold"])
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"]
        if attempt_log:
            with open(attempt_log, "a") as fh:
                fh.write(
                    json.dumps({"lr": config["lr"], "start": start, "pid": os.getpid()}) + "\n"
                )
        for epoch in range(start + 1, config["epochs"] + 1):
            time.sleep(epoch_seconds)
            if epoch == 2 and config["lr"] < fail_below_lr:
                raise RuntimeError(f"planted failure at epoch {epoch}")
            metrics = {
                "val_iou": score(config, epoch, config["epochs"]),
                "n_train": len(train),
                "n_val": len(val),
                "image_shape": list(train.images.shape[1:]),
                "resumed_from": start,
            }
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    return cheap_trial


cheap_trial = make_cheap_trial()
