"""A real search (Ray Tune + OptunaSearch + ASHA) over a cheap trainable: the wiring."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pneumotune.data.dataset import read_manifest
from pneumotune.search.results import summarise
from pneumotune.search.tuner import plan_search, run_search
from tests.search_tests.cheap import cheap_trial, make_cheap_trial
from tests.search_tests.helpers import wiring_experiment


@pytest.fixture(scope="module")
def finished(tiny_dataset, ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("results")
    plan = plan_search(wiring_experiment(), tiny_dataset, name="wiring", storage=storage)
    return plan, run_search(plan, trainable=cheap_trial)


def test_tutorial_point_runs_first(finished):
    plan, summary = finished
    assert len(summary.trials) == 8
    first = summary.trials[0]
    assert first.is_tutorial
    # 256 px is not stored: the largest stored size stands in; 16 filters and lr 1e-3 as given.
    assert plan.tutorial_point == {"img_size": 64, "base_filters": 16, "lr": 1.0e-3}
    assert {k: first.config[k] for k in plan.tutorial_point} == plan.tutorial_point
    assert summary.tutorial is first


def test_optuna_suggestions_are_used(finished):
    _, summary = finished
    lrs = [t.config["lr"] for t in summary.trials]
    assert len(set(lrs)) == 8  # every trial got its own suggestion
    assert all(1.0e-4 <= lr <= 1.0e-2 for lr in lrs)
    assert {t.config["img_size"] for t in summary.trials} <= {32, 64}
    assert all(t.config["depth"] == 2 and t.config["epochs"] == 4 for t in summary.trials)


def test_asha_stops_some_trials_early(finished):
    _, summary = finished
    counts = summary.counts()
    assert counts.get("stopped by ASHA", 0) >= 1, summary.describe()
    assert counts.get("completed", 0) >= 1
    for t in summary.trials:
        assert (t.epochs < 4) == (t.outcome == "stopped by ASHA")


def test_best_trial_is_the_best_reported_value(finished):
    _, summary = finished
    # Computed independently of search.results: Tune's own progress.csv files.
    best_by_trial = {}
    for t in summary.trials:
        progress = pd.read_csv(t.path / "progress.csv")
        best_by_trial[t.trial_id] = progress["val_iou"].max()
    expected = max(best_by_trial, key=best_by_trial.get)
    assert summary.best.trial_id == expected
    assert summary.best.best("val_iou", "max")[0] == pytest.approx(best_by_trial[expected])
    written = json.loads((summary.path / "search.json").read_text())
    assert written["best_trial"] == expected
    assert written["gain_over_tutorial"] == pytest.approx(
        best_by_trial[expected] - best_by_trial[summary.tutorial.trial_id]
    )


def test_trials_receive_the_arrays_of_their_size(finished, tiny_dataset):
    _, summary = finished
    labelled = read_manifest(tiny_dataset)["counts"]["labelled"]
    for t in summary.trials:
        last = t.history[-1]
        size = t.config["img_size"]
        assert last["image_shape"] == [size, size]
        assert last["n_train"] + last["n_val"] == labelled
        assert last["n_val"] > 0
        # One checkpoint per epoch, Ray keeps at most two.
        assert 1 <= len(list(t.path.glob("checkpoint_*"))) <= 2


def test_status_reads_the_directory_without_ray(finished):
    _, summary = finished
    again = summarise(summary.path)
    assert [t.trial_id for t in again.trials] == [t.trial_id for t in summary.trials]
    text = again.describe()
    assert "Best trial" in text and "Gain over the tutorial" in text
    # The gain says how long the tutorial's trial ran: ASHA may have stopped it early.
    tut = again.tutorial
    assert f"{tut.trial_id}, {tut.outcome} after {tut.epochs} epochs)" in text


def test_status_reads_files_a_running_search_is_writing(finished, tmp_path):
    """`status` on a live search meets files caught mid-write: a starting trial's empty
    params.json, a half-written result line, a truncated experiment state."""
    import shutil

    _, summary = finished
    copy = shutil.copytree(summary.path, tmp_path / summary.path.name)
    trials = sorted(d for d in copy.iterdir() if (d / "params.json").exists())
    (trials[0] / "params.json").write_text("")
    with (trials[1] / "result.json").open("a") as f:
        f.write('{"training_iteration": 9, "val_')
    for state in copy.glob("experiment_state-*.json"):
        state.write_text(state.read_text()[:100])
    again = summarise(copy)
    assert len(again.trials) == len(summary.trials)
    before = {t.trial_id: t.epochs for t in summary.trials}
    assert {t.trial_id: t.epochs for t in again.trials} == before
    again.describe()


def test_failing_trial_is_retried_from_its_checkpoint_then_recorded(
    tiny_dataset, ray_local, tmp_path
):
    log = tmp_path / "attempts.jsonl"
    exp = wiring_experiment(num_samples=4, max_failures=1, asha={"grace_period": 4})
    plan = plan_search(exp, tiny_dataset, name="failing", storage=tmp_path)
    # Every trial below lr 1e-3 fails at epoch 2; the tutorial point (lr 1e-3) does not.
    trainable = make_cheap_trial(fail_below_lr=1.0e-3, attempt_log=str(log))
    summary = run_search(plan, trainable=trainable)

    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    failed = [t for t in summary.trials if t.outcome == "failed"]
    assert failed, summary.describe()
    for t in failed:
        starts = [a["start"] for a in attempts if a["lr"] == t.config["lr"]]
        assert starts == [0, 1]  # first attempt from scratch, the retry from epoch 1's checkpoint
        assert t.num_failures == 2
        assert "planted failure at epoch 2" in (t.error or "")
        assert t.epochs == 1
    # The search went on: every other trial ran to its end.
    assert all(t.outcome == "completed" for t in summary.trials if t not in failed)
    assert len(summary.trials) == 4
    assert "failed after 2 attempt(s): " in summary.describe()


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tiny_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "attempts.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "tests.search_tests.kill_driver",
        str(tiny_dataset),
        str(tmp_path),
        str(log),
    ]
    # Tune snapshots its experiment state every second here (default: adaptive).
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    first = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    exp_dir = tmp_path / "killed"
    deadline = time.time() + 240
    while time.time() < deadline:
        if (exp_dir / "pneumotune.json").exists():
            done = [t for t in summarise(exp_dir).trials if t.outcome == "completed"]
            running = [t for t in summarise(exp_dir).trials if t.outcome == "running" and t.epochs]
            if len(done) >= 2 and running:
                break
        time.sleep(0.5)
    else:
        first.kill()
        pytest.fail("the first driver did not finish two trials in time")
    time.sleep(1.5)  # let a state snapshot include the running trial's checkpoint
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started
    first.wait()
    before = summarise(exp_dir)
    finished_before = {t.trial_id for t in before.trials if t.outcome == "completed"}

    second = subprocess.run(
        [*cmd, "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    after = summarise(exp_dir)
    assert len(after.trials) == 6
    assert all(t.outcome == "completed" for t in after.trials), after.describe()
    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    for t in after.trials:
        runs = [a for a in attempts if a["lr"] == t.config["lr"]]
        if t.trial_id in finished_before:
            assert len(runs) == 1, f"finished trial {t.trial_id} ran again"
    # At least one unfinished trial went on from its checkpoint rather than from scratch.
    resumed = [a for a in attempts if a["start"] > 0]
    assert resumed, attempts
    # The resumed search went on with the same Optuna study, in the results folder.
    import optuna

    from pneumotune.search.tuner import journal_storage

    study = optuna.load_study(study_name="killed", storage=journal_storage(exp_dir))
    finished = [s for s in study.trials if s.state.is_finished()]
    assert len(finished) == 6, [s.state for s in study.trials]
    assert {round(s.params["lr"], 12) for s in finished} == {
        round(t.config["lr"], 12) for t in after.trials
    }


@pytest.mark.parametrize(
    ("initial_epoch", "epochs", "done"),
    [(0, 24, False), (23, 24, False), (24, 24, True), (25, 24, True), (1, 1, True)],
)
def test_a_trial_restored_after_its_last_epoch_has_nothing_left(initial_epoch, epochs, done):
    """Seen on a resumed atlas: killed after a trial's last checkpoint but before Tune
    recorded its end, the trial was restored at epoch 24 of 24 and fit() refused it."""
    from pneumotune.search.trainable import nothing_left

    assert nothing_left(initial_epoch, epochs) is done
