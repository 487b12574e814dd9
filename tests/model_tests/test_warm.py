"""Warm starts: a kept model, reset for the next run, trains exactly like a new one."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pneumotune.model import warm
from pneumotune.model.augment import AugmentConfig
from pneumotune.model.train import fit
from tests.model_tests.helpers import blobs, tiny

pytestmark = [
    pytest.mark.backend,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="only TensorFlow keeps a traced train step in the model",
    ),
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

TIMING = ("epoch_seconds", "train_seconds", "images_per_s", "first_step_seconds")


def _results(result):
    history = [{k: v for k, v in h.items() if k not in TIMING} for h in result.history]
    return history, [w.copy() for w in result.model.get_weights()]


@pytest.fixture(autouse=True)
def _empty_cache():
    warm.clear()
    yield
    warm.clear()


def test_a_warm_run_trains_exactly_like_a_cold_one():
    images, masks = blobs(40)
    train, val = (images[:32], masks[:32]), (images[32:], masks[32:])
    shared = {"dropout": 0.1, "batch_size": 4}
    first = tiny(**shared, schedule="cosine", warmup_epochs=0.5, lr=1e-3, loss_focal=4.0, seed=1)
    second = tiny(
        **shared, schedule="step", lr=3e-3, loss_bce=0.5, loss_focal=0.0, seed=2,
        pos_share_start=0.8, pos_share_end=0.4,
        augment=AugmentConfig(flip_p=0.5, affine_p=0.5, color_p=0.5),
    )  # fmt: skip
    assert warm.graph_key(first, 32) == warm.graph_key(second, 32)

    cold = _results(fit(second, train, val))  # a new model, seeded as always
    kept = fit(first, train, val, warm=True)  # cold too: nothing kept yet
    train_step = kept.model.train_function
    again = fit(second, train, val, warm=True)
    assert again.model is kept.model and again.model.train_function is train_step
    history, weights = _results(again)
    assert history == cold[0]  # every loss, metric and learning rate, bit for bit
    assert all(np.array_equal(a, b) for a, b in zip(weights, cold[1], strict=True))


def test_other_architectures_get_their_own_models_and_the_oldest_goes():
    images, masks = blobs(24)
    train, val = (images[:16], masks[:16]), (images[16:], masks[16:])
    models = [fit(tiny(base_filters=f, epochs=1), train, val, warm=True).model for f in (2, 4, 6)]
    assert len({id(m) for m in models}) == 3
    assert fit(tiny(base_filters=6, epochs=1, lr=1e-3), train, val, warm=True).model is models[2]
    # MAX_MODELS = 2: the 2-filter model was dropped when the 6-filter one came.
    assert fit(tiny(base_filters=2, epochs=1), train, val, warm=True).model is not models[0]


@pytest.mark.parametrize(
    "change",
    [{"base_filters": 8}, {"img_size": 16}, {"batch_size": 2}, {"epochs": 3}, {"dropout": 0.2}],
)
def test_what_the_traced_step_depends_on_is_in_the_key(change):
    assert warm.graph_key(tiny(), 32) != warm.graph_key(tiny(**change), 32)
    assert warm.graph_key(tiny(), 32) != warm.graph_key(tiny(), 40)


def test_what_the_step_reads_from_variables_is_not():
    other = tiny(lr=1e-4, schedule="one_cycle", loss_bce=2.0, loss_focal=1.0, seed=5)
    assert warm.graph_key(tiny(), 32) == warm.graph_key(other, 32)
