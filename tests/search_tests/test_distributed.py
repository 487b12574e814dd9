"""Multi-worker trials: a real Tune search whose trial runs a 2-worker
``TensorflowTrainer`` (a tiny ResUNet on CPU), one of its Train workers killed after the
first epoch; then `pneumotune train --from-search` on its results.

One trial keeps this under two minutes on two busy cores: each Train run costs ~20-25 s
of start-up, and the kill makes two."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pneumotune.model.multiworker import rows_for_even_split
from pneumotune.search.checkpoint import MODEL_FILE, STATE_FILE
from pneumotune.search.config import parse_experiment
from pneumotune.search.distributed import (
    RESUMED_FROM,
    TRAIN_NODES,
    TRAIN_WORKERS,
    announce_placement_group,
    delete_train_runs,
    run_forwarding_epochs,
    run_name,
)
from pneumotune.search.tuner import plan_search, run_search

EPOCHS = 3


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("n", "batch", "workers", "dropped"),
    [
        (16, 8, 2, 0),  # no partial batch
        (18, 8, 2, 0),  # last batch of 2: one image each
        (17, 8, 2, 1),  # last batch of 1: a worker would get none
        (10, 8, 4, 2),  # last batch of 2 for 4 workers
        (13, 8, 4, 0),  # last batch of 5 for 4 workers
        (9, 4, 1, 0),  # one worker takes any batch
    ],
)
def test_rows_for_even_split_drops_only_a_too_small_last_batch(n, batch, workers, dropped):
    positive = np.zeros(n, bool)
    positive[::3] = True
    rows = rows_for_even_split(positive, batch, workers, seed=0)
    assert len(rows) == n - dropped
    assert np.all(np.diff(rows) > 0)  # sorted, unique
    rest = len(rows) % batch
    assert rest == 0 or rest >= workers
    assert positive[rows].sum() == positive.sum()  # the rare positives are kept


def test_rows_for_even_split_is_seeded_and_checks_its_input():
    positive = np.zeros(17, bool)
    a = rows_for_even_split(positive, 8, 2, seed=1)
    assert np.array_equal(a, rows_for_even_split(positive, 8, 2, seed=1))
    every_seed = {tuple(rows_for_even_split(positive, 8, 2, seed=s)) for s in range(20)}
    assert len(every_seed) > 1
    # All positive: a positive has to go.
    assert len(rows_for_even_split(np.ones(17, bool), 8, 2, seed=0)) == 16
    with pytest.raises(ValueError, match="smaller than the 4 workers"):
        rows_for_even_split(positive, 2, 4, seed=0)
    with pytest.raises(ValueError, match="3 training images cannot be split over 4"):
        rows_for_even_split(np.zeros(3, bool), 8, 4, seed=0)


def test_delete_train_runs_takes_every_attempts_run_and_nothing_else(tmp_path):
    from pyarrow import fs

    trial = tmp_path / "trial_1"
    runs = [trial / run_name(), trial / run_name()]
    kept = [trial / "checkpoint_000001", trial / "training-notes", trial / "result.json"]
    for d in [*runs, *kept[:2]]:
        (d / "sub").mkdir(parents=True)
    kept[2].write_text("{}")
    delete_train_runs(fs.LocalFileSystem(), str(trial))
    assert sorted(trial.iterdir()) == sorted(kept)
    delete_train_runs(fs.LocalFileSystem(), str(tmp_path / "no-such-trial"))  # no error


# --------------------------------------------------------------------------- search


def _train_worker_pids() -> list[int]:
    """PIDs of Ray Train workers of *this* process's Ray (a raylet we started is their
    parent), not of any other Ray on the machine."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            parent = _ppid(int(entry))
            grandparent = _ppid(parent)
        except (OSError, ValueError, IndexError):
            continue
        if cmdline.startswith(b"ray::RayTrainWorker") and grandparent == os.getpid():
            found.append(int(entry))
    return found


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _kill_a_train_worker_after_the_first_epoch(exp_dir: Path, killed: list) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        for results in exp_dir.glob("trial_*/result.json"):
            if results.read_text().count("\n") >= 1 and (pids := _train_worker_pids()):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(results.parent.name)
                return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def multi_worker_search(tiny_dataset, ray_local, tmp_path_factory):
    exp = parse_experiment(
        {
            "name": "multi",
            "epochs": EPOCHS,
            "num_samples": 1,
            "max_concurrent": 1,  # 2 CPUs: one trial of two 1-CPU workers at a time
            "seed": 0,
            "max_failures": 1,
            "resources": {"cpu": 1, "workers_per_trial": 2},
            "asha": {"grace_period": EPOCHS, "reduction_factor": 2},  # no early stops
            "fixed": {"depth": 2, "batch_size": 8, "img_size": 32, "base_filters": 4},
            "space": {"lr": {"low": 3.0e-4, "high": 3.0e-3, "log": True}},
        }
    )
    plan = plan_search(exp, tiny_dataset, name="multi", storage=tmp_path_factory.mktemp("res"))
    killed: list[str] = []
    killer = threading.Thread(
        target=_kill_a_train_worker_after_the_first_epoch, args=(plan.path, killed), daemon=True
    )
    killer.start()
    summary = run_search(plan)
    killer.join(timeout=1)
    return summary, killed


@pytest.mark.slow
def test_two_worker_trials_report_every_epoch(multi_worker_search):
    summary, _ = multi_worker_search
    assert len(summary.trials) == 1
    for t in summary.trials:
        assert t.outcome == "completed", summary.describe()
        rows = t.history
        assert [r["training_iteration"] for r in rows] == list(range(1, EPOCHS + 1))
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
        for r in rows:
            for key in ("loss", "val_loss", "val_iou", "val_dice", "val_kaggle_dice", "lr"):
                assert math.isfinite(r[key]), (key, r)
            assert r[TRAIN_WORKERS] == 2
            assert r[TRAIN_NODES]  # the node ids the workers ran on
            assert r["images_per_s"] > 0


@pytest.mark.slow
def test_epoch_checkpoints_land_in_the_trial_like_a_one_worker_trial(multi_worker_search):
    import keras

    summary, _ = multi_worker_search
    for t in summary.trials:
        kept = sorted(t.path.glob("checkpoint_*"))
        # Tune keeps the two best by val_iou and the latest; a retried trial may keep more.
        assert kept
        assert t.num_failures or len(kept) <= 3
        for checkpoint in kept:
            state = json.loads((checkpoint / STATE_FILE).read_text())
            row = next(r for r in t.history if r["checkpoint_dir_name"] == checkpoint.name)
            assert state["epoch"] == row["epoch"]
        assert not list(t.path.glob("train-*")), "the Train run's own folder was left behind"
    best = summary.best.best_checkpoint(summary.metric, summary.mode)
    assert best is not None  # what `pneumotune export` reads
    model = keras.saving.load_model(best / MODEL_FILE, compile=False)
    assert model.input_shape == (None, 32, 32, 1)


@pytest.mark.slow
def test_a_killed_train_worker_fails_the_trial_once_and_the_retry_resumes(multi_worker_search):
    summary, killed = multi_worker_search
    assert len(killed) == 1
    victim = next(t for t in summary.trials if t.path.name == killed[0])
    assert victim.num_failures == 1
    assert victim.outcome == "completed"
    # The retry went on from the last epoch Tune had, not from scratch.
    assert victim.history[-1][RESUMED_FROM] >= 1
    assert all(t.num_failures == 0 for t in summary.trials if t is not victim)


@pytest.mark.slow
def test_two_workers_train_like_one_process(multi_worker_search, tiny_dataset):
    """Global batches: the same config trains the same way in one process (fit without a
    strategy, same rows; only BatchNorm's per-worker batch statistics differ), the epochs
    after the retry included: the resumed run goes on where the killed one stopped."""
    from pneumotune.data.dataset import load_arrays, split_fold
    from pneumotune.model.config import TrainConfig
    from pneumotune.model.train import fit

    summary, _ = multi_worker_search
    trial = summary.trials[0]
    cfg = TrainConfig.from_flat(trial.config)
    train, val = split_fold(load_arrays(tiny_dataset, cfg.img_size), cfg.val_fold)
    train = train.subset(rows_for_even_split(train.positive, cfg.batch_size, 2, cfg.seed))
    one = fit(cfg, train, val).history
    for alone, shared in zip(one, trial.history, strict=True):
        assert shared["n_train"] == len(train)
        assert shared["loss"] == pytest.approx(alone["loss"], rel=0.03)
        assert shared["val_loss"] == pytest.approx(alone["val_loss"], rel=0.03)
        assert shared["lr"] == pytest.approx(alone["lr"], rel=1e-5)  # same steps, same schedule


@pytest.mark.slow
def test_train_from_search_retrains_on_all_data_and_exports(multi_worker_search, tmp_path):
    from pneumotune.cli import main
    from pneumotune.model.export import load_model

    summary, _ = multi_worker_search
    out = tmp_path / "model"
    code = main(
        ["train", "--from-search", str(summary.path), "--workers", "2", "--epochs", "2",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["extra"]["made_by"] == "pneumotune train --from-search"
    assert card["extra"]["trial_id"] == summary.best.trial_id
    assert card["extra"]["workers"] == 2
    metrics = card["metrics"]
    assert metrics["epoch"] == 2
    assert 0.0 <= metrics["val_kaggle_dice_triplet"] <= 1.0
    assert "in_sample_val_iou" in metrics and "val_iou" not in metrics
    assert not list(summary.path.glob("retrain-*")), "the Train run's folder was left behind"
    loaded = load_model(out)
    assert loaded.img_size == 32


def _slow_epochs(loop: dict) -> None:
    """A Train worker loop without TensorFlow: one report every half second for ~50 s."""
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        announce_placement_group(loop["channel"])
    for epoch in range(1, 100):
        time.sleep(0.5)
        ray.train.report({"epoch": epoch})


def _stopped_after_two_epochs(storage: str) -> str:
    """A driver like a trial's whose scheduler stops it after two epochs."""
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    def make_trainer(channel, callbacks):
        return TensorflowTrainer(
            _slow_epochs,
            train_loop_config={"channel": channel},
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(
                name="stopped", storage_path=storage, callbacks=callbacks
            ),
        )

    def stop_after_two(metrics, checkpoint):
        if metrics["epoch"] == 2:
            raise SystemExit(0)  # what tune.report raises when the scheduler says STOP

    try:
        run_forwarding_epochs(make_trainer, stop_after_two)
    except SystemExit:
        return "stopped"
    return "ran to the end"


class _Driver:
    """Stands for a trial's process (a Ray actor, as Tune runs trials)."""

    def run(self, storage: str) -> str:
        return _stopped_after_two_epochs(storage)


@pytest.mark.slow
def test_a_trial_stopped_early_frees_its_workers_at_once(ray_local, tmp_path):
    """When ASHA stops a multi-worker trial, Tune ends the trial's process right after
    ``tune.report`` raised ``SystemExit`` in the driver. The Train controller dies with
    that process, and the workers' placement group would outlive it (until the search
    ends, unless Ray's cleaner can reach the dashboard): the driver must free it."""
    import ray

    free_before = ray_local.available_resources().get("CPU", 0)
    driver = ray.remote(num_cpus=0)(_Driver).remote()
    assert ray.get(driver.run.remote(str(tmp_path))) == "stopped"
    ray.kill(driver)  # Tune ends the trial's process; the controller it owns dies with it
    started = time.time()
    while ray_local.available_resources().get("CPU", 0) < free_before:
        assert time.time() - started < 20, "the stopped trial's workers still hold their CPUs"
        time.sleep(0.2)


def test_train_needs_a_config_or_a_search(capsys):
    from pneumotune.cli import main

    assert main(["train"]) == 2
    assert "--config CONFIG (one run) or --from-search" in capsys.readouterr().err
    assert main(["train", "--from-search", "x", "--config", "demo"]) == 2
    assert "drop --config" in capsys.readouterr().err
