"""The class of a trial's tag actor (:class:`TrialTag`), in a module that imports nothing.

Ray starts a new worker process for each actor, and that process imports the module of
the actor's class to unpickle it before the actor is ALIVE. Until then the Actors table
shows the tag as PENDING_CREATION. This module, and the packages above it
(``pneumotune``, ``pneumotune.search``, ``pneumotune.search.watch``), import no third-party
module, so a tag's process imports only Ray and this file. The tag used to live in
:mod:`.trial_telemetry`, which imports ``pneumotune.model.config`` and, through it,
albumentations, OpenCV and NumPy (``python bench/tag_start.py`` measures both).
"""

from __future__ import annotations

import os
import threading
import time


class TrialTag:
    """A resource-free actor for one trial that a reused actor (a trial runner) trains:
    its repr is the trial's label (:func:`.trial_telemetry.trial_tag`), and :meth:`log`
    prints a line of the trial in this actor's process, so the trial's own row in the Ray
    dashboard has the trial's lines in its Log.

    It is detached from its runner (so that it outlives a runner that Tune ends right
    after the trial, and prints the lines queued for it), and ends when told to after
    them; with ``runner_pid`` (a process of this node) it also ends when that process is
    gone without telling it, checked every ``every`` seconds."""

    def __init__(self, label: str, runner_pid: int | None = None, every: float = 5.0) -> None:
        self.label = label
        if runner_pid is not None:
            threading.Thread(target=_end_after, args=(runner_pid, every), daemon=True).start()

    def __repr__(self) -> str:
        return self.label

    def log(self, line: str) -> None:
        print(line, flush=True)


def _end_after(pid: int, every: float) -> None:
    # Sleep first: lines the runner delivered before it went run in the meantime.
    time.sleep(every)
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(every)
    os._exit(0)
