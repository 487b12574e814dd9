"""The triplet: hand-built probability maps, and tuning on sets with a known answer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pneumotune.model import metrics
from pneumotune.model.postprocess import Triplet, apply_triplet, apply_triplet_batch, tune_triplet


def _blob(size: int, r0: int, c0: int, side: int, value: float, base=None) -> np.ndarray:
    prob = np.zeros((size, size), np.float32) if base is None else base.copy()
    prob[r0 : r0 + side, c0 : c0 + side] = value
    return prob


# 10x10 image = 100 px: min_area 0.05 means 5 px.
SMALL = _blob(10, 1, 1, 2, 0.9)  # 4 px
LARGE = _blob(10, 4, 4, 3, 0.9)  # 9 px


@pytest.mark.parametrize(
    ("prob", "triplet", "want_pixels"),
    [
        (SMALL, Triplet(0.5, 0.0), 4),
        (SMALL, Triplet(0.5, 0.04), 4),  # exactly at the minimum area: kept
        (SMALL, Triplet(0.5, 0.05), 0),  # below it: emptied
        (LARGE, Triplet(0.5, 0.05), 9),
        (LARGE, Triplet(0.95, 0.0), 0),  # nothing above threshold
        (LARGE, Triplet(0.9, 0.0), 0),  # strictly greater than the threshold
        (np.zeros((10, 10), np.float32), Triplet(0.5, 0.0), 0),
    ],
)
def test_threshold_and_min_area(prob, triplet, want_pixels):
    mask = apply_triplet(prob, triplet)
    assert mask.dtype == np.uint8
    assert mask.shape == prob.shape
    assert set(np.unique(mask)) <= {0, 1}
    assert int(mask.sum()) == want_pixels


def test_lower_threshold_grows_the_kept_mask():
    # A 3x3 core at 0.9 inside a 5x5 halo at 0.4.
    prob = _blob(10, 3, 3, 3, 0.9, base=_blob(10, 2, 2, 5, 0.4))
    assert apply_triplet(prob, Triplet(0.5, 0.05)).sum() == 9
    grown = apply_triplet(prob, Triplet(0.5, 0.05, lower=0.3))
    assert grown.sum() == 25
    np.testing.assert_array_equal(grown, (prob > 0.3).astype(np.uint8))


def test_lower_threshold_does_not_rescue_a_small_candidate():
    # The image-level decision uses the high threshold and the area: a 4-px core fails
    # min_area (5 px) even though its 0.4 halo would be 16 px.
    prob = _blob(10, 3, 3, 2, 0.9, base=_blob(10, 2, 2, 4, 0.4))
    assert apply_triplet(prob, Triplet(0.5, 0.05, lower=0.3)).sum() == 0


def test_min_area_scales_with_image_size():
    t = Triplet(0.5, 0.0006)  # ~600 px at 1024
    for size, side_kept, side_dropped in [(1024, 26, 25), (128, 4, 3)]:
        # 0.0006 * 1024**2 = 629.1 px; 0.0006 * 128**2 = 9.8 px
        kept = _blob(size, 0, 0, side_kept, 1.0)
        dropped = _blob(size, 0, 0, side_dropped, 1.0)
        assert apply_triplet(kept, t).sum() == side_kept**2
        assert apply_triplet(dropped, t).sum() == 0


def test_batch_matches_single_and_accepts_channel_axis():
    probs = np.stack([SMALL, LARGE, np.zeros_like(SMALL)])
    t = Triplet(0.5, 0.05, lower=0.2)
    want = np.stack([apply_triplet(p, t) for p in probs])
    np.testing.assert_array_equal(apply_triplet_batch(probs, t), want)
    np.testing.assert_array_equal(apply_triplet_batch(probs[..., None], t), want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"min_area": -0.001}, "min_area"),
        ({"min_area": 600}, "fraction of the image area"),
        ({"threshold": 0.5, "lower": 0.6}, "lower"),
        ({"lower": -0.1}, "lower"),
    ],
)
def test_invalid_triplet_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Triplet(**kwargs)


def test_triplet_is_frozen_and_hashable():
    t = Triplet(0.6, 0.001, 0.4)
    with pytest.raises(AttributeError):
        t.threshold = 0.1  # type: ignore[misc]
    assert {t: 1}[Triplet(0.6, 0.001, 0.4)] == 1


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        apply_triplet(np.zeros((1, 4, 4)), Triplet())
    with pytest.raises(ValueError, match="differ"):
        tune_triplet(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))


# --------------------------------------------------------------------------- tuning


def _constructed_set(n: int = 40, size: int = 32, seed: int = 0):
    """Positives: a 10x10 truth square, probabilities 0.7 in its 8x8 core and 0.35 on
    its one-pixel rim. Negatives: a 4x4 false-positive speck at 0.8 (16 px = 1.6% of
    the image) and a faint 8x8 haze at 0.32. Perfect, and only that way: a threshold
    in (0.35, 0.7) (above the haze, below the core), a min_area between the speck and
    the core (16 and 64 px), and a lower threshold below the rim's 0.35."""
    rng = np.random.default_rng(seed)
    probs = np.zeros((n, size, size), np.float32)
    truths = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        if i % 2 == 0:
            r, c = rng.integers(2, size - 12, 2)
            truths[i, r : r + 10, c : c + 10] = 1  # 100 px
            probs[i, r : r + 10, c : c + 10] = 0.35
            probs[i, r + 1 : r + 9, c + 1 : c + 9] = 0.7  # 64 px core
        else:
            r, c = rng.integers(0, size - 8, 2)
            probs[i, r : r + 8, c : c + 8] = 0.32
            probs[i, r : r + 4, c : c + 4] = 0.8
    return probs, truths


def test_tuning_finds_the_known_answer():
    probs, truths = _constructed_set()
    best, score = tune_triplet(
        probs,
        truths,
        thresholds=(0.3, 0.5, 0.75),
        min_areas=(0.0, 0.01, 0.03, 0.1),
        lowers=(None, 0.2, 0.5),
    )
    # Threshold 0.3 keeps the haze (64 px) and 0.75 loses the cores; min_area 0.01
    # (10 px) keeps the specks and 0.1 (102 px) drops the cores; lower 0.5 or None
    # misses the rim. Only (0.5, 0.03, 0.2) scores 1 on every image.
    assert best == Triplet(0.5, 0.03, 0.2)
    assert score == pytest.approx(1.0)
    applied = apply_triplet_batch(probs, best)
    assert score == pytest.approx(metrics.kaggle_dice(truths, applied))


def test_tuned_score_equals_kaggle_dice_of_applied_masks_on_noisy_data():
    rng = np.random.default_rng(1)
    probs, truths = _constructed_set(n=30, seed=2)
    probs = np.clip(probs + rng.normal(0, 0.15, probs.shape), 0, 1).astype(np.float32)
    best, score = tune_triplet(probs, truths)
    assert score == pytest.approx(metrics.kaggle_dice(truths, apply_triplet_batch(probs, best)))
    # And it is the maximum over the grid, checked the slow way on a few triplets.
    for t in [Triplet(), Triplet(0.7, 0.002), Triplet(0.4, 0.0006, 0.3)]:
        assert metrics.kaggle_dice(truths, apply_triplet_batch(probs, t)) <= score + 1e-12


def test_tuning_skips_lower_above_threshold_and_breaks_ties_in_grid_order():
    probs = np.zeros((2, 4, 4), np.float32)
    truths = np.zeros((2, 4, 4), np.uint8)
    best, score = tune_triplet(
        probs, truths, thresholds=(0.3, 0.5), min_areas=(0.0,), lowers=(0.4,)
    )
    assert best == Triplet(0.5, 0.0, 0.4)  # (0.3, lower 0.4) is not a valid triplet
    assert score == 1.0
    with pytest.raises(ValueError, match="lower > threshold"):
        tune_triplet(probs, truths, thresholds=(0.3,), lowers=(0.4,))
    best, _ = tune_triplet(probs, truths, thresholds=(0.6, 0.4), min_areas=(0.0,), lowers=(None,))
    assert best == Triplet(0.6, 0.0)  # all tie at 1.0: the first wins


def test_tuning_is_fast_on_200_images_of_128px():
    rng = np.random.default_rng(3)
    probs = rng.random((200, 128, 128), dtype=np.float32) ** 4
    truths = (rng.random((200, 128, 128)) < 0.01).astype(np.uint8)
    start = time.perf_counter()
    best, score = tune_triplet(probs, truths)  # default grid: 5 x 6 x 4
    elapsed = time.perf_counter() - start
    assert 0.0 <= score <= 1.0 and isinstance(best, Triplet)
    assert elapsed < 3.0, f"tune_triplet took {elapsed:.2f} s"


def test_tuning_agrees_with_brute_force_over_the_grid():
    rng = np.random.default_rng(4)
    probs, truths = _constructed_set(n=20, seed=5)
    probs = np.clip(probs + rng.normal(0, 0.2, probs.shape), 0, 1).astype(np.float32)
    grid = {"thresholds": (0.4, 0.6), "min_areas": (0.0, 0.02, 0.05), "lowers": (None, 0.3)}
    best, score = tune_triplet(probs, truths, **grid)
    brute = {
        Triplet(t, a, low): metrics.kaggle_dice(
            truths, apply_triplet_batch(probs, Triplet(t, a, low))
        )
        for t in grid["thresholds"]
        for a in grid["min_areas"]
        for low in grid["lowers"]
    }
    assert score == pytest.approx(max(brute.values()))
    assert brute[best] == pytest.approx(score)


def test_default_grid_never_scores_below_an_all_empty_prediction():
    # A weak model: noise above every threshold on every image, regions missed.
    rng = np.random.default_rng(0)
    probs = rng.random((20, 32, 32)).astype(np.float32)
    truths = np.zeros((20, 32, 32), np.uint8)
    truths[:3, 5:9, 5:9] = 1
    triplet, score = tune_triplet(probs, truths)
    empty = metrics.kaggle_dice(truths, np.zeros_like(truths))
    assert score >= empty
    assert apply_triplet_batch(probs, triplet).sum() == 0
