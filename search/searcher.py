"""The search's searcher: Ray's OptunaSearch, told the fidelity of each trial it learns from.

Ray's ``OptunaSearch.on_trial_complete`` tells Optuna that a trial ASHA stopped at its
first rung is COMPLETE with its score there, so TPE compares a 2-epoch score with
24-epoch ones and models the early scores as if they were final. Here a trial that
ended before ``max_t`` epochs (stopped by ASHA, or by a budget) is told as PRUNED.
Optuna keeps the per-epoch values the trial reported (``on_trial_result`` reports one
per epoch), and TPE ranks PRUNED trials below every trial that reached ``max_t``, by the
last epoch they reached and their score there — a rung-2 score is compared with rung-2
scores only.

With promotion ASHA (:mod:`search.promotion`) a trial paused at a rung is told as PRUNED
at once, with its epochs so far (``on_pause``; the scheduler tells it through
:class:`search.promotion.PauseAwareLimiter`): TPE learns its rung score as it learns a
stopped trial's. Left RUNNING, it would teach TPE nothing: TPESampler samples at random
until ``n_startup_trials`` trials are COMPLETE or PRUNED, and models only those (RUNNING
ones only as ``constant_liar``'s bad results). Under promotion ASHA most trials wait at
the first rung until the search ends, so TPE would never leave its start-up: the whole
search would be random.

A finished Optuna trial cannot take more values, so a paused trial that is promoted (it
resumes from its checkpoint: ``on_unpause``) goes on in a *new* Optuna trial with the
same parameters, into which its earlier per-epoch values are reported again: its curve
is whole there, and it is told as any trial when it ends (COMPLETE at ``max_t``, PRUNED
before). The study therefore holds two records of a promoted trial, both honest: the
PRUNED one of its pause (its score at the rung, a fact TPE should know from the moment
of the pause) and the resumed one. A trial still paused when the search ends is ended by
the scheduler through Tune's ``stop_trial``, which calls ``on_trial_complete`` without a
result: it was told PRUNED at its pause and is not told again. A trial that reports
while its Optuna trial is finished (a paused trial run again by ``Tuner.restore``, or a
searcher state older than the study's journal) goes on in a new Optuna trial the same
way.

Concurrent proposals: TPE's ``constant_liar`` (set by the tuner) treats the running
trials as bad results, so that two trials proposed at once do not repeat each other (a
paused trial is PRUNED, a resumed one RUNNING again).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from pneumotune.compat import ray_internals

logger = logging.getLogger(__name__)


class FidelityOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells trials ended before ``max_t`` epochs as PRUNED, and
    paused trials (promotion ASHA) as PRUNED at their rung (see the module docstring).

    Ray's OptunaSearch keeps its study and which Optuna trial each Tune trial reports
    into in private attributes: the "Ray's OptunaSearch internals" methods at the end
    reach them through :mod:`pneumotune.compat.ray_internals` only.
    """

    def __init__(self, *args: Any, max_t: int, **kwargs: Any) -> None:
        if max_t < 1:
            raise ValueError(f"max_t must be >= 1 epoch, got {max_t}")
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._reported: dict[str, int | None] = {}  # the last epoch each trial reported
        # Everything below is in __dict__, which OptunaSearch.save pickles for a resume.
        # Paused trials whose pause is not told yet: Tune asks the scheduler (which tells
        # on_pause) before it hands the searcher the rung's result itself.
        self._pausing: set[str] = set()
        # Paused trials told as PRUNED: what a resumed Optuna trial needs of them.
        self._paused: dict[str, _PausedRecord] = {}
        # Queued points (Ray's points_to_evaluate) taken off Optuna's queue early, so that
        # a resumed trial's own queued parameters are the ones it gets; the next new
        # trials get them, in order.
        self._queued: list[Any] = []

    # ------------------------------------------------------------------ Tune's API

    def suggest(self, trial_id: str) -> dict | None:
        # Tell any pause still untold (on_pause before the trial's last on_trial_result):
        # TPE samples from finished trials only.
        for tid in list(self._pausing):
            self._tell_paused(tid)
        self._take_queued(trial_id)
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        def report() -> None:
            super(FidelityOptunaSearch, self).on_trial_result(trial_id, result)

        self._into_open_trial(trial_id, report)
        self._reported[trial_id] = result.get("training_iteration")
        if trial_id in self._pausing:  # Tune's order: on_pause, then the rung's result
            self._tell_paused(trial_id)

    def on_pause(self, trial_id: str) -> None:
        """The scheduler paused the trial at a rung: it is told as PRUNED once the rung's
        result is reported (Tune hands it to the searcher right after the scheduler)."""
        if isinstance(self.metric, list) or not self._is_open(trial_id):
            return  # multi-objective: Optuna keeps no per-epoch values; or nothing to tell
        self._pausing.add(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        """The scheduler promoted the trial: it resumes from its checkpoint, in a new
        Optuna trial with its parameters and its earlier per-epoch values."""
        if trial_id in self._pausing:
            # Its pause was never told: it goes on in the same (still RUNNING) Optuna trial.
            self._pausing.discard(trial_id)
            return
        if trial_id in self._paused:
            self._resume(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self._pausing.discard(trial_id)  # untold: it ends as a running trial would
        if trial_id in self._paused and (error or not result):
            # Ended while paused (the end of the search, a user): told PRUNED at its pause.
            del self._paused[trial_id]
            self._mark_told(trial_id)
            return
        if error or not result or self._is_told(trial_id):
            # No result: a pending trial (or a resumed one not yet reporting) stopped;
            # Ray's OptunaSearch tells it as PRUNED at its last intermediate value, if any.
            super().on_trial_complete(trial_id, result, error)
            return
        epochs = result.get("training_iteration")
        if epochs is not None and self._reported.get(trial_id) != epochs and self.metric in result:
            # Tune hands a trial's last result to on_trial_complete only: keep it as the
            # last intermediate value, so that Optuna has every epoch's score.
            def report() -> None:
                self._optuna_trial(trial_id).report(result[self.metric], epochs)

            self._into_open_trial(trial_id, report)
        else:
            self._into_open_trial(trial_id)  # e.g. its first result since a pause ends it
        if epochs is None or epochs >= self._max_t:
            super().on_trial_complete(trial_id, result, error)
            return
        # Without a result Ray's OptunaSearch tells the trial PRUNED, with no value: Optuna
        # takes the last intermediate value (this epoch's score).
        super().on_trial_complete(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # A restored search runs its paused trials again (PauseAwareLimiter.set_state):
        # a pause not told before the save is no pause any more. (A told one is resumed
        # in a new Optuna trial at the trial's first result.)
        self._pausing = set()

    # ------------------------------------------------------------------ pauses

    def _tell_paused(self, trial_id: str) -> None:
        from optuna.trial import TrialState

        self._pausing.discard(trial_id)
        # No value: Optuna takes the last intermediate value, the rung's score.
        frozen = self._study().tell(self._optuna_trial(trial_id), state=TrialState.PRUNED)
        self._paused[trial_id] = _PausedRecord.of(frozen)

    def _into_open_trial(self, trial_id: str, report: Any = None) -> None:
        """``report()`` into the trial's Optuna trial, first moving it to a new one if the
        trial reports again after its pause was told (a restored or retried trial that
        the scheduler has not told ``on_unpause``)."""
        from optuna.exceptions import UpdateFinishedTrialError

        if trial_id in self._paused:
            self._resume(trial_id)
        if report is None:
            return
        try:
            report()
        except UpdateFinishedTrialError:
            # Finished in the study without our record: the searcher's state is older
            # than the study's journal (a search killed after a pause, then restored).
            self._resume(trial_id)
            report()

    def _resume(self, trial_id: str) -> None:
        """Go on in a new Optuna trial: the paused one's parameters, its per-epoch values
        reported again (so that the new trial's curve is whole)."""
        record = self._paused.pop(trial_id, None)
        if record is None:
            number = self._optuna_trial(trial_id).number
            frozen = next(t for t in self._study().get_trials(deepcopy=False) if t.number == number)
            record = _PausedRecord.of(frozen)
        new = self._ask_with(record.params, record.distributions)
        for step, value in sorted(record.intermediate_values.items()):
            new.report(value, step)
        self._set_optuna_trial(trial_id, new)

    def _ask_with(self, params: dict[str, Any], distributions: dict[str, Any]) -> Any:
        """A new RUNNING Optuna trial with these parameters (Optuna's queue: enqueue, ask).
        The distributions are the paused trial's own, so this serves a define-by-run space
        (search/space.py's) and a dict of distributions alike."""
        from optuna.trial import TrialState

        study = self._study()
        # ask() takes the oldest queued trial: take any queued before ours off first.
        while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            self._queued.append(self._ask_new())
        study.enqueue_trial(params, skip_if_exists=False)
        new = study.ask(fixed_distributions=distributions)
        if new.params != params:  # only if another process shares the study's queue
            logger.warning(
                "resuming a paused trial: Optuna gave parameters %s, not %s", new.params, params
            )
        return new

    # ---------------------------------------------------- Ray's OptunaSearch internals
    # The only uses of Ray's private names, all through pneumotune.compat.ray_internals.

    def _study(self) -> Any:
        return ray_internals.optuna_study(self)

    def _optuna_trial(self, trial_id: str) -> Any:
        return ray_internals.optuna_trial_of(self, trial_id)

    def _set_optuna_trial(self, trial_id: str, ot_trial: Any) -> None:
        ray_internals.set_optuna_trial(self, trial_id, ot_trial)

    def _is_told(self, trial_id: str) -> bool:
        return ray_internals.is_told(self, trial_id)

    def _is_open(self, trial_id: str) -> bool:
        """Whether the trial has an Optuna trial that nothing has finished yet."""
        return (
            ray_internals.has_optuna_trial(self, trial_id)
            and not self._is_told(trial_id)
            and trial_id not in self._paused
        )

    def _mark_told(self, trial_id: str) -> None:
        ray_internals.mark_told(self, trial_id)

    def _ask_new(self) -> Any:
        """Ask as OptunaSearch.suggest does for a new trial."""
        return ray_internals.ask_new_optuna_trial(self)

    def _take_queued(self, trial_id: str) -> None:
        """Give a new trial the queued point taken off Optuna's queue early, if any:
        OptunaSearch.suggest then uses it as the trial it would have asked for."""
        if self._queued and not ray_internals.has_optuna_trial(self, trial_id):
            self._set_optuna_trial(trial_id, self._queued.pop(0))


class _PausedRecord:
    """What a paused trial's successor needs: its parameters (with their distributions)
    and its per-epoch values (public FrozenTrial fields). Picklable."""

    def __init__(
        self, params: dict[str, Any], distributions: dict[str, Any], values: dict[int, float]
    ) -> None:
        self.params = params
        self.distributions = distributions
        self.intermediate_values = values

    @classmethod
    def of(cls, frozen: Any) -> _PausedRecord:
        return cls(
            dict(frozen.params), dict(frozen.distributions), dict(frozen.intermediate_values)
        )
