"""ComboLoss: hand-computed values on tiny tensors, linearity, stability, serialisation."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pneumotune.model.losses import EPSILON, ComboLoss, make_loss

# Keras 3.15 converts TF variables with np.array(x, copy=False) (saving, set_weights),
# which numpy 2 reports; not ours to fix.
pytestmark = [
    pytest.mark.backend,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]


def _loss(y_true, y_pred, **weights) -> float:
    y_true = np.asarray(y_true, np.float32)
    y_pred = np.asarray(y_pred, np.float32)
    return float(make_loss(**weights)(y_true, y_pred))


ONES = np.ones((1, 2, 2, 1), np.float32)
ZEROS = np.zeros((1, 2, 2, 1), np.float32)
HALF = np.full((1, 2, 2, 1), 0.5, np.float32)
TOP = np.array([[[1.0], [1.0]], [[0.0], [0.0]]], np.float32)[None]  # (1, 2, 2, 1)
LOG_EPS = -math.log(EPSILON)  # BCE of a confidently wrong (clipped) pixel

# (case, y_true, y_pred, weights, expected) for one 2x2 image, by hand; smooth = 1.
TABLE = [
    ("perfect, bce", TOP, TOP, {"bce": 1, "dice": 0}, 0.0),
    ("perfect, dice", TOP, TOP, {"bce": 0, "dice": 1}, 0.0),
    ("perfect negative, dice", ZEROS, ZEROS, {"bce": 0, "dice": 1}, 0.0),  # (0+1)/(0+1)
    ("all wrong, bce", ONES, ZEROS, {"bce": 1, "dice": 0}, LOG_EPS),
    ("all wrong, dice", ONES, ZEROS, {"bce": 0, "dice": 1}, 1 - 1 / 5),  # (0+1)/(4+0+1)
    ("all wrong negative, dice", ZEROS, ONES, {"bce": 0, "dice": 1}, 1 - 1 / 5),
    ("p=0.5, bce", TOP, HALF, {"bce": 1, "dice": 0}, math.log(2)),
    ("p=0.5, dice", TOP, HALF, {"bce": 0, "dice": 1}, 1 - (2 * 1 + 1) / (2 + 2 + 1)),
    # focal at p_t = 0.5: (1 - 0.5)**2 * log 2
    ("p=0.5, focal", TOP, HALF, {"bce": 0, "dice": 0, "focal": 1}, 0.25 * math.log(2)),
    (
        "p=0.5, focal gamma 0 = bce",
        TOP,
        HALF,
        {"bce": 0, "dice": 0, "focal": 1, "focal_gamma": 0},
        math.log(2),
    ),
    ("perfect, focal", TOP, TOP, {"bce": 0, "dice": 0, "focal": 1}, 0.0),
    # dice with smooth 0.5: 1 - (2*1 + 0.5) / (2 + 2 + 0.5)
    ("p=0.5, dice smooth", TOP, HALF, {"bce": 0, "dice": 1, "smooth": 0.5}, 1 - 2.5 / 4.5),
]


@pytest.mark.parametrize(("case", "y_true", "y_pred", "weights", "want"), TABLE)
def test_hand_computed_table(case, y_true, y_pred, weights, want):
    assert _loss(y_true, y_pred, **weights) == pytest.approx(want, abs=1e-5), case


def test_bce_term_matches_keras_binary_crossentropy():
    rng = np.random.default_rng(0)
    y_true = (rng.random((3, 8, 8, 1)) < 0.3).astype(np.float32)
    y_pred = rng.uniform(0.01, 0.99, (3, 8, 8, 1)).astype(np.float32)
    want = float(keras.losses.BinaryCrossentropy()(y_true, y_pred))
    assert _loss(y_true, y_pred, bce=1, dice=0) == pytest.approx(want, rel=1e-5)


def test_weights_combine_linearly():
    rng = np.random.default_rng(1)
    y_true = (rng.random((4, 6, 6, 1)) < 0.3).astype(np.float32)
    y_true[0] = 0.0
    y_pred = rng.random((4, 6, 6, 1)).astype(np.float32)
    bce = _loss(y_true, y_pred, bce=1, dice=0)
    dice = _loss(y_true, y_pred, bce=0, dice=1)
    focal = _loss(y_true, y_pred, bce=0, dice=0, focal=1)
    assert _loss(y_true, y_pred, bce=1, dice=1) == pytest.approx(bce + dice, rel=1e-5)
    assert _loss(y_true, y_pred, bce=3, dice=1, focal=4) == pytest.approx(
        3 * bce + dice + 4 * focal, rel=1e-5
    )
    assert _loss(y_true, y_pred, bce=0.5, dice=2) == pytest.approx(0.5 * bce + 2 * dice, rel=1e-5)


def test_dice_is_per_image_then_averaged():
    # Image 0: large mask predicted perfectly. Image 1: one truth pixel, missed.
    y_true = np.zeros((2, 4, 4, 1), np.float32)
    y_true[0, :, :2] = 1.0  # 8 px
    y_true[1, 0, 0] = 1.0
    y_pred = y_true.copy()
    y_pred[1] = 0.0
    per_image = [1 - (16 + 1) / (16 + 1), 1 - 1 / (1 + 1)]
    assert _loss(y_true, y_pred, bce=0, dice=1) == pytest.approx(np.mean(per_image), abs=1e-5)
    # A pooled Dice would be 1 - (16 + 1) / (17 + 1): the miss would barely count.
    call = ComboLoss(bce=0, dice=1).call(y_true, y_pred)
    np.testing.assert_allclose(np.asarray(call), per_image, atol=1e-5)


def test_accepts_masks_without_channel_axis():
    rng = np.random.default_rng(2)
    y_true = (rng.random((2, 5, 5)) < 0.4).astype(np.float32)
    y_pred = rng.random((2, 5, 5)).astype(np.float32)
    assert _loss(y_true, y_pred, focal=1) == pytest.approx(
        _loss(y_true[..., None], y_pred[..., None], focal=1)
    )


def value_and_grad(fn, x: np.ndarray) -> tuple[float, np.ndarray]:
    """``fn(x)`` and its gradient with respect to ``x``, on the running Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = fn(v)
        return float(value), tape.gradient(value, v).numpy()
    if backend == "jax":
        import jax

        value, grad = jax.value_and_grad(fn)(x)
        return float(value), np.asarray(grad)
    import torch

    t = torch.tensor(x, requires_grad=True)
    value = fn(t)
    value.backward()
    return float(value), t.grad.numpy()


@pytest.mark.parametrize("y_pred", [ZEROS, ONES, HALF], ids=["zeros", "ones", "half"])
def test_empty_truth_is_finite_with_finite_gradients(y_pred):
    loss = make_loss(bce=1, dice=1, focal=1)
    value, grad = value_and_grad(lambda p: loss(ZEROS, p), y_pred)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))


def test_gradients_finite_and_descend_on_random_batch():
    rng = np.random.default_rng(3)
    y_true = (rng.random((2, 8, 8, 1)) < 0.2).astype(np.float32)
    logits = rng.normal(size=(2, 8, 8, 1)).astype(np.float32) * 20  # saturated
    loss = make_loss(bce=3, dice=1, focal=4)
    _, grad = value_and_grad(lambda z: loss(y_true, keras.ops.sigmoid(z)), logits)
    assert np.all(np.isfinite(grad))
    assert np.any(grad != 0)


def test_mixed_precision_inputs():
    # A float16 prediction (a head left in float16) is cast to the loss dtype, not NaN.
    value = make_loss(focal=1)(TOP, HALF.astype(np.float16))
    assert np.isfinite(float(value))


def test_get_config_round_trip():
    loss = make_loss(bce=3, dice=1, focal=4, focal_gamma=1.5, smooth=0.1)
    config = keras.saving.serialize_keras_object(loss)
    assert config["registered_name"] == "pneumotune>ComboLoss"
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, ComboLoss)
    assert clone.get_config() == loss.get_config()
    rng = np.random.default_rng(4)
    y_true = (rng.random((2, 4, 4, 1)) < 0.5).astype(np.float32)
    y_pred = rng.random((2, 4, 4, 1)).astype(np.float32)
    assert float(clone(y_true, y_pred)) == float(loss(y_true, y_pred))


def test_compiled_model_saves_and_loads_with_the_loss(tmp_path):
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss=make_loss(bce=2, dice=1, focal=0.5))
    x = np.random.default_rng(5).random((2, 4, 4, 1)).astype(np.float32)
    model.fit(x, (x > 0.5).astype(np.float32), epochs=1, verbose=0)  # builds the optimizer
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, ComboLoss)
    assert loaded.loss.get_config() == model.loss.get_config()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bce": -1.0}, "must be >= 0"),
        ({"dice": -0.5}, "must be >= 0"),
        ({"focal": -2.0}, "must be >= 0"),
        ({"bce": 0, "dice": 0, "focal": 0}, "at least one loss weight"),
        ({"focal_gamma": -1.0}, "focal_gamma"),
        ({"smooth": 0.0}, "smooth"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_loss(**kwargs)


@pytest.mark.parametrize(
    "weights", [(3.0, 1.0, 4.0), (1.0, 1.0, 0.0), (0.0, 2.0, 0.0), (0.5, 0.0, 6.0)]
)
def test_weights_in_variables_give_the_same_loss_and_follow_set_weights(weights):
    rng = np.random.default_rng(2)
    y_true = (rng.random((3, 8, 8, 1)) < 0.3).astype(np.float32)
    y_pred = rng.random((3, 8, 8, 1)).astype(np.float32)
    plain = float(ComboLoss(*weights)(y_true, y_pred))
    tied = ComboLoss(1.0, 1.0, 1.0).weights_in_variables()
    tied.set_weights(*weights)
    assert float(tied(y_true, y_pred)) == pytest.approx(plain, rel=1e-6)
    assert (tied.bce, tied.dice, tied.focal) == weights
    assert ComboLoss.from_config(tied.get_config()).get_config() == ComboLoss(*weights).get_config()


def test_set_weights_checks_its_weights():
    with pytest.raises(RuntimeError, match="weights_in_variables"):
        ComboLoss().set_weights(1.0, 1.0, 0.0)
    tied = ComboLoss().weights_in_variables()
    with pytest.raises(ValueError, match=">= 0"):
        tied.set_weights(-1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        tied.set_weights(0.0, 0.0, 0.0)
    assert (tied.bce, tied.dice, tied.focal) == (1.0, 1.0, 0.0)  # unchanged
