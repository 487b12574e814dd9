"""One line per event while a search runs, instead of Tune's tables.

Tune's own console output prints a table of every parameter each time a trial starts;
with fifteen searched parameters that buries the numbers a user watches. These lines
say what happened: which trial started (its key parameters), each epoch's metric, and
how each trial ended (completed, stopped by ASHA, failed and why; a trial killed for
memory with the memory it held and what to change), and, with promotion ASHA, which
trial waits at a rung and which resumes. The full table is one command away:
`pneumotune status RESULTS`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray import tune

from pneumotune.model.config import KEY_PARAMS
from pneumotune.text import short


class ProgressLines(tune.Callback):
    def __init__(self, metric: str, mode: str, max_t: int, out: TextIO | None = None) -> None:
        self.metric, self.max_t = metric, max_t
        self.pick = max if mode == "max" else min
        self.out = out  # None: sys.stdout at print time (the callback is pickled with the run)
        self.best: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.paused: set[str] = set()  # trials promotion ASHA paused (search.promotion)

    def setup(self, **info: Any) -> None:
        """At the start of every search and resumed search (in the driver): a trial that
        Ray's memory monitor kills must fail like any other trial, not end the search
        (:func:`search.failures.handle_memory_monitor_kills`). Here because this callback
        is in every search pneumotune runs, and Tuner.restore brings it back."""
        from pneumotune.search.failures import handle_memory_monitor_kills

        handle_memory_monitor_kills()

    def _print(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.t0)
        print(
            f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {text}",
            file=self.out or sys.stdout,
            flush=True,
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        paused = self.__dict__.setdefault("paused", set())  # a search pickled before it
        if trial.trial_id in paused:
            paused.discard(trial.trial_id)
            epochs = (trial.last_result or {}).get("training_iteration", 0)
            self._print(f"trial {trial.trial_id} promoted: resumes after epoch {epochs}")
            return
        params = ", ".join(f"{k}={short(trial.config[k])}" for k in KEY_PARAMS if k in trial.config)
        self._print(f"trial {trial.trial_id} started: {params}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Tune has no pause event: a trial newly PAUSED was paused at a rung.
        paused = self.__dict__.setdefault("paused", set())
        for t in trials:
            if t.status == "PAUSED" and t.trial_id not in paused:
                paused.add(t.trial_id)
                epochs = (t.last_result or {}).get("training_iteration", 0)
                self._print(
                    f"trial {t.trial_id} paused after epoch {epochs}/{self.max_t}: waits at "
                    "its rung, resumes if later trials rank it in the rung's top"
                )

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
        outcome, why = _failure(trial)
        self._print(f"trial {trial.trial_id} {outcome} ({why}); retrying from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from pneumotune.search.failures import MEMORY_OUTCOMES, memory_advice

        outcome, why = _failure(trial)
        self._print(f"trial {trial.trial_id} {outcome} for good: {why}")
        if outcome in MEMORY_OUTCOMES:
            self._print(f"trial {trial.trial_id}: to fit, {memory_advice(trial.config)}")


def _failure(trial: Any) -> tuple[str, str]:
    """How the trial's latest failure ended it (failures.classify) and why, with the
    memory it held at its latest report when it ran out of memory."""
    from pathlib import Path

    from pneumotune.memory import MEMORY_METRIC
    from pneumotune.search.failures import MEMORY_OUTCOMES, classify, parse_error_file, reason
    from pneumotune.search.results import (
        ERROR_TAIL_BYTES,
        Unreadable,
        number,
        read_text,
    )
    from pneumotune.text import escaped

    path = trial.error_file
    if not (path and Path(path).is_file()):
        return "failed", "no error file"
    # The error file's name is in the trial's state, which a resumed search read from its
    # folder: only a file in the trial's own folder is read (an absolute or "../" name, or
    # a link, could name any file, whose text would then be printed).
    try:
        text = read_text(Path(trial.local_path), Path(path), ERROR_TAIL_BYTES, tail=True)
    except Unreadable:
        return "failed", "its error file is not a file in the trial's folder: not read"
    except OSError:
        return "failed", "no error file"
    failures = parse_error_file(text)
    text = failures[-1].text if failures else ""
    outcome, why = classify(text), escaped(reason(text), 300)
    last = trial.last_result or {}
    held = number(last.get(MEMORY_METRIC))
    if outcome in MEMORY_OUTCOMES and held is not None:
        why += f"; held {held:.0f} MB at epoch {last.get('training_iteration')}"
    return outcome, why
