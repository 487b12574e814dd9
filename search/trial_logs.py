"""Keep a restarted trial's earlier results: a Tune callback.

Tune writes each trial's ``result.json`` in the driver's staging folder and copies that
folder to the search's storage folder only every so often (an experiment checkpoint).
When a trial that has a checkpoint starts again (promotion ASHA resumes a paused trial,
or a retry after a failure), Ray 2.60's ``JsonLoggerCallback.log_trial_start`` first
copies the storage folder's ``result.json`` over the staging one: if no copy ran since
the trial's last epochs, those epochs are lost from ``result.json`` for good (the next
copy writes the shortened file to storage), and with them the trial's history that
``pneumotune status`` and the report read. ``progress.csv`` is not affected (its logger
keeps the file open while a trial is paused).

:class:`KeepTrialLogs` runs before Tune's loggers (Tune appends its default loggers after
the callbacks a search passes) and, for such a trial, copies the staging ``result.json``
to storage first, so that what the logger copies back is the complete file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

RESULT_FILE = "result.json"


class KeepTrialLogs(tune.Callback):
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not trial.checkpoint:  # Tune restores the log only for a trial with a checkpoint
            return
        import pyarrow.fs

        staged = Path(trial.local_path) / RESULT_FILE
        stored = f"{trial.path}/{RESULT_FILE}"
        fs = trial.storage.storage_filesystem
        if not staged.is_file():
            return
        local = isinstance(fs, pyarrow.fs.LocalFileSystem)
        if local and staged.resolve() == Path(stored).resolve():
            return  # one file: nothing to copy (and copying it onto itself would empty it)
        pyarrow.fs.copy_files(str(staged), stored, destination_filesystem=fs)
