"""Promotion ASHA (search/promotion.py): its decisions table by table, then real searches on
a real local Ray and real Tune: trials pause at rungs and resume from their checkpoints,
the search ends, Optuna sees the right states, and a resumed ResUNet trial trains bit
for bit as the uninterrupted one."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import optuna
import pytest
from ray import tune
from ray.tune.experiment import Trial

from pneumotune.errors import ConfigError
from pneumotune.search.config import parse_experiment
from pneumotune.search.promotion import (
    CONTINUE,
    PAUSE,
    PauseAwareLimiter,
    PromotionScheduler,
    Rungs,
    last_promotion,
    nothing_can_change,
    rung_levels,
)
from pneumotune.search.searcher import FidelityOptunaSearch
from pneumotune.search.tuner import journal_storage, plan_search, run_search
from tests.search_tests.cheap import cheap_trial
from tests.search_tests.helpers import wiring_experiment

# --------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("grace", "eta", "max_t", "levels"),
    [
        (1, 2, 8, (1, 2, 4)),  # max_t itself is no rung: a trial there has finished
        (1, 4, 8, (1, 4)),  # demo.yaml's
        (2, 3, 24, (2, 6, 18)),
        (1, 2, 1, ()),  # nothing to pause at: every trial runs to max_t
        (3, 2, 3, ()),
        (1, 1.5, 4, (1, 1.5, 2.25, 3.375)),  # a trial pauses at the first epoch >= a level
    ],
)
def test_rungs_lie_at_grace_times_eta_to_the_k_below_max_t(grace, eta, max_t, levels):
    assert rung_levels(grace, eta, max_t) == pytest.approx(levels)


@pytest.mark.parametrize(("grace", "eta", "max_t"), [(0, 2, 8), (1, 1, 8), (1, 2, 0)])
def test_impossible_rungs_are_refused(grace, eta, max_t):
    with pytest.raises(ValueError, match="need grace_period >= 1"):
        rung_levels(grace, eta, max_t)


# (trial, epoch, score, decision, promotable afterwards), or ("promote", trial): rungs at
# epochs 1 and 2, reduction factor 2: a trial goes on only if it is in the top floor(n / 2)
# of the n scores at its rung so far, and waits there otherwise.
STEPS = [
    ("a", 1, 0.5, PAUSE, []),  # the first at a rung always waits: top floor(1/2) = none
    ("b", 1, 0.3, PAUSE, ["a"]),  # top 1 of 2 is a: a has become promotable
    ("promote", "a"),
    ("c", 1, 0.9, CONTINUE, []),  # top 1 of 3 is c itself: it goes on at once
    ("d", 1, 0.1, PAUSE, []),  # top 2 of 4: c and a, both gone on
    ("e", 1, 0.4, PAUSE, []),  # top 2 of 5: still c and a
    ("f", 1, 0.35, PAUSE, ["e"]),  # top 3 of 6: c, a, e
    ("a", 2, 0.6, PAUSE, ["e"]),  # a is the first at rung 2
    ("c", 1.5, 0.8, CONTINUE, ["e"]),  # between rungs: nothing to decide
    ("c", 2, 0.7, CONTINUE, ["e"]),  # top 1 of 2 at rung 2 is c
    ("g", 2, 0.65, PAUSE, ["e"]),  # jumped past rung 1: recorded at rung 2 only
    ("h", 2, 0.2, PAUSE, ["g", "e"]),  # top 2 of 4 at rung 2: c, g; the higher rung first
]


def test_a_trial_waits_at_its_rung_until_later_arrivals_rank_it_in_the_top():
    rungs = Rungs(rung_levels(1, 2, 4), reduction_factor=2)
    for step in STEPS:
        if step[0] == "promote":
            rungs.promote(step[1])
            continue
        trial, epoch, score, decision, promotable = step
        assert rungs.on_result(trial, epoch, score) == decision, step
        assert rungs.promotable() == promotable, step
    assert rungs.paused == {"b": 0, "d": 0, "e": 0, "f": 0, "a": 1, "g": 1, "h": 1}
    assert "g" not in rungs.records[0]


def test_the_best_of_a_rung_is_promoted_first_and_ties_go_to_the_earlier_trial():
    rungs = Rungs((1, 2), reduction_factor=2)
    decisions = [rungs.on_result(t, 1, v) for t, v in [("a", 0.3), ("b", 0.2), ("c", 0.1)]]
    assert decisions == [PAUSE, PAUSE, PAUSE]
    assert rungs.on_result("d", 1, 0.05) == PAUSE
    assert rungs.promotable() == ["a", "b"]  # top 2 of 4, best first

    rungs = Rungs((1, 2), reduction_factor=2)
    assert rungs.on_result("a", 1, 0.2) == PAUSE
    assert rungs.on_result("b", 1, 0.5) == CONTINUE
    assert rungs.on_result("c", 1, 0.5) == PAUSE  # equal to b, later: b keeps the top 1
    assert rungs.on_result("d", 1, 0.1) == PAUSE
    assert rungs.top(0) == ["b", "c"] and rungs.promotable() == ["c"]


def test_nan_is_the_worst_score_and_a_forgotten_trial_still_ranks_the_others():
    rungs = Rungs((1,), reduction_factor=2)
    assert rungs.on_result("a", 1, math.nan) == PAUSE
    assert rungs.on_result("b", 1, 0.0) == CONTINUE  # any number beats NaN
    rungs.forget("a")  # a failed: it waits nowhere, but its score stays at the rung
    assert rungs.paused == {}
    assert rungs.on_result("c", 1, -1.0) == PAUSE  # top 1 of 3 is b
    assert rungs.promotable() == []


def test_a_fractional_reduction_factor_counts_its_top_exactly():
    rungs = Rungs((1,), reduction_factor=1.5)
    for i, score in enumerate([0.1, 0.2, 0.3]):
        rungs.on_result(f"t{i}", 1, score)
    assert rungs.top(0) == ["t2", "t1"]  # floor(3 / 1.5) = 2, not 1.999...


@pytest.mark.parametrize(
    ("finished", "statuses", "to_resume", "end"),
    [
        (True, [Trial.PAUSED, Trial.TERMINATED], False, True),
        (True, [Trial.PAUSED, Trial.ERROR, Trial.PAUSED], False, True),
        (False, [Trial.PAUSED], False, False),  # the searcher may still give a trial
        (True, [Trial.PAUSED, Trial.RUNNING], False, False),  # it may promote a paused one
        (True, [Trial.PAUSED, Trial.PENDING], False, False),  # so may a trial about to start
        (True, [Trial.PAUSED], True, False),  # one is to resume
        (True, [Trial.TERMINATED], False, False),  # nothing paused: Tune ends it by itself
    ],
)
def test_paused_trials_are_ended_only_when_nothing_can_change_a_rung(
    finished, statuses, to_resume, end
):
    assert nothing_can_change(finished, statuses, to_resume) is end


# Steps at rungs 1 and 2, reduction factor 2: (trial, epoch, score) arrivals, or
# ("promote", trial); the leader: the best paused trial of the highest rung that has one.
LEADERS = [
    ([], None),  # nobody waits
    ([("a", 1, 0.5)], "a"),  # the first at a rung waits: it leads
    ([("a", 1, 0.5), ("b", 1, 0.9)], "a"),  # b went on; a waits
    ([("a", 1, 0.5), ("b", 1, 0.9), ("promote", "a")], None),  # a left too: nobody waits
    ([("a", 1, 0.5), ("b", 1, 0.3), ("c", 1, 0.4)], "a"),  # promotable or not
    ([("a", 1, 0.5), ("b", 1, 0.3), ("c", 1, 0.4), ("promote", "a")], "c"),  # a left
    ([("a", 1, 0.5), ("b", 1, 0.3), ("promote", "a"), ("a", 2, 0.1)], "a"),  # highest rung
    ([("a", 1, 0.4), ("b", 1, 0.4), ("c", 1, 0.1), ("promote", "a")], "b"),
    ([("a", 1, 0.2), ("b", 1, 0.2), ("c", 1, 0.1), ("d", 1, 0.1)], "a"),  # ties: earlier
    ([("a", 1, math.nan), ("b", 1, -1.0), ("c", 1, -2.0)], "c"),  # NaN is the worst
]


@pytest.mark.parametrize(("steps", "leader"), LEADERS)
def test_the_leader_is_the_best_paused_trial_of_the_highest_rung(steps, leader):
    rungs = Rungs((1, 2), reduction_factor=2)
    for step in steps:
        if step[0] == "promote":
            rungs.promote(step[1])
        else:
            rungs.on_result(*step)
    assert rungs.leader() == leader
    # Once nothing can change: promote it while no trial has reached max_t, else end all.
    assert last_promotion(False, rungs) == leader
    assert last_promotion(True, rungs) is None


def test_asha_mode_in_the_experiment_yaml():
    base = {"name": "m", "fixed": {"depth": 2, "img_size": 32}}
    assert parse_experiment(base).asha.mode == "stop"  # the default, for now
    assert parse_experiment({**base, "asha": {"mode": "promote"}}).asha.mode == "promote"
    with pytest.raises(ConfigError, match=r"asha.mode must be one of \['stop', 'promote'\]"):
        parse_experiment({**base, "asha": {"mode": "pause"}})


# --------------------------------------------------------------------------- real searches

SPACE = {
    "img_size": "stored",
    # The tutorial's point (16 filters, lr 1e-3) is the cheap trainable's best config at
    # every epoch, so it is the first to reach rung 2, waits there, and must be promoted.
    "base_filters": [16, 8],
    "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
}


def _experiment():
    """The wiring experiment under promotion ASHA, over :data:`SPACE`; no retry of a failed
    trial (``max_failures`` 0), so that a pause or resume that breaks a trial shows."""
    return wiring_experiment(
        name="promote",
        max_failures=0,
        asha={"grace_period": 1, "reduction_factor": 2, "mode": "promote"},
        space=SPACE,
    )


class Watch(tune.Callback):
    """The most trials running at once, and every result in the order Tune got it."""

    def __init__(self) -> None:
        self.most_running = 0
        self.results: list[tuple[str, int]] = []

    def on_step_end(self, iteration, trials, **info):
        running = sum(t.status == Trial.RUNNING for t in trials)
        self.most_running = max(self.most_running, running)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append((trial.trial_id, result["training_iteration"]))


@pytest.fixture(scope="module")
def promoted(tiny_dataset, ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("results")
    plan = plan_search(_experiment(), tiny_dataset, name="promote", storage=storage)
    watch = Watch()
    lines = io.StringIO()
    with contextlib.redirect_stdout(lines):  # the progress lines (search/watch/progress.py)
        summary = run_search(plan, trainable=cheap_trial, callbacks=[watch])
    study = optuna.load_study(study_name="promote", storage=journal_storage(plan.path))
    watch.lines = lines.getvalue()
    return summary, study, watch


def test_the_search_ends_and_every_trial_has_an_outcome(promoted):
    summary, _, watch = promoted
    assert len(summary.trials) == 8
    outcomes = [t.outcome for t in summary.trials]
    assert set(outcomes) <= {"completed", "stopped by ASHA"}, summary.describe()
    assert "stopped by ASHA" in outcomes and "completed" in outcomes
    # A trial left paused was ended at the rung it waited at.
    assert all(t.epochs in (1, 2, 4) for t in summary.trials), summary.describe()
    assert watch.most_running <= 2  # paused trials gave their slots up, no more


def test_tunes_own_state_file_records_the_ended_paused_trials_as_terminated(promoted):
    summary, _, _ = promoted
    (state_file,) = summary.path.glob("experiment_state-*.json")
    rows = json.loads(state_file.read_text())["trial_data"]
    statuses = {json.loads(trial)["status"] for trial, _ in rows}
    assert statuses == {"TERMINATED"}  # not PAUSED: Tuner.restore would run them again


def test_a_paused_trial_reads_as_paused_then_as_stopped_by_asha_once_the_search_ended():
    from pneumotune.search.results import TrialRecord, _outcome

    t = TrialRecord("t1", "PAUSED", {}, [{"training_iteration": 1}], None)
    assert _outcome(t, max_t=4, ended=False) == "paused"
    assert _outcome(t, max_t=4, ended=True) == "stopped by ASHA"


def test_a_paused_trial_resumes_from_its_checkpoint_when_promoted(promoted):
    summary, _, watch = promoted
    best = summary.tutorial
    assert best is not None and best.outcome == "completed"
    history = best.history
    assert [r["training_iteration"] for r in history] == [1, 2, 3, 4]
    # The first trial at rung 2 waits there (top floor(1/2) of 1 is empty), so it went on
    # from its epoch-2 checkpoint once a second trial reached rung 2 behind it.
    assert history[2]["resumed_from"] == 2 and history[3]["resumed_from"] == 2
    mine = [i for i, (tid, _) in enumerate(watch.results) if tid == best.trial_id]
    paused_at = mine[1]  # its epoch 2
    others = {tid for tid, _ in watch.results[paused_at + 1 : mine[2]]}
    assert others - {best.trial_id}, "nothing ran between its pause and its resume"
    # The progress lines say so.
    assert f"trial {best.trial_id} paused after epoch 2/4: waits at its rung" in watch.lines
    assert f"trial {best.trial_id} promoted: resumes after epoch 2" in watch.lines


def test_optuna_sees_ended_paused_trials_as_pruned_and_promoted_ones_go_on(promoted):
    summary, study, _ = promoted
    by_lr = {t.params["lr"]: t for t in study.trials}
    assert len(by_lr) == 8
    for t in summary.trials:
        ot = by_lr[t.config["lr"]]
        scores = {r["training_iteration"]: r["val_iou"] for r in t.history}
        assert ot.intermediate_values == scores, t.trial_id  # every epoch, across pauses
        if t.outcome == "completed":
            assert ot.state == optuna.trial.TrialState.COMPLETE
        else:
            assert ot.state == optuna.trial.TrialState.PRUNED, t.trial_id
            assert ot.value == scores[t.epochs]  # its score at the rung it waited at


def test_a_stock_concurrency_limit_is_refused(ray_local, tmp_path):
    """Tune's max_concurrent_trials counts a paused trial as running: once every slot is
    paused the search would wait for ever. The scheduler says so before any trial runs."""
    from ray.tune.search.optuna import OptunaSearch

    tuner = tune.Tuner(
        lambda config: tune.report({"score": 1.0}),
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            search_alg=OptunaSearch(
                space={"x": optuna.distributions.FloatDistribution(0, 1)},
                metric="score",
                mode="max",
            ),
            scheduler=PromotionScheduler(max_t=4, grace_period=1, reduction_factor=2),
            num_samples=2,
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    with pytest.raises(Exception, match="PauseAwareLimiter"):
        tuner.fit()


def _epoch_trainable(epochs: int):
    """Reports ``x * epoch`` each epoch with a checkpoint, and resumes from it (nested, so
    that Tune ships it by value)."""

    def train(config):
        import json
        import tempfile
        from pathlib import Path

        from ray import tune

        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start = json.loads((Path(d) / "epoch.json").read_text())
        for epoch in range(start + 1, epochs + 1):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "epoch.json").write_text(json.dumps(epoch))
                tune.report(
                    {"score": config["x"] * epoch, "resumed_from": start},
                    checkpoint=tune.Checkpoint.from_directory(d),
                )

    return train


def test_a_finite_search_trains_its_leader_to_max_t(ray_local, tmp_path):
    """Three trials, reduction factor 4: each waits at rung 1 (top floor(n / 4) of n <= 3
    is empty), so without a last promotion no trial would reach max_t. The best at rung 1
    is promoted once nothing else can change, and trains to max_t; the others end paused.
    Optuna has every pause PRUNED, and the leader's resumed trial COMPLETE."""
    storage = journal_storage(tmp_path / "study")
    searcher = FidelityOptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0.1, 1.0)},
        metric="score",
        mode="max",
        max_t=4,
        storage=storage,
        study_name="end",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    tuner = tune.Tuner(
        _epoch_trainable(4),
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            search_alg=PauseAwareLimiter(searcher, max_concurrent=1),
            scheduler=PromotionScheduler(max_t=4, grace_period=1, reduction_factor=4),
            num_samples=3,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    reached = {r.config["x"]: r.metrics["training_iteration"] for r in results}
    best = max(reached)
    assert reached == {x: 4 if x == best else 1 for x in reached}, reached
    leader = next(r for r in results if r.config["x"] == best)
    assert leader.metrics["resumed_from"] == 1  # from its rung's checkpoint

    study = optuna.load_study(study_name="end", storage=storage)
    states = sorted((t.state.name, len(t.intermediate_values)) for t in study.trials)
    assert states == [("COMPLETE", 4), ("PRUNED", 1), ("PRUNED", 1), ("PRUNED", 1)]
    (done,) = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert done.params == {"x": best} and done.value == pytest.approx(4 * best)


@pytest.mark.slow
def test_the_replay_resumes_paused_trials_at_their_next_epoch(ray_local, tmp_path):
    from pneumotune.search.replay import Strategy, load_atlas, run_one
    from tests.search_tests.helpers import MAX_T, write_atlas

    atlas = load_atlas(write_atlas(tmp_path / "atlas.csv"))
    strategy = Strategy("tpe", asha=True, grace=1, reduction=2, startup=2, mode="promote")
    seen = run_one(atlas, strategy, seed=1, budget=3, scale=0.05, workdir=tmp_path)
    assert len(seen) == 3 * MAX_T
    study = optuna.load_study(study_name="s1", storage=journal_storage(tmp_path / "s1"))
    for t in study.trials:  # paused ones included: each its recorded curve, in order
        curve = [v for v, _ in atlas.curves[(t.params["lr"], t.params["width"])][0]]
        values = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        assert sorted(t.intermediate_values) == list(range(1, len(values) + 1))
        assert values == curve[: len(values)], t.params


# --------------------------------------------------------------------------- bit for bit

TIMING = ("epoch_seconds", "train_seconds", "images_per_s", "first_step_seconds")


def _resunet_experiment(mode: str, num_samples: int):
    return parse_experiment(
        {
            "name": f"exact-{mode}",
            "epochs": 2,
            "num_samples": num_samples,
            "max_concurrent": 1,
            "seed": 0,
            "max_failures": 0,
            "asha": {"grace_period": 1, "reduction_factor": 2, "mode": mode},
            # Dropout: its random state is what model.save leaves out (model.seed_states).
            "fixed": {"depth": 2, "batch_size": 8, "img_size": 32, "base_filters": 4},
            "space": {"lr": [3.0e-3], "dropout": [0.2]},  # one config: every trial the same
        }
    )


def _final_weights(trial):
    import keras

    from pneumotune.search.checkpoint import newest_checkpoint

    _, folder = newest_checkpoint(trial.path)
    state = json.loads((folder / "state.json").read_text())
    model = keras.saving.load_model(folder / "model.keras", compile=False)
    return state, model.get_weights()


@pytest.mark.slow
def test_a_paused_and_resumed_resunet_trial_trains_bit_for_bit_as_an_uninterrupted_one(
    tiny_dataset, ray_local, tmp_path
):
    from pneumotune.model.train import METRIC_KEYS

    # Two trials of one config, one slot: the first waits at rung 1 (the first there), the
    # second ties with it there (the same run), so the first, recorded first, is promoted
    # and resumes from its epoch-1 checkpoint in the process the second trained in.
    watch = Watch()
    plan = plan_search(_resunet_experiment("promote", 2), tiny_dataset, storage=tmp_path)
    paused = run_search(plan, callbacks=[watch])
    first, second = paused.trials
    assert watch.results == [(first.trial_id, 1), (second.trial_id, 1), (first.trial_id, 2)]
    assert (first.outcome, second.outcome) == ("completed", "stopped by ASHA")

    plan = plan_search(_resunet_experiment("stop", 1), tiny_dataset, storage=tmp_path)
    (straight,) = run_search(plan).trials

    keys = [k for k in METRIC_KEYS if k not in TIMING] + ["epoch", "training_iteration"]
    assert [{k: r[k] for k in keys} for r in first.history] == [
        {k: r[k] for k in keys} for r in straight.history
    ]  # every loss, metric and learning rate, bit for bit
    state, weights = _final_weights(first)
    straight_state, straight_weights = _final_weights(straight)
    assert state == straight_state and state["epoch"] == 2
    assert all(np.array_equal(a, b) for a, b in zip(weights, straight_weights, strict=True))
