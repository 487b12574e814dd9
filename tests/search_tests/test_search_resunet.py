"""A tiny real search: ResUNet trials on a real Ray, then export, load and predict."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pneumotune.data.convert import find_dicoms
from pneumotune.model.export import load_model
from pneumotune.model.predict import predict_folder
from pneumotune.search.config import parse_experiment
from pneumotune.search.products.export_best import export_best
from pneumotune.search.tuner import plan_search, run_search

pytestmark = pytest.mark.slow


def test_tiny_resunet_search_exports_a_model_that_predicts(
    tiny_dataset, synth_raw, ray_local, tmp_path
):
    exp = parse_experiment(
        {
            "name": "tiny",
            "epochs": 2,
            "num_samples": 3,
            "max_concurrent": 2,
            "seed": 0,
            "asha": {"grace_period": 1, "reduction_factor": 2},
            "fixed": {"depth": 2, "batch_size": 8, "img_size": 32},
            "space": {
                "base_filters": [4, 8],
                "lr": {"low": 3.0e-4, "high": 3.0e-3, "log": True},
                "augment.flip_p": {"low": 0.0, "high": 1.0},
            },
        }
    )
    plan = plan_search(exp, tiny_dataset, name="tiny", storage=tmp_path / "results")
    summary = run_search(plan)
    assert len(summary.trials) == 3
    assert all(t.outcome in ("completed", "stopped by ASHA") for t in summary.trials), (
        summary.describe()
    )
    for t in summary.trials:
        row = t.history[-1]
        for key in ("loss", "val_loss", "val_iou", "val_kaggle_dice", "epoch"):
            assert np.isfinite(row[key]), (key, row)
        assert list((t.path).glob("events.out.tfevents*")), "no TensorBoard log for the trial"
    assert (
        summary.tutorial is not None and summary.tutorial.config["base_filters"] == 8
    )  # 16, moved into the space

    model_dir = tmp_path / "model"
    exported = export_best(summary.path, model_dir)
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["extra"]["trial_id"] == summary.best.trial_id
    assert card["img_size"] == 32
    assert 0.0 <= exported.triplet_score <= 1.0

    loaded = load_model(model_dir)
    out = tmp_path / "submission.csv"
    dicoms = synth_raw / "dicom-images-train"
    result = predict_folder(model_dir, dicoms, out)
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(find_dicoms(dicoms)) == result.predicted
    assert loaded.img_size == 32


def test_trials_stopped_by_asha_hand_their_process_to_the_next_trial(
    tiny_dataset, ray_local, tmp_path
):
    # One trial at a time, so that every trial after the first runs in the first one's
    # process (warm_trials, on by default), after a trial that ASHA stopped mid-run or
    # one that completed: Tune's reset must find each trial's thread ended.
    exp = parse_experiment(
        {
            "name": "warm",
            "epochs": 3,
            "num_samples": 5,
            "max_concurrent": 1,
            "seed": 0,
            "max_failures": 0,
            "asha": {"grace_period": 1, "reduction_factor": 2},
            "fixed": {"depth": 2, "batch_size": 8, "img_size": 32, "base_filters": 4},
            "space": {"lr": {"low": 1.0e-4, "high": 3.0e-3, "log": True}},
        }
    )
    plan = plan_search(exp, tiny_dataset, name="warm", storage=tmp_path / "results")
    summary = run_search(plan)
    outcomes = [t.outcome for t in summary.trials]
    assert len(outcomes) == 5 and "stopped by ASHA" in outcomes, summary.describe()
    assert set(outcomes) <= {"completed", "stopped by ASHA"}, summary.describe()
    assert len({row["pid"] for t in summary.trials for row in t.history}) == 1
    for t in summary.trials:  # each trial's own epochs, counted from 1
        assert [row["training_iteration"] for row in t.history] == list(range(1, t.epochs + 1))
