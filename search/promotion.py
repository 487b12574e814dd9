"""Promotion-type asynchronous successive halving (ASHA) on Ray Tune: pause and resume.

The algorithm is the promotion variant of Li et al. 2020 ("A System for Massively Parallel
Hyperparameter Tuning"; Syne Tune's ``HyperbandScheduler(type="promotion")``). Rungs lie at
``grace_period * reduction_factor**k`` epochs below ``max_t``. A trial that reaches a rung
records its score there and goes on only if it ranks in the top ``1/reduction_factor`` of
the scores recorded at that rung so far (``floor(n / reduction_factor)`` of ``n``: the
first trial at a rung always waits); otherwise it is *paused*, with its checkpoint of that
epoch. A rung's top grows as more trials arrive, so a paused trial can become
*promotable*: whenever a slot frees, the best promotable trial of the highest rung resumes
from its checkpoint, and only when none is promotable does a new trial start. Unlike the
stopping variant (Ray's ``ASHAScheduler``), no trial is ended on the word of the few that
happened to arrive before it.

How this sits in Tune's loop (Ray 2.60, ``ray/tune/execution/tune_controller.py``):

* Pausing: ``on_trial_result`` answers ``PAUSE``. The controller then asks the trial's
  actor to save (``pause_trial`` -> ``_schedule_trial_save``), which, for a function
  trainable, hands back the checkpoint reported with that very result and registers it
  (once: the controller skips its usual per-result save for a ``PAUSE``), then stops or
  caches the actor and marks the trial ``PAUSED``.
* Resuming: ``choose_trial_to_run`` returns the paused trial; the controller sets it
  ``PENDING``, starts (or reuses) an actor and restores its latest checkpoint, so
  ``tune.get_checkpoint()`` in the trainable is the rung's epoch and
  ``training_iteration`` goes on from it.
* Slots: Tune starts every ``PENDING`` trial its resources allow, and asks the searcher
  for new trials *before* it asks the scheduler what to run, so the scheduler alone
  cannot put a promotable trial before a new one. The concurrency limit is therefore
  :class:`PauseAwareLimiter`, which the scheduler tells when a trial gives up its slot
  (paused) and when a promoted trial takes one (Ray's own ``on_pause``/``on_unpause``
  hooks, which ``HyperBandForBOHB`` uses the same way). Ray's stock ``ConcurrencyLimiter``
  counts a paused trial as running: with every slot paused it would suggest nothing more
  and the search would wait for ever, so the scheduler refuses it.
* The searcher: the limiter passes ``on_pause``/``on_unpause`` on to the searcher it
  wraps (as Ray's ``ConcurrencyLimiter`` does), so that
  :class:`search.searcher.FidelityOptunaSearch` tells Optuna a paused trial as PRUNED at
  its rung at once, and moves a promoted one to a new Optuna trial with its parameters
  and earlier epochs (see that module: left RUNNING, paused trials would keep TPE in its
  random start-up for the whole search).
* The end: the controller ends an experiment when every trial is ``TERMINATED`` or
  ``ERROR`` and the searcher has no more to give; a ``PAUSED`` trial is neither. Once the
  searcher is finished, nothing runs or waits to start and no paused trial is promotable,
  no rung can change any more. The first arrival at each rung always waits, so a finite
  search may then have trained no trial to ``max_t`` — the trial a user exports. Until
  one has, the scheduler promotes the leader (:meth:`Rungs.leader`: the best paused
  trial of the highest rung that has one) and lets it run on, rung by rung if need be.
  Once a trial has reached ``max_t`` (or none is paused), it ends the paused trials with
  the controller's ``stop_trial`` (as ``HyperBandScheduler`` ends its paused trials when
  a bracket is done). Tune then tells the searcher they completed without a result:
  Optuna has them PRUNED at their rung since their pause (they are not told again), and
  the results folder shows them as stopped by ASHA (``TERMINATED`` before ``max_t``).

The controller methods used, ``search_alg``, ``get_trials`` and ``stop_trial``, are in
the list Tune lets a scheduler call; one private call makes Tune's experiment state file
record an ended paused trial as TERMINATED (:func:`_save_in_experiment_state`).
"""

from __future__ import annotations

import math
import pickle
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from pneumotune.compat import ray_internals

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

CONTINUE, PAUSE = "continue", "pause"


def rung_levels(grace_period: int, reduction_factor: float, max_t: int) -> tuple[float, ...]:
    """The epochs a trial may be paused at: ``grace_period * reduction_factor**k`` below
    ``max_t`` (a trial at ``max_t`` has finished; there is nothing to pause it for)."""
    if grace_period < 1 or reduction_factor <= 1 or max_t < 1:
        raise ValueError(
            f"need grace_period >= 1, reduction_factor > 1 and max_t >= 1, got "
            f"{grace_period}, {reduction_factor} and {max_t}"
        )
    levels = []
    level: float = grace_period
    while level < max_t:
        levels.append(level)
        level *= reduction_factor
    return tuple(levels)


def nothing_can_change(searcher_finished: bool, statuses: list[str], to_resume: bool) -> bool:
    """Whether the trials left paused must be ended for the search to end: the searcher
    gives no more trials, none runs or waits to start (``statuses``: Tune's, of every
    trial) and none is to resume. Only a running trial records scores at rungs, so with
    none running or coming no paused trial can become promotable any more."""
    busy = any(s in (Trial.RUNNING, Trial.PENDING) for s in statuses)
    return searcher_finished and not busy and not to_resume and Trial.PAUSED in statuses


def last_promotion(reached_max_t: bool, rungs: Rungs) -> str | None:
    """Once nothing can change a rung: the paused trial to promote so that the search
    trains one trial to ``max_t`` (the leader, while none has), or None: end the paused
    trials."""
    return None if reached_max_t else rungs.leader()


class Rungs:
    """The decisions of promotion ASHA, without Tune: what a trial does at a rung and which
    paused trials have become promotable. Scores are "higher is better" (the scheduler
    negates a metric to minimise); NaN counts as the worst score."""

    def __init__(self, levels: tuple[float, ...], reduction_factor: float) -> None:
        self.levels = levels
        self.reduction_factor = reduction_factor
        # Per rung: trial -> score, in the order recorded (ties go to the earlier trial).
        self.records: list[dict[str, float]] = [{} for _ in levels]
        # Per rung: the trials that went on past it (at once, or promoted later).
        self.promoted: list[set[str]] = [set() for _ in levels]
        self.paused: dict[str, int] = {}  # trial -> the rung it waits at

    def on_result(self, trial_id: str, iteration: float, score: float) -> str:
        """CONTINUE or PAUSE for a trial's result at ``iteration``. A result that reaches a
        rung the trial has no score at yet is recorded there (the highest such rung, as
        Ray's ASHA does) and decides; any other result continues."""
        rung = next(
            (
                r
                for r in reversed(range(len(self.levels)))
                if iteration >= self.levels[r] and trial_id not in self.records[r]
            ),
            None,
        )
        if rung is None:
            return CONTINUE
        self.records[rung][trial_id] = -math.inf if math.isnan(score) else score
        if trial_id in self.top(rung):
            self.promoted[rung].add(trial_id)
            return CONTINUE
        self.paused[trial_id] = rung
        return PAUSE

    def top(self, rung: int) -> list[str]:
        """The rung's top ``floor(n / reduction_factor)`` trials, best first."""
        recorded = self.records[rung]
        # The epsilon keeps e.g. 3 / 1.5 at 2 whatever the float rounding.
        n = math.floor(len(recorded) / self.reduction_factor + 1e-9)
        ranked = sorted(recorded, key=recorded.__getitem__, reverse=True)  # stable: ties
        return ranked[:n]

    def promotable(self) -> list[str]:
        """Paused trials now in their rung's top, highest rung first, best first."""
        out = []
        for rung in reversed(range(len(self.levels))):
            out += [
                t
                for t in self.top(rung)
                if self.paused.get(t) == rung and t not in self.promoted[rung]
            ]
        return out

    def leader(self) -> str | None:
        """The best paused trial of the highest rung that has one (ties: the earlier
        recorded), promotable or not; None if no trial is paused."""
        for rung in reversed(range(len(self.levels))):
            waiting = [t for t in self.records[rung] if self.paused.get(t) == rung]
            if waiting:
                return max(waiting, key=self.records[rung].__getitem__)  # first of equals
        return None

    def promote(self, trial_id: str) -> None:
        """``trial_id`` leaves its rung to go on: it no longer waits there."""
        rung = self.paused.pop(trial_id)
        self.promoted[rung].add(trial_id)

    def forget(self, trial_id: str) -> None:
        """The trial ended (stopped, failed, removed): it waits nowhere. Its scores stay in
        the rungs: the trials after it are ranked against them, as in Ray's ASHA."""
        self.paused.pop(trial_id, None)

    def describe(self) -> str:
        return " | ".join(
            f"rung {level:g}: {len(rec)} recorded, {len(self.promoted[r])} went on, "
            f"{sum(1 for p in self.paused.values() if p == r)} paused"
            for r, (level, rec) in enumerate(zip(self.levels, self.records, strict=True))
        )


class PauseAwareLimiter(ConcurrencyLimiter):
    """Ray's ``ConcurrencyLimiter`` whose limit counts the trials that hold a slot: a
    paused trial gives its slot up (``on_pause``) and a promoted one takes one back
    (``on_unpause``), both told by :class:`PromotionScheduler`. A paused trial that is
    ended later still reaches the searcher's ``on_trial_complete``. Both hooks pass on to
    the wrapped searcher, when it has them (:class:`search.searcher.FidelityOptunaSearch`
    tells Optuna)."""

    def __init__(self, searcher: Any, max_concurrent: int) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.paused: set[str] = set()

    def on_pause(self, trial_id: str) -> None:
        if trial_id in self.live_trials:
            self.live_trials.remove(trial_id)
            self.num_unfinished_live_trials -= 1
            self.paused.add(trial_id)
        _pass_on(self.searcher, "on_pause", trial_id)

    def on_unpause(self, trial_id: str) -> None:
        if trial_id in self.paused:
            self.paused.remove(trial_id)
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        _pass_on(self.searcher, "on_unpause", trial_id)

    def has_room(self) -> bool:
        """Whether a trial could take a slot now."""
        limited = ray_internals.limits_concurrency(self)
        return not limited or len(self.live_trials) < self.max_concurrent

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self.paused:  # not live, so the parent would not pass it on
            self.paused.remove(trial_id)
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        # A restored search (Tuner.restore) requeues its paused trials to run: they hold
        # slots again, and the new scheduler pauses them afresh at their next rung. (The
        # searcher, told nothing here, moves each to a new Optuna trial at its first
        # result: its pause left the Optuna trial PRUNED.)
        self.live_trials |= self.paused
        self.num_unfinished_live_trials += len(self.paused)
        self.paused = set()


class PromotionScheduler(FIFOScheduler):
    """Promotion ASHA as a Tune scheduler (see the module docstring). One bracket;
    ``time_attr`` must grow by one per report (our trainables: one report per epoch)."""

    _reached_max_t = False  # (a scheduler pickled before this attribute existed)

    def __init__(
        self,
        time_attr: str = "training_iteration",
        metric: str | None = None,
        mode: str | None = None,
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 4,
    ) -> None:
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        levels = rung_levels(grace_period, reduction_factor, max_t)
        super().__init__()
        self._time_attr, self._max_t = time_attr, max_t
        self._metric, self._mode = metric, mode
        self._rungs = Rungs(levels, reduction_factor)
        # Paused trials given a slot to resume in, in the order they are to resume.
        self._resuming: list[str] = []
        self._ended = 0  # paused trials ended with the search
        self._reached_max_t = False  # whether any trial has reported at max_t

    # ------------------------------------------------------------------ Tune's API

    @property
    def supports_buffered_results(self) -> bool:
        return False  # a pause must come at the rung's own result

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        if self._metric is None and self._mode:
            self._metric = DEFAULT_METRIC
        return True

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(
                f"{type(self).__name__} needs a metric and a mode: pass them to it or to "
                "tune.TuneConfig()"
            )
        _limiter(tune_controller)  # refuses a limiter that would wait for ever

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        tid = trial.trial_id
        if tid in self._resuming:
            self._resuming.remove(tid)  # it runs: its slot is its own
        elif tid in self._rungs.paused:
            # Reporting although paused: Tune restarted it (a failure while it was being
            # paused, retried from its checkpoint). It runs again and holds a slot.
            self._rungs.promote(tid)
            _tell(tune_controller, "on_unpause", tid)
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        if result[self._time_attr] >= self._max_t:
            self._reached_max_t = True
            return TrialScheduler.STOP
        sign = 1.0 if self._mode == "max" else -1.0
        value = result[self._metric]
        score = float(value) if isinstance(value, int | float) else math.nan  # NaN: worst
        if self._rungs.on_result(tid, result[self._time_attr], sign * score) == CONTINUE:
            return TrialScheduler.CONTINUE
        # Its slot goes to the best promotable trial, if any, before the searcher can
        # fill it with a new trial (the controller asks the searcher first).
        _tell(tune_controller, "on_pause", tid)
        self._give_slot(tune_controller)
        return TrialScheduler.PAUSE

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict):
        self._ended_trial(tune_controller, trial)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        # Called once a trial fails for good (a retry is not an error here).
        self._ended_trial(tune_controller, trial)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        # A PENDING or PAUSED trial stopped: by the end of the search (_end_if_done) or a user.
        self._ended_trial(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        trials = tune_controller.get_trials()
        # 1. A paused trial that was given a slot. Only once Tune has it PAUSED: one whose
        # pause is still being saved is RUNNING, and the controller would hand a trial
        # with an actor another one.
        resume = self._next_to_resume(trials)
        if resume is not None:
            return resume
        # 2. A promotable one, when a slot is free: after a failure, or with no limit.
        limiter = _limiter(tune_controller)
        if (limiter is None or limiter.has_room()) and self._give_slot(tune_controller):
            resume = self._next_to_resume(trials)
            if resume is not None:
                return resume
        # 3. A new trial, as FIFO.
        for t in trials:
            if t.status == Trial.PENDING:
                return t
        # 4. The end: nothing can change a rung any more, so nobody waiting can be promoted
        # by the rules; the leader is, while no trial has reached max_t.
        return self._end_if_done(tune_controller, trials)

    def debug_string(self) -> str:
        return (
            f"Using promotion ASHA: {len(self._rungs.paused)} paused, "
            f"{len(self._resuming)} resuming, {self._ended} ended paused"
            + ("" if self._reached_max_t else ", none at max_t yet")
            + "; "
            + self._rungs.describe()
        )

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    # ------------------------------------------------------------------ helpers

    def _next_to_resume(self, trials: list[Trial]) -> Trial | None:
        paused = {t.trial_id: t for t in trials if t.status == Trial.PAUSED}
        return next((paused[t] for t in self._resuming if t in paused), None)

    def _give_slot(self, tune_controller: TuneController, trial_id: str | None = None) -> bool:
        """Hand a slot to ``trial_id`` (paused), or else to the best promotable trial not
        yet given one; False if none."""
        if trial_id is None:
            waiting = [t for t in self._rungs.promotable() if t not in self._resuming]
            if not waiting:
                return False
            trial_id = waiting[0]
        self._rungs.promote(trial_id)
        self._resuming.append(trial_id)
        _tell(tune_controller, "on_unpause", trial_id)
        return True

    def _ended_trial(self, tune_controller: TuneController, trial: Trial) -> None:
        tid = trial.trial_id
        # Every trial holds a slot except one waiting at a rung (it gave its slot up).
        held = tid not in self._rungs.paused
        self._rungs.forget(tid)
        if tid in self._resuming:
            self._resuming.remove(tid)
        if held:
            # Its slot passes to a promotable trial, if any: the limiter releases it right
            # after this (the searcher's completion), so the count of slots stays the same
            # and the searcher cannot fill it with a new trial first.
            self._give_slot(tune_controller)

    def _end_if_done(self, tune_controller: TuneController, trials: list[Trial]) -> Trial | None:
        """At the end: the leader to resume while no trial has reached max_t, else None
        (the paused trials, if nothing can change any more, are ended)."""
        if not tune_controller.search_alg.is_finished():
            return None  # the common case, every step: no need to rank the rungs
        to_resume = bool(self._resuming or self._rungs.promotable())
        if not nothing_can_change(True, [t.status for t in trials], to_resume):
            return None
        leader = last_promotion(self._reached_max_t, self._rungs)
        if leader is not None:
            # Nothing runs, so a slot is free: the leader takes it and trains on.
            self._give_slot(tune_controller, leader)
            return self._next_to_resume(trials)
        for t in trials:
            if t.status == Trial.PAUSED:
                self._ended += 1
                tune_controller.stop_trial(t)  # -> on_trial_remove, searcher's completion
                _save_in_experiment_state(tune_controller, t)


def _limiter(tune_controller: TuneController) -> PauseAwareLimiter | None:
    """The search's :class:`PauseAwareLimiter`, or None when nothing limits concurrency;
    a ValueError for a limit that counts paused trials as running."""
    search_alg = tune_controller.search_alg
    searcher = getattr(search_alg, "searcher", None)
    if isinstance(searcher, PauseAwareLimiter):
        return searcher
    if isinstance(searcher, ConcurrencyLimiter) or getattr(search_alg, "max_concurrent", 0):
        raise ValueError(
            "PromotionScheduler pauses trials, and this concurrency limit counts a paused "
            "trial as running (the search would stop starting trials once every slot is "
            "paused): wrap the searcher in search.promotion.PauseAwareLimiter instead of "
            "setting max_concurrent_trials"
        )
    return None


def _save_in_experiment_state(tune_controller: TuneController, trial: Trial) -> None:
    """Have Tune write ``trial``'s new status into its experiment state file.

    The controller rewrites a trial's entry there only when the trial is marked, and
    ``stop_trial`` marks only a trial that has an actor: a paused trial it ends would stay
    PAUSED in the file (and ``Tuner.restore`` would run it again). Marking it is private
    to Ray (:func:`pneumotune.compat.ray_internals.mark_trial_to_checkpoint`); without
    it the file keeps PAUSED, which search.results still reads as stopped by ASHA once
    the search has ended."""
    ray_internals.mark_trial_to_checkpoint(tune_controller, trial)


def _tell(tune_controller: TuneController, hook: str, trial_id: str) -> None:
    """``on_pause`` or ``on_unpause``: to the limiter, which passes it on to its searcher;
    with no limiter, to the searcher itself."""
    limiter = _limiter(tune_controller)
    if limiter is not None:
        getattr(limiter, hook)(trial_id)
    else:
        _pass_on(getattr(tune_controller.search_alg, "searcher", None), hook, trial_id)


def _pass_on(searcher: Any, hook: str, trial_id: str) -> None:
    """Call the searcher's hook if it has one (Ray's base Searcher has none)."""
    method = getattr(searcher, hook, None)
    if method is not None:
        method(trial_id)
