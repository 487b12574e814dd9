"""The define-by-run space, exercised with Optuna alone (no Ray)."""

from __future__ import annotations

import optuna
import pytest

from pneumotune.search.config import parse_experiment
from pneumotune.search.space import make_space, train_config, tutorial_point

RAW = {
    "name": "t",
    "epochs": 3,
    "fixed": {"depth": 3},
    "space": {
        "img_size": [64, 128],
        "base_filters": [8, 16, 32],
        "lr": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
        "batch_size": {"low": 4, "high": 32, "step": 4},
        "schedule": ["constant", "cosine_restarts"],
        "restart_cycles": {"choices": [2, 3, 4], "when": {"schedule": "cosine_restarts"}},
        "augment.flip_p": {"low": 0.0, "high": 1.0},
        "pos_share_start": {"low": 0.5, "high": 0.9, "default": 0.8},
        "pos_share_end": {"low": 0.2, "high": 0.5, "default": 0.4},
    },
}


@pytest.fixture()
def exp():
    return parse_experiment(RAW)


def test_every_sample_is_a_valid_train_config(exp):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = make_space(exp)
    seen_schedules = set()
    for _ in range(40):
        trial = study.ask()
        constants = space(trial)
        config = {**trial.params, **constants}
        cfg = train_config(config)  # raises if anything is out of range
        assert cfg.depth == 3 and cfg.epochs == 3
        assert 1.0e-4 <= cfg.lr <= 3.0e-3 and cfg.batch_size % 4 == 0
        assert isinstance(cfg.batch_size, int)
        seen_schedules.add(cfg.schedule)
        # Conditional: restart_cycles exists only for cosine_restarts trials.
        assert ("restart_cycles" in trial.params) == (cfg.schedule == "cosine_restarts")
        study.tell(trial, 0.5)
    assert seen_schedules == {"constant", "cosine_restarts"}


def test_tutorial_point_moves_into_the_space(exp):
    point, notes = tutorial_point(exp)
    # 256 px is not offered: the nearest stored size; 16 filters and lr 1e-3 are in the space.
    assert point["img_size"] == 128 and point["base_filters"] == 16 and point["lr"] == 1.0e-3
    assert point["schedule"] == "constant"  # the tutorial's "cosine" is not offered
    assert point["batch_size"] == 16 and point["augment.flip_p"] == 0.5
    assert "restart_cycles" not in point
    # The tutorial sampled images naturally (None): the space's default stands in, noted.
    assert point["pos_share_start"] == 0.8 and point["pos_share_end"] == 0.4
    assert any(n.startswith("pos_share_start: tutorial had none -> 0.8") for n in notes)
    assert any(n.startswith("img_size: tutorial 256 -> 128") for n in notes)
    # Optuna accepts it as an enqueued trial and it becomes the first suggestion.
    study = optuna.create_study()
    study.enqueue_trial(point)
    trial = study.ask()
    make_space(exp)(trial)
    assert trial.params == point
