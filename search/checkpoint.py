"""A trial's checkpoint format, shared by one-worker and multi-worker trials.

A checkpoint folder holds ``model.keras`` (the model with its optimizer state, so the
learning-rate schedule goes on from the same step on resume) and ``state.json``
(``{"epoch": N}``, the 1-based epoch it ended). Tune and Ray Train store such folders
per trial; export, retrain and the search report read ``model.keras`` from them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"


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
