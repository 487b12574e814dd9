"""FidelityOptunaSearch under promotion ASHA (search/searcher.py), driven as Tune drives it
(suggest, on_pause before the rung's on_trial_result, on_unpause, on_trial_complete) on a
real Optuna study, without Ray: a paused trial is PRUNED at its rung at once, a promoted
one goes on in a new Optuna trial with its parameters and its earlier epochs."""

from __future__ import annotations

import logging

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from pneumotune.search.searcher import FidelityOptunaSearch
from pneumotune.search.tuner import journal_storage

SPACE = {
    "x": FloatDistribution(0.0, 1.0),
    "width": CategoricalDistribution([8, 16]),
}
MAX_T = 4
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _searcher(tmp_path, n_startup_trials=10, space=SPACE, **options):
    searcher = FidelityOptunaSearch(
        space=space,
        metric="score",
        mode="max",
        max_t=MAX_T,
        storage=journal_storage(tmp_path),
        study_name="s",
        sampler=optuna.samplers.TPESampler(
            seed=0, n_startup_trials=n_startup_trials, multivariate=True, constant_liar=True
        ),
        **options,
    )
    return searcher


def _study(tmp_path):
    return optuna.load_study(study_name="s", storage=journal_storage(tmp_path))


def _result(epoch, score):
    return {"training_iteration": epoch, "score": score}


def _pause_at(searcher, trial_id, epoch, score):
    """Tune's order: the scheduler pauses (on_pause), then the searcher gets the result."""
    searcher.on_pause(trial_id)
    searcher.on_trial_result(trial_id, _result(epoch, score))


def test_a_paused_trial_is_pruned_at_its_rung_and_resumes_in_a_new_optuna_trial(tmp_path):
    searcher = _searcher(tmp_path)
    config = searcher.suggest("a")
    searcher.on_trial_result("a", _result(1, 0.1))
    _pause_at(searcher, "a", 2, 0.2)

    (paused,) = _study(tmp_path).trials
    assert paused.state == TrialState.PRUNED
    assert paused.intermediate_values == {1: 0.1, 2: 0.2}
    assert paused.value == 0.2  # its score at the rung: TPE ranks it among rung-2 scores
    assert paused.params == config

    searcher.on_unpause("a")  # promoted: resumes from its epoch-2 checkpoint
    first, resumed = _study(tmp_path).trials
    assert first.state == TrialState.PRUNED  # the pause's record stays
    assert resumed.state == TrialState.RUNNING
    assert resumed.params == config
    assert resumed.intermediate_values == {1: 0.1, 2: 0.2}  # its curve is whole

    searcher.on_trial_result("a", _result(3, 0.3))
    searcher.on_trial_complete("a", _result(4, 0.4))  # max_t
    first, resumed = _study(tmp_path).trials
    assert (first.state, resumed.state) == (TrialState.PRUNED, TrialState.COMPLETE)
    assert resumed.value == 0.4
    assert resumed.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}


def test_a_resumed_trial_that_ends_before_max_t_is_pruned_there(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("a")
    _pause_at(searcher, "a", 1, 0.1)
    searcher.on_unpause("a")
    _pause_at(searcher, "a", 2, 0.2)  # paused again, at the next rung
    searcher.on_trial_complete("a")  # ended by the search's end
    states = [(t.state, t.intermediate_values) for t in _study(tmp_path).trials]
    assert states == [(TrialState.PRUNED, {1: 0.1}), (TrialState.PRUNED, {1: 0.1, 2: 0.2})]


def test_a_paused_trial_ended_with_the_search_is_not_told_twice(tmp_path, caplog):
    searcher = _searcher(tmp_path)
    searcher.suggest("a")
    _pause_at(searcher, "a", 1, 0.5)
    with caplog.at_level(logging.WARNING):
        searcher.on_trial_complete("a")  # Tune's stop_trial of a paused trial: no result
    (t,) = _study(tmp_path).trials
    assert (t.state, t.value, t.intermediate_values) == (TrialState.PRUNED, 0.5, {1: 0.5})
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_tpes_start_up_counts_paused_trials(tmp_path):
    """TPE samples at random until n_startup_trials trials are COMPLETE or PRUNED: paused
    trials left RUNNING would never end its start-up."""
    searcher = _searcher(tmp_path, n_startup_trials=3)
    for k, tid in enumerate(["a", "b", "c", "d"], 1):
        searcher.suggest(tid)
        _pause_at(searcher, tid, 1, 0.1 * k)
        assert len(_study(tmp_path).get_trials(states=FINISHED)) == k
    # A pause told the other way round (the result first) is told at the next suggestion.
    searcher.suggest("e")
    searcher.on_trial_result("e", _result(1, 0.9))
    searcher.on_pause("e")
    searcher.suggest("f")
    assert len(_study(tmp_path).get_trials(states=FINISHED)) == 5


def test_a_restored_paused_trial_that_reports_again_goes_on_in_a_new_optuna_trial(tmp_path):
    searcher = _searcher(tmp_path)
    config = searcher.suggest("a")
    searcher.on_trial_result("a", _result(1, 0.1))
    stale = tmp_path / "stale.pkl"
    searcher.save(str(stale))  # before the pause: older than the study's journal
    _pause_at(searcher, "a", 2, 0.2)
    saved = tmp_path / "saved.pkl"
    searcher.save(str(saved))

    for i, path in enumerate([saved, stale]):
        # Tuner.restore: the paused trial runs again (from its epoch-2 checkpoint) and the
        # searcher is told nothing before its first result.
        restored = _searcher(tmp_path)
        restored.restore(str(path))
        restored.on_trial_result("a", _result(3, 0.3))
        restored.on_trial_complete("a", _result(4, 0.4))
        trials = _study(tmp_path).trials
        assert [t.state for t in trials] == [TrialState.PRUNED] + [TrialState.COMPLETE] * (i + 1)
        assert trials[-1].params == config
        assert trials[-1].intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}


def test_a_resumed_trial_gets_its_own_parameters_even_with_points_still_queued(tmp_path):
    """Ray queues points_to_evaluate in Optuna and asks for the oldest: a resumed trial
    must not take one, and the new trials still get them, in order."""
    points = [{"x": 0.25, "width": 8}, {"x": 0.5, "width": 16}, {"x": 0.75, "width": 8}]
    searcher = _searcher(tmp_path, points_to_evaluate=points)
    assert searcher.suggest("a") == points[0]
    _pause_at(searcher, "a", 1, 0.1)
    searcher.on_unpause("a")
    assert _study(tmp_path).trials[-1].params == points[0]
    searcher.on_trial_result("a", _result(2, 0.2))
    assert searcher.suggest("b") == points[1]
    assert searcher.suggest("c") == points[2]
    assert searcher.suggest("d") not in points


def _define_by_run(trial):
    """A define-by-run space as the product's (search/space.py): a conditional parameter."""
    schedule = trial.suggest_categorical("schedule", ["cosine", "restarts"])
    if schedule == "restarts":
        trial.suggest_int("cycles", 1, 4)
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return {"epochs": MAX_T}  # constants, merged into the config by OptunaSearch


def test_a_define_by_run_space_resumes_with_the_same_parameters(tmp_path):
    points = [{"schedule": "restarts", "cycles": 3, "lr": 1e-3}, {"schedule": "cosine", "lr": 2e-3}]
    searcher = _searcher(tmp_path, space=_define_by_run, points_to_evaluate=points)
    assert searcher.suggest("a") == {**points[0], "epochs": MAX_T}
    _pause_at(searcher, "a", 1, 0.1)
    searcher.on_unpause("a")
    trials = _study(tmp_path).trials  # the queued point taken off the queue between
    first, resumed = trials[0], trials[-1]
    assert resumed.state == TrialState.RUNNING and first.state == TrialState.PRUNED
    assert resumed.params == first.params == points[0]
    assert resumed.distributions == first.distributions
    assert searcher.suggest("b") == {**points[1], "epochs": MAX_T}  # the queue's next
