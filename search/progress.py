"""One line per event while a search runs, instead of Tune's tables.

Tune's own console output prints a table of every parameter each time a trial starts;
with fifteen searched parameters that buries the numbers a user watches. These lines
say what happened: which trial started (its key parameters), each epoch's metric, and
how each trial ended (completed, stopped by ASHA, failed and why). The full table is
one command away: `pneumotune status RESULTS`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray import tune

# Shown when a trial starts, when searched: the parameters that change a trial most.
KEY_PARAMS = ("img_size", "base_filters", "depth", "lr", "schedule", "batch_size")


class ProgressLines(tune.Callback):
    def __init__(self, metric: str, mode: str, max_t: int, out: TextIO | None = None) -> None:
        self.metric, self.max_t = metric, max_t
        self.pick = max if mode == "max" else min
        self.out = out  # None: sys.stdout at print time (the callback is pickled with the run)
        self.best: dict[str, float] = {}
        self.t0 = time.monotonic()

    def _print(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.t0)
        print(
            f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {text}",
            file=self.out or sys.stdout,
            flush=True,
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = ", ".join(
            f"{k}={_short(trial.config[k])}" for k in KEY_PARAMS if k in trial.config
        )
        self._print(f"trial {trial.trial_id} started: {params}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        value = result.get(self.metric)
        if not isinstance(value, int | float):
            return
        best = self.best[trial.trial_id] = self.pick(value, self.best.get(trial.trial_id, value))
        seconds = result.get("epoch_seconds")
        timing = f" ({seconds:.0f} s)" if isinstance(seconds, int | float) else ""
        self._print(
            f"trial {trial.trial_id} epoch {result.get('training_iteration')}/{self.max_t}: "
            f"{self.metric} {value:.4f} (best {best:.4f}){timing}"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        how = "completed" if epochs >= self.max_t else f"stopped by ASHA after {epochs} epochs"
        best = self.best.get(trial.trial_id)
        score = f", best {self.metric} {best:.4f}" if best is not None else ""
        self._print(f"trial {trial.trial_id} {how}{score}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._print(
            f"trial {trial.trial_id} failed ({_reason(trial)}); retrying from its last checkpoint"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._print(f"trial {trial.trial_id} failed for good: {_reason(trial)}")


def _reason(trial: Any) -> str:
    from pathlib import Path

    from pneumotune.search.results import last_exception_line

    path = trial.error_file
    if path and Path(path).is_file():
        return last_exception_line(Path(path).read_text())
    return "no error file"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
