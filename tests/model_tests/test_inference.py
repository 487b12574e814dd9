"""model.inference: probabilities in whole batches, a chunk at a time, the validation
metrics equal to the numpy references of model.metrics, and the rows a report shows."""

from __future__ import annotations

import numpy as np
import pytest

from pneumotune.model import inference
from pneumotune.model import metrics as M
from pneumotune.model.inference import choose_rows, predict_probs, validation_metrics
from pneumotune.model.train import build_model, compile_model
from tests.model_tests.helpers import SIZE, blobs, tiny

# Keras 3.15 converts TF variables with np.array(x, copy=False) (saving), which numpy 2
# reports; not ours to fix.
pytestmark = [
    pytest.mark.backend,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]


def test_validation_metrics_match_the_numpy_references_and_zero_without_positives(monkeypatch):
    # 8 images in batches of 3: predict calls of 3, 3, 2 images
    monkeypatch.setattr(inference, "PREDICT_PIXELS", 3 * SIZE * SIZE)
    cfg = tiny()
    model = compile_model(build_model(cfg), cfg, n_train=8)
    images, masks = blobs(8, seed=7)
    val = validation_metrics(model, images, masks, cfg.threshold, batch_size=3)
    probs = predict_probs(model, images)
    assert probs.shape == (8, SIZE, SIZE) and probs.dtype == np.float32
    assert val["val_dice"] == M.dice(masks, probs, cfg.threshold)
    assert val["val_iou"] == M.iou(masks, probs, cfg.threshold)
    assert val["val_kaggle_dice"] == M.kaggle_dice(masks, probs, cfg.threshold)
    expected_loss = float(
        np.mean(model.loss.call(masks[..., None].astype("float32"), probs[..., None]))
    )
    assert val["val_loss"] == pytest.approx(expected_loss, rel=1e-5)
    empty = np.zeros_like(masks)
    no_pos = validation_metrics(model, images, empty, cfg.threshold)
    assert no_pos["val_positive_iou"] == 0.0  # not NaN: a search sorts on it
    # Rows of larger arrays, read through an index, score as the same rows copied out.
    rows = np.array([6, 0, 3, 5, 1])
    by_index = validation_metrics(model, images, masks, cfg.threshold, batch_size=3, index=rows)
    copied = validation_metrics(model, images[rows], masks[rows], cfg.threshold, batch_size=3)
    assert by_index == copied


def test_prediction_rows_mix_positives_and_negatives():
    positive = np.array([True] * 5 + [False] * 20)
    rows = choose_rows(np.random.default_rng(0), positive, 6)
    assert len(rows) == len(set(rows)) == 6
    assert [bool(positive[r]) for r in rows] == [True] * 3 + [False] * 3
    assert choose_rows(np.random.default_rng(0), positive, 6) == rows  # seeded
    rows = choose_rows(np.random.default_rng(0), np.array([True, False, False]), 6)
    assert sorted(rows) == [0, 1, 2]
