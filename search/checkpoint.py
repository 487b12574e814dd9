"""A trial's checkpoint format, shared by one-worker and multi-worker trials.

A checkpoint folder holds ``model.keras`` (the model with its optimizer state, so the
learning-rate schedule goes on from the same step on resume) and ``state.json``
(``{"epoch": N, "seed_states": [...]}``: the 1-based epoch it ended and the dropout
layers' random states, which ``model.keras`` leaves out (:mod:`model.seed_states`), so
that a resumed trial trains bit for bit as the uninterrupted one would). Tune and Ray
Train store such folders per trial; export, retrain and the search report read
``model.keras`` from them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune

from pneumotune.compat import ray_internals

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"


def write_checkpoint(model: Any, directory: Path, epoch: int) -> None:
    """A trial's checkpoint, one-worker or multi-worker: the model, the epoch it ended and
    its dropout random states."""
    from pneumotune.model.seed_states import seed_states

    model.save(directory / MODEL_FILE)
    state = {"epoch": epoch, "seed_states": seed_states(model)}
    (directory / STATE_FILE).write_text(json.dumps(state))


def read_epoch(directory: Path) -> int:
    """The epoch a checkpoint folder ended (1-based)."""
    return int(json.loads((directory / STATE_FILE).read_text())["epoch"])


def read_seed_states(directory: Path) -> list[list[int]] | None:
    """The dropout random states a checkpoint folder saved; None in one written before
    they were saved (its resume draws other dropout masks, as it always did)."""
    return json.loads((directory / STATE_FILE).read_text()).get("seed_states")


def load_checkpoint_model(root: Path, checkpoint: Path, config: dict[str, Any], images: int) -> Any:
    """The Keras model (compiled, with its optimizer) of ``checkpoint``, a trial's
    checkpoint folder in the search folder ``root``, for export and retraining.

    ``config`` is the trial's (flat), ``images`` the dataset's labelled images. The search
    folder may be someone else's: the file must lie in ``root`` (not a link elsewhere),
    Keras loads it in safe mode (no Lambda code runs), its learning-rate table may not
    hold more steps than ``config`` on ``images`` images takes (it is allocated from the
    file's count), and its input must be the config's ``img_size``. Each failure is a
    :class:`search.results.ResultsError` saying which file and why.
    """
    import zipfile

    import keras

    from pneumotune.model import train as _registers_custom_objects  # noqa: F401
    from pneumotune.model.pipeline import steps_per_epoch
    from pneumotune.model.schedules import ScheduleError, steps_at_most
    from pneumotune.search.results import ResultsError, inside

    cfg = trial_config(config, checkpoint)
    path = checkpoint / MODEL_FILE
    if inside(root, path) is None:
        raise ResultsError(f"{path} leads outside the search folder {root}: not loaded")
    n = cfg.epoch_images or images  # the most images an epoch of this run trains on
    steps = steps_per_epoch(n, cfg.batch_size)
    run = f"{cfg.epochs} epochs x {steps} steps of batch {cfg.batch_size} over {n} images"
    try:
        with steps_at_most(cfg.epochs * steps, run):
            model = keras.saving.load_model(path, safe_mode=True)
    except ScheduleError as exc:
        raise ResultsError(f"{path}: {exc}") from None
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as exc:
        # A file that is not a model pneumotune saved (or a Lambda layer, which safe mode
        # refuses): the first line of Keras' reason is enough to act on.
        why = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ResultsError(f"{path} cannot be loaded: {type(exc).__name__}: {why}") from None
    side = tuple(model.input_shape[1:])
    if side != (cfg.img_size, cfg.img_size, 1):
        raise ResultsError(
            f"{path} takes {side} inputs, but its trial's config says img_size {cfg.img_size}: "
            "the checkpoint is not that trial's"
        )
    return model


def trial_config(config: dict[str, Any], checkpoint: Path) -> Any:
    """A trial's flat config (from its results folder) as a ``TrainConfig``;
    :class:`search.results.ResultsError` when it is not one."""
    from pneumotune.model.config import TrainConfig
    from pneumotune.search.results import ResultsError
    from pneumotune.text import escaped

    try:
        return TrainConfig.from_flat(config)
    except (TypeError, ValueError) as exc:  # ConfigError included; TypeError: "16" < 1
        raise ResultsError(
            f"the config of the trial at {checkpoint.parent} is not a training config: "
            f"{escaped(exc, 300)}"
        ) from None


def unpack_checkpoint(checkpoint: Any, scratch: Path) -> int:
    """Copy a Tune/Train checkpoint's files to ``scratch`` (the checkpoint's own directory
    may be temporary) and return the epoch it ended."""
    with checkpoint.as_directory() as d:
        shutil.copy(Path(d) / MODEL_FILE, scratch / MODEL_FILE)
        shutil.copy(Path(d) / STATE_FILE, scratch / STATE_FILE)
        return read_epoch(Path(d))


@contextmanager
def resume_from(checkpoint: Any) -> Iterator[dict[str, Any]]:
    """``fit``'s resume arguments for ``checkpoint`` (``initial_epoch``, ``resume_from``:
    a local copy of its model, deleted on exit, and its ``seed_states``), or a fresh
    start's when it is None."""
    if checkpoint is None:
        yield {"initial_epoch": 0, "resume_from": None, "seed_states": None}
        return
    scratch = Path(tempfile.mkdtemp(prefix="pneumotune-resume-"))
    try:
        epoch = unpack_checkpoint(checkpoint, scratch)
        yield {
            "initial_epoch": epoch,
            "resume_from": scratch / MODEL_FILE,
            "seed_states": read_seed_states(scratch),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def newest_checkpoint(trial_dir: Path) -> tuple[int, Path] | None:
    """The highest-numbered complete ``checkpoint_NNNNNN`` folder of a trial, with its index."""
    found = []
    for d in trial_dir.glob("checkpoint_*"):
        suffix = d.name.removeprefix("checkpoint_")
        if suffix.isdigit() and (d / STATE_FILE).is_file() and (d / MODEL_FILE).is_file():
            found.append((int(suffix), d))
    return max(found) if found else None


def repair_missing_checkpoints(trials: list[Any]) -> list[str]:
    """Point each restored trial whose recorded checkpoint is gone at its newest one on disk.

    Tune saves its experiment state every few seconds, but deletes a trial's checkpoints
    as soon as a better one is kept (``num_to_keep`` by score): a search killed between the
    two restores with a state naming a checkpoint that was deleted, and Tune's restore of
    that trial fails on every retry ("does not exist on storage anymore"). The newest
    checkpoint still on disk is at least as recent (its ``state.json`` says the epoch the
    trial goes on from); with none left the trial starts again from epoch 1. Returns one
    line per repaired trial. Local storage only (a cloud URI is left to Tune).
    """
    from ray.train import Checkpoint

    notes = []
    for trial in trials:
        recorded = trial.checkpoint
        if recorded is None or "://" in str(recorded.path) or Path(recorded.path).is_dir():
            continue
        # Ray's record of the trial's checkpoints (private, through compat): the kept ones
        # it would later delete, and the latest one a restore starts from.
        ray_internals.keep_checkpoint_results(trial, lambda c: Path(c.path).is_dir())
        newest = newest_checkpoint(Path(trial.path))
        if newest is None:  # no latest result: a fresh start
            ray_internals.set_latest_checkpoint(trial, None)
            notes.append(f"{trial.trial_id}: {Path(recorded.path).name} is gone; starts over")
            continue
        index, folder = newest
        checkpoint = Checkpoint(str(folder))
        epoch = read_epoch(folder)
        # Tune's Trainable.restore takes its count of reports from these metrics: one
        # report per epoch, so after epoch N it is N (without it the count restarts at 1,
        # and ASHA's rungs and Optuna's steps, which read it, go wrong).
        metrics = {"epoch": epoch, "training_iteration": epoch}
        ray_internals.set_latest_checkpoint(trial, checkpoint, metrics)
        # New checkpoints must not overwrite the folder it goes on from.
        ray_internals.raise_checkpoint_index(trial, index + 1)
        notes.append(
            f"{trial.trial_id}: {Path(recorded.path).name} is gone; "
            f"goes on from {folder.name} (epoch {epoch})"
        )
    return notes


class RepairCheckpoints(tune.Callback):
    """A Tune callback: :func:`repair_missing_checkpoints` once, before any trial restarts
    (``Tuner.restore`` brings back the callbacks a search started with)."""

    def __init__(self) -> None:
        self.done = False  # Tune pickles callbacks with the run: keep them plain data

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.done:
            self.done = True
            for note in repair_missing_checkpoints(trials):
                print(f"resume: {note}", flush=True)
