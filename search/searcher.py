"""The search's searcher: Ray's OptunaSearch, told the fidelity of each trial it learns from.

Ray's ``OptunaSearch.on_trial_complete`` tells Optuna that a trial ASHA stopped at its
first rung is COMPLETE with its score there, so TPE compares a 2-epoch score with
24-epoch ones and models the early scores as if they were final. Here a trial that
ended before ``max_t`` epochs (stopped by ASHA, or by a budget) is told as PRUNED.
Optuna keeps the per-epoch values the trial reported (``on_trial_result`` reports one
per epoch), and TPE ranks PRUNED trials below every trial that reached ``max_t``, by the
last epoch they reached and their score there — a rung-2 score is compared with rung-2
scores only.

With promotion ASHA (:mod:`search.promotion`) a paused trial is told nothing: it stays
RUNNING for Optuna, and when it is promoted it goes on reporting its epochs into the
same Optuna trial. A trial still paused when the search ends is ended by the scheduler
through Tune's ``stop_trial``, which calls ``on_trial_complete`` without a result: it is
then told as PRUNED, its last intermediate value (its rung's score) as its value.

Concurrent proposals: TPE's ``constant_liar`` (set by the tuner) treats the running
trials as bad results, so that two trials proposed at once do not repeat each other (a
paused trial counts as running until it resumes or ends).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch


class FidelityOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells trials ended before ``max_t`` epochs as PRUNED."""

    def __init__(self, *args: Any, max_t: int, **kwargs: Any) -> None:
        if max_t < 1:
            raise ValueError(f"max_t must be >= 1 epoch, got {max_t}")
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._reported: dict[str, int | None] = {}  # the last epoch each trial reported

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self._reported[trial_id] = result.get("training_iteration")

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if error or not result or trial_id in self._completed_trials:
            # No result: a paused (promotion ASHA) or pending trial stopped; Ray's
            # OptunaSearch tells it as PRUNED at its last intermediate value, if any.
            super().on_trial_complete(trial_id, result, error)
            return
        epochs = result.get("training_iteration")
        if epochs is not None and self._reported.get(trial_id) != epochs and self.metric in result:
            # Tune hands a trial's last result to on_trial_complete only: keep it as the
            # last intermediate value, so that Optuna has every epoch's score.
            self._ot_trials[trial_id].report(result[self.metric], epochs)
        if epochs is None or epochs >= self._max_t:
            super().on_trial_complete(trial_id, result, error)
            return
        from optuna.trial import TrialState

        # No value: Optuna takes the last intermediate value (this epoch's score).
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
