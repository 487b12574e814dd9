"""Metric tables of tiny hand-computed masks, and Keras metrics checked against numpy."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pneumotune.model import metrics

pytestmark = pytest.mark.backend  # runs on TensorFlow and, in CI, on JAX too


def _m(rows: list[str]) -> np.ndarray:
    """A mask from rows of '.' and '#' (foreground)."""
    return np.array([[c == "#" for c in row] for row in rows], np.uint8)


EMPTY = _m(["..", ".."])
FULL = _m(["##", "##"])
TOP = _m(["##", ".."])
LEFT = _m(["#.", "#."])
BOTTOM = _m(["..", "##"])
ONE = _m(["#.", ".."])

# (truth, prediction, iou, dice) for one 2x2 / 3x3 image, by hand.
TABLE = [
    ("perfect", TOP, TOP, 1.0, 1.0),
    ("perfect full", FULL, FULL, 1.0, 1.0),
    ("disjoint", TOP, BOTTOM, 0.0, 0.0),
    ("half overlap", TOP, LEFT, 1 / 3, 1 / 2),  # |T&P|=1, |T|P|=3, |T|+|P|=4
    ("prediction inside truth", FULL, ONE, 1 / 4, 2 / 5),
    ("truth inside prediction", ONE, TOP, 1 / 2, 2 / 3),
    ("empty / empty", EMPTY, EMPTY, 1.0, 1.0),
    ("empty truth, one predicted pixel", EMPTY, ONE, 0.0, 0.0),
    ("truth, empty prediction", TOP, EMPTY, 0.0, 0.0),
    ("3x3 cross vs row", _m([".#.", "###", ".#."]), _m(["...", "###", "..."]), 3 / 5, 6 / 8),
]


@pytest.mark.parametrize(("case", "truth", "pred", "want_iou", "want_dice"), TABLE)
def test_single_image_table(case, truth, pred, want_iou, want_dice):
    prob = pred.astype(np.float32) * 0.9  # probabilities, not 0/1: thresholded at 0.5
    assert metrics.iou(truth, prob) == pytest.approx(want_iou), case
    assert metrics.dice(truth, prob) == pytest.approx(want_dice), case
    # One image: the batch scores and the per-image scores coincide.
    assert metrics.kaggle_dice(truth, prob) == pytest.approx(want_dice), case
    np.testing.assert_allclose(metrics.per_image_dice(truth, prob), [want_dice])


def test_batch_pooling_versus_per_image():
    # Image 0: perfect on a 4-pixel mask. Image 1: empty truth, one false pixel.
    truth = np.stack([FULL, EMPTY])
    pred = np.stack([FULL, ONE]).astype(np.float32)
    # Pooled: |T&P| = 4, |T| = 4, |P| = 5.
    assert metrics.iou(truth, pred) == pytest.approx(4 / 5)
    assert metrics.dice(truth, pred) == pytest.approx(8 / 9)
    # Per image: 1 and 0 (the single false pixel zeroes a negative image).
    np.testing.assert_allclose(metrics.per_image_dice(truth, pred), [1.0, 0.0])
    assert metrics.kaggle_dice(truth, pred) == pytest.approx(0.5)
    # Positive IoU ignores the negative image entirely.
    assert metrics.positive_iou(truth, pred) == pytest.approx(1.0)


def test_kaggle_dice_rewards_empty_predictions_on_negatives():
    truth = np.stack([EMPTY, EMPTY, TOP])
    pred = np.stack([EMPTY, EMPTY, LEFT]).astype(np.float32)
    np.testing.assert_allclose(metrics.per_image_dice(truth, pred), [1.0, 1.0, 0.5])
    assert metrics.kaggle_dice(truth, pred) == pytest.approx(2.5 / 3)


def test_positive_iou_pools_positive_images_only():
    truth = np.stack([TOP, FULL, EMPTY])
    pred = np.stack([LEFT, ONE, FULL]).astype(np.float32)
    # Image 0: inter 1, union 3; image 1: inter 1, union 4; image 2 is ignored.
    assert metrics.positive_iou(truth, pred) == pytest.approx(2 / 7)
    assert math.isnan(metrics.positive_iou(np.stack([EMPTY]), np.stack([FULL])))
    assert metrics.positive_iou(EMPTY, FULL, empty_score=0.0) == 0.0


def test_empty_score_and_threshold():
    assert metrics.iou(EMPTY, EMPTY, empty_score=0.0) == 0.0
    assert metrics.dice(EMPTY, EMPTY, empty_score=0.0) == 0.0
    prob = np.array([[0.5, 0.6], [0.2, 0.9]], np.float32)
    # Strictly greater than the threshold: 0.5 is background at threshold 0.5.
    assert metrics.dice(_m([".#", ".#"]), prob) == 1.0
    assert metrics.dice(_m(["##", ".#"]), prob, threshold=0.4) == 1.0


@pytest.mark.parametrize(
    "shape_of", [lambda m: m, lambda m: m[..., None], lambda m: m.astype(bool)]
)
def test_accepted_layouts_agree(shape_of):
    truth = np.stack([TOP, EMPTY, FULL])
    pred = np.stack([LEFT, ONE, FULL]).astype(np.float32)
    want = metrics.per_image_dice(truth, pred)
    np.testing.assert_allclose(metrics.per_image_dice(shape_of(truth), shape_of(pred)), want)


@pytest.mark.parametrize(
    ("truth", "pred", "match"),
    [
        (np.zeros((2, 2, 2, 3)), np.zeros((2, 2, 2, 3)), "one channel"),
        (np.zeros(4), np.zeros(4), "expected"),
        (np.zeros((2, 3, 3)), np.zeros((3, 3, 3)), "disagree"),
        (np.zeros((0, 3, 3)), np.zeros((0, 3, 3)), "empty"),
    ],
)
def test_bad_shapes_raise(truth, pred, match):
    with pytest.raises(ValueError, match=match):
        metrics.kaggle_dice(truth, pred)


# --------------------------------------------------------------------------- Keras metrics


def _random_batches(seed: int, n_batches: int = 4, batch: int = 5, size: int = 8):
    """Batches of (B, H, W, 1) truths (some empty) and probabilities."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        truth = (rng.random((batch, size, size, 1)) < rng.random((batch, 1, 1, 1)) * 0.5).astype(
            np.float32
        )
        truth[rng.random(batch) < 0.4] = 0.0  # empty truths
        prob = rng.random((batch, size, size, 1)).astype(np.float32) ** 3
        prob[rng.random(batch) < 0.3] = 0.0  # empty predictions
        out.append((truth, prob))
    return out


KERAS_VS_NUMPY = [
    (metrics.IoU, metrics.iou),
    (metrics.Dice, metrics.dice),
    (metrics.KaggleDice, metrics.kaggle_dice),
    (metrics.PositiveIoU, metrics.positive_iou),
]


@pytest.mark.parametrize(("keras_cls", "numpy_fn"), KERAS_VS_NUMPY)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_keras_metric_accumulates_like_numpy(keras_cls, numpy_fn, seed, threshold):
    batches = _random_batches(seed)
    metric = keras_cls(threshold=threshold)
    for truth, prob in batches:
        metric.update_state(truth, prob)
    truth = np.concatenate([b[0] for b in batches])
    prob = np.concatenate([b[1] for b in batches])
    want = numpy_fn(truth, prob, threshold=threshold)
    assert float(metric.result()) == pytest.approx(want, abs=1e-6)

    metric.reset_state()
    truth, prob = batches[0]
    metric.update_state(truth, prob)
    assert float(metric.result()) == pytest.approx(numpy_fn(truth, prob, threshold), abs=1e-6)


@pytest.mark.parametrize(("keras_cls", "want"), [(metrics.IoU, 1.0), (metrics.Dice, 1.0)])
def test_keras_empty_rule(keras_cls, want):
    metric = keras_cls()
    metric.update_state(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 4, 1)))
    assert float(metric.result()) == want


def test_keras_kaggle_dice_table():
    metric = metrics.KaggleDice()
    truth = np.stack([FULL, EMPTY, EMPTY, TOP])[..., None].astype(np.float32)
    pred = np.stack([FULL, EMPTY, ONE, LEFT])[..., None].astype(np.float32)
    metric.update_state(truth, pred)
    assert float(metric.result()) == pytest.approx((1 + 1 + 0 + 0.5) / 4)


@pytest.mark.parametrize(
    "metric",
    [
        metrics.IoU(threshold=0.3, empty_score=0.0, name="val_iou"),
        metrics.Dice(threshold=0.4),
        metrics.KaggleDice(threshold=0.6),
        metrics.PositiveIoU(threshold=0.7, empty_score=0.0),
    ],
    ids=lambda m: type(m).__name__,
)
def test_keras_metric_serialization_round_trip(metric):
    config = keras.saving.serialize_keras_object(metric)
    assert config["registered_name"].startswith("pneumotune>")
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(metric)
    assert clone.get_config() == metric.get_config()


def test_keras_metric_rejects_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        metrics.KaggleDice(threshold=1.5)
    with pytest.raises(ValueError, match="sample_weight"):
        metrics.Dice().update_state(np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1)), np.ones(1))


def test_keras_metrics_in_compiled_model():
    # Under model.fit / evaluate the metrics run inside a tf.function with a dynamic batch.
    rng = np.random.default_rng(0)
    x = rng.random((6, 4, 4, 1)).astype(np.float32)
    y = (rng.random((6, 4, 4, 1)) < 0.3).astype(np.float32)
    y[:2] = 0.0
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Activation("linear")(inputs))
    model.compile(
        loss="mse",
        metrics=[metrics.IoU(), metrics.Dice(), metrics.KaggleDice(), metrics.PositiveIoU()],
    )
    got = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert got["iou"] == pytest.approx(metrics.iou(y, x), abs=1e-6)
    assert got["dice"] == pytest.approx(metrics.dice(y, x), abs=1e-6)
    assert got["kaggle_dice"] == pytest.approx(metrics.kaggle_dice(y, x), abs=1e-6)
    assert got["positive_iou"] == pytest.approx(metrics.positive_iou(y, x), abs=1e-6)
