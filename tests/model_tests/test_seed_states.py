"""A run resumed from a checkpoint with dropout trains bit for bit as the uninterrupted run,
because the checkpoint carries the dropout layers' random states (model.seed_states)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pneumotune.model.augment import AugmentConfig
from pneumotune.model.train import fit
from pneumotune.search.checkpoint import read_seed_states, write_checkpoint
from tests.model_tests.helpers import blobs, tiny

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

TIMING = ("epoch_seconds", "train_seconds", "images_per_s", "first_step_seconds")


def _history(result):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in result.history]


@pytest.mark.slow
def test_a_resumed_run_with_dropout_is_exact_only_with_its_seed_states(tmp_path):
    train, val = blobs(24, seed=3), blobs(8, seed=4)
    cfg = tiny(epochs=3, schedule="cosine", lr=1e-3, dropout=0.2, augment=AugmentConfig.tutorial())

    def save_first(epoch, metrics, model):
        if epoch == 1:
            write_checkpoint(model, tmp_path, epoch)

    full = fit(cfg, train, val, on_epoch_end=save_first)
    states = read_seed_states(tmp_path)
    assert states and all(count > 0 for _, count in states)  # they had stepped in epoch 1
    resume = {"resume_from": tmp_path / "model.keras", "initial_epoch": 1}

    exact = fit(cfg, train, val, seed_states=states, **resume)
    assert _history(exact) == _history(full)[1:]  # every loss, metric and rate
    pairs = zip(exact.model.get_weights(), full.model.get_weights(), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)

    # What model.save keeps alone: a new layer's dropout states, other masks.
    without = fit(cfg, train, val, **resume)
    assert _history(without) != _history(full)[1:]


def test_seed_states_of_another_architecture_are_refused():
    from pneumotune.model.seed_states import seed_states, set_seed_states
    from pneumotune.model.train import build_model

    keras.utils.set_random_seed(0)
    model = build_model(tiny(dropout=0.2))
    states = seed_states(model)
    assert len(states) >= 1
    with pytest.raises(ValueError, match="another architecture"):
        set_seed_states(model, states[:-1])
    set_seed_states(model, [[7, 11]] * len(states))
    assert seed_states(model) == [[7, 11]] * len(states)
