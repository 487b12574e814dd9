"""model.train on tiny arrays: the input pipeline, per-epoch metrics, resume, divergence."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pneumotune.model.augment import AugmentConfig
from pneumotune.model.config import SCHEDULES
from pneumotune.model.train import (
    METRIC_KEYS,
    TrainingDiverged,
    _optimizer,
    epoch_plan,
    fit,
    steps_per_epoch,
)
from tests.model_tests.helpers import blobs, tiny

# Keras 3.15 converts TF variables with np.array(x, copy=False) (saving), which numpy 2
# reports; not ours to fix.
pytestmark = [
    pytest.mark.backend,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_builds_from_the_config(schedule):
    opt = _optimizer(tiny(schedule=schedule, epochs=4, warmup_epochs=0.5), steps=10)
    assert isinstance(opt, keras.optimizers.Adam)
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) >= 0.0


def test_weight_decay_selects_adamw():
    assert isinstance(_optimizer(tiny(weight_decay=1e-4), steps=5), keras.optimizers.AdamW)


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            (np.zeros((4, 16, 16), np.uint8), np.zeros((4, 16, 16), np.uint8)),
            "uint8 \\(N, 32, 32\\)",
        ),
        ((np.zeros((4, 32, 32), np.float32), np.zeros((4, 32, 32), np.uint8)), "uint8"),
        ((np.zeros((4, 32, 32), np.uint8), np.zeros((3, 32, 32), np.uint8)), "masks"),
        ((np.zeros((0, 32, 32), np.uint8), np.zeros((0, 32, 32), np.uint8)), "empty"),
    ],
)
def test_bad_arrays_are_refused(train, message):
    val = blobs(4)
    with pytest.raises(ValueError, match=message):
        fit(tiny(), train, val)


def test_impossible_initial_epoch_and_metric_are_refused():
    data = blobs(8)
    with pytest.raises(ValueError, match="initial_epoch"):
        fit(tiny(epochs=2), data, data, initial_epoch=2)
    with pytest.raises(ValueError, match="metric"):
        fit(tiny(), data, data, metric="accuracy")


def test_mixed_precision_on_cpu_is_refused_with_the_reason():
    data = blobs(8)
    with pytest.raises(ValueError, match="needs a GPU"):
        fit(tiny(mixed_precision=True), data, data)


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_fit_reports_finite_metrics_every_epoch_with_augmentation():
    train, val = blobs(32, seed=1), blobs(16, seed=2)
    calls = []
    result = fit(
        tiny(augment=AugmentConfig.tutorial(), pos_share_start=0.7, pos_share_end=0.5),
        train,
        val,
        on_epoch_end=lambda epoch, metrics, model: calls.append((epoch, metrics, model)),
    )
    assert [c[0] for c in calls] == [1, 2]
    for _, metrics, model in calls:
        assert set(metrics) == set(METRIC_KEYS)
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        assert 0.0 <= metrics["val_kaggle_dice"] <= 1.0
        assert metrics["images_per_s"] > 0 and metrics["epoch_seconds"] >= metrics["train_seconds"]
        assert model is result.model
    assert [m["epoch"] for m in result.history] == [1, 2]
    assert result.best_epoch in (1, 2)
    # cosine to 0 over the run: the LR after the last epoch is ~0
    assert calls[-1][1]["lr"] < 1e-6 < calls[0][1]["lr"]


@pytest.mark.slow
def test_resume_continues_the_schedule_and_the_epoch_count(tmp_path):
    train, val = blobs(24, seed=3), blobs(8, seed=4)
    cfg = tiny(epochs=3, schedule="cosine", lr=1e-3)
    saved = tmp_path / "epoch1.keras"

    def save_first(epoch, metrics, model):
        if epoch == 1:
            model.save(saved)

    full = fit(cfg, train, val, on_epoch_end=save_first)
    steps = steps_per_epoch(24, cfg.batch_size)
    assert int(full.model.optimizer.iterations) == 3 * steps

    seen = []
    resumed = fit(
        cfg,
        train,
        val,
        resume_from=saved,
        initial_epoch=1,
        on_epoch_end=lambda epoch, metrics, model: seen.append(epoch),
    )
    assert seen == [2, 3]
    assert [m["epoch"] for m in resumed.history] == [2, 3]
    assert int(resumed.model.optimizer.iterations) == 3 * steps
    for a, b in zip(full.history[1:], resumed.history, strict=True):
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-6, abs=1e-12)
    # The same data, seeds and schedule: the resumed run retraces the full one.
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-3)


@pytest.mark.slow
def test_a_diverging_config_raises_training_diverged():
    train, val = blobs(16, seed=5), blobs(8, seed=6)
    with pytest.raises(TrainingDiverged, match=r"diverged.*loss is (nan|inf)"):
        fit(tiny(lr=1e12, schedule="constant", epochs=2), train, val)


def test_epoch_images_sets_the_images_and_steps_of_every_epoch():
    images, masks = blobs(20, seed=8)
    cfg = tiny(epoch_images=6, batch_size=4, epochs=2)
    plan = epoch_plan(cfg, masks.reshape(20, -1).any(axis=1))
    assert plan.shape == (2, 6) and len(set(plan[0])) == 6  # a draw without repeats
    result = fit(cfg, (images, masks), blobs(4, seed=9))
    # 6 images in batches of 4: 2 steps per epoch, and the schedule spans 2 x 2 steps.
    assert int(keras.ops.convert_to_numpy(result.model.optimizer.iterations)) == 4
    with pytest.raises(Exception, match="epoch_images must be >= 1"):
        tiny(epoch_images=0)
