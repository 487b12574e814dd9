"""The Tune trainable: one trial = one `model.train.fit`, one report per epoch.

Thin on purpose: the data arrives as a handle (:class:`pneumotune.data.node_cache.
SharedDataset`: the trial maps its node's copy of its size, and its folds are index views
of it, so no trial copies the dataset), the flat config becomes a ``TrainConfig``, every epoch
reports its metrics with a checkpoint, and a restarted trial resumes from
``tune.get_checkpoint()`` — model, optimizer state (so the LR schedule goes on from
the same step) and epoch count.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pneumotune.data.dataset import split_fold
from pneumotune.data.node_cache import SharedDataset
from pneumotune.memory import memory_metrics
from pneumotune.search.checkpoint import resume_from, write_checkpoint


def train_trial(
    config: dict[str, Any],
    data: SharedDataset,
    backend: str = "tensorflow",
    gpu_fraction: float | None = None,
    warm: bool = False,
) -> None:
    """Tune function trainable. ``data[img_size]``: the labelled arrays at that size,
    memory-mapped from this node's copy (written by the node's first trial at that size);
    ``backend``: the driver's Keras backend, set here before Keras is imported (a worker
    on another machine does not inherit the driver's environment); ``gpu_fraction``: the
    trial's share of a GPU (JAX and PyTorch cap their memory to it); ``warm``: this
    process runs trial after trial (Tune reuses its actor): train warm
    (:mod:`model.warm`) and name the trial with a tag actor
    (:func:`pneumotune.search.watch.trial_telemetry.trial_tag`)."""
    # Each report states its own time_this_iter_s (Tune lets a result override it): Tune
    # times an iteration from the session's previous report, and a reused actor's session
    # keeps the previous trial's, so a warm trial's first iteration would also count the
    # time its actor waited for Tune between trials. Here: from this trial's start.
    lap = Lap()
    from ray import tune

    from pneumotune.model.backend import prepare_process, select_backend

    cpus = float(os.environ.get("OMP_NUM_THREADS", "1"))
    if warm:
        # Before a reused actor takes the next trial, Tune waits for this trial's thread to
        # end (it leaves Keras' fit through SystemExit from tune.report) for 2 s by
        # default, then fails the *next* trial, without a retry; an ASHA stop on 2 busy
        # cores took longer (pneumotune demo). Read by Tune in this process, at the reset.
        os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    select_backend(backend)
    prepare_process(cpus, gpu_fraction)

    from pneumotune.model.devices import limit_threads
    from pneumotune.model.train import fit
    from pneumotune.search.space import train_config
    from pneumotune.search.watch.trial_telemetry import TrialConsole, trial_tag

    limit_threads(cpus)
    cfg = train_config(config)
    train, val = split_fold(data[cfg.img_size], cfg.val_fold)
    console = TrialConsole(cfg.epochs)  # the actor's log lines and the trial's series

    def on_epoch_end(epoch: int, metrics: dict[str, float], model: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="pneumotune-ckpt-") as d:
            write_checkpoint(model, Path(d), epoch)
            console.epoch(epoch, metrics)
            tune.report(
                # memory_mb: what the trial holds, the last word of one the OOM killer ends
                {**metrics, "epoch": epoch, "time_this_iter_s": lap(), **memory_metrics()},
                checkpoint=tune.Checkpoint.from_directory(d),
            )

    named = trial_tag(console.trial_id, config) if warm else contextlib.nullcontext()
    with named as tag, resume_from(tune.get_checkpoint()) as resume:
        console.tag = tag  # a runner's trial: its lines also go to its tag's log
        console.started(backend)
        if resume["resume_from"] is not None:
            console.resumed(resume["initial_epoch"])
        if nothing_left(resume["initial_epoch"], cfg.epochs):
            # Its last epoch's checkpoint was saved but the search was killed before Tune
            # recorded the trial as ended: restored, it has nothing left to train (fit()
            # refuses an empty run), and its results are already reported.
            return
        fit(cfg, train, val, on_epoch_end=on_epoch_end, warm=warm, **resume)


def nothing_left(initial_epoch: int, epochs: int) -> bool:
    """Whether a trial resumed after ``initial_epoch`` epochs of ``epochs`` is done."""
    return initial_epoch >= epochs


class Lap:
    """Seconds since the previous call (the first: since this object was made)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds
