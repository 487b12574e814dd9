"""A trial's checkpoint format, shared by one-worker and multi-worker trials.

A checkpoint folder holds ``model.keras`` (the model with its optimizer state, so the
learning-rate schedule goes on from the same step on resume) and ``state.json``
(``{"epoch": N}``, the 1-based epoch it ended). Tune and Ray Train store such folders
per trial; export, retrain and the search report read ``model.keras`` from them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"


def write_checkpoint(model: Any, directory: Path, epoch: int) -> None:
    """A trial's checkpoint, one-worker or multi-worker: the model and the epoch it ended."""
    model.save(directory / MODEL_FILE)
    (directory / STATE_FILE).write_text(json.dumps({"epoch": epoch}))


def read_epoch(directory: Path) -> int:
    """The epoch a checkpoint folder ended (1-based)."""
    return int(json.loads((directory / STATE_FILE).read_text())["epoch"])


def unpack_checkpoint(checkpoint: Any, scratch: Path) -> int:
    """Copy a Tune/Train checkpoint's model to ``scratch / MODEL_FILE`` (the checkpoint's
    own directory may be temporary) and return the epoch it ended."""
    with checkpoint.as_directory() as d:
        shutil.copy(Path(d) / MODEL_FILE, scratch / MODEL_FILE)
        return read_epoch(Path(d))


@contextmanager
def resume_from(checkpoint: Any) -> Iterator[dict[str, Any]]:
    """``fit``'s resume arguments for ``checkpoint`` (``initial_epoch``, ``resume_from``:
    a local copy of its model, deleted on exit), or a fresh start's when it is None."""
    if checkpoint is None:
        yield {"initial_epoch": 0, "resume_from": None}
        return
    scratch = Path(tempfile.mkdtemp(prefix="pneumotune-resume-"))
    try:
        epoch = unpack_checkpoint(checkpoint, scratch)
        yield {"initial_epoch": epoch, "resume_from": scratch / MODEL_FILE}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
