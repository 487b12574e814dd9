"""Positive-share schedule tables and seeded epoch draws, degenerate classes included."""

from __future__ import annotations

import numpy as np
import pytest

from pneumotune.model.sampling import epoch_indices, positive_share


@pytest.mark.parametrize(
    ("epoch", "epochs", "start", "end", "expected"),
    [
        (0, 10, 0.8, 0.4, 0.8),  # first epoch: start
        (9, 10, 0.8, 0.4, 0.4),  # last epoch: end
        (2, 5, 0.8, 0.4, 0.6),  # midpoint
        (1, 5, 0.8, 0.4, 0.7),
        (0, 1, 0.8, 0.4, 0.8),  # one epoch: start
        (3, 7, 0.5, 0.5, 0.5),  # constant
        (1, 3, 0.2, 0.6, 0.4),  # increasing works too
        (0, 2, 1.0, 0.0, 1.0),
        (1, 2, 1.0, 0.0, 0.0),
    ],
)
def test_positive_share_table(epoch, epochs, start, end, expected):
    assert positive_share(epoch, epochs, start, end) == pytest.approx(expected)


def test_positive_share_defaults_are_the_first_place_schedule():
    assert positive_share(0, 20) == pytest.approx(0.8)
    assert positive_share(19, 20) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((0, 0), "epochs must be >= 1, got 0"),
        ((5, 5), "epoch must be in [0, 4] for 5 epochs, got 5"),
        ((-1, 5), "epoch must be in [0, 4]"),
        ((0, 5, 1.2, 0.4), "start share must be in [0, 1], got 1.2"),
        ((0, 5, 0.8, -0.1), "end share must be in [0, 1], got -0.1"),
        ((0, 5, float("nan"), 0.4), "start share must be in [0, 1]"),
    ],
)
def test_positive_share_validation(args, fragment):
    with pytest.raises(ValueError) as info:
        positive_share(*args)
    assert fragment in str(info.value)


def _flags(n_pos: int, n_neg: int, seed: int = 0) -> np.ndarray:
    flags = np.array([True] * n_pos + [False] * n_neg)
    return np.random.default_rng(seed).permutation(flags)


def test_share_with_replacement_when_the_class_is_small():
    flags = _flags(10, 90)
    idx = epoch_indices(flags, 0.8, None, np.random.default_rng(0))
    assert idx.shape == (100,) and idx.dtype == np.int64
    assert flags[idx].sum() == 80
    # 80 draws from 10 positives: every positive exactly 8 times (repeats spread evenly).
    counts = np.bincount(idx[flags[idx]], minlength=100)[flags]
    np.testing.assert_array_equal(counts, np.full(10, 8))
    # 20 draws from 90 negatives: no repeats.
    negatives = idx[~flags[idx]]
    assert len(np.unique(negatives)) == 20


def test_share_without_replacement_when_possible():
    flags = _flags(60, 40)
    idx = epoch_indices(flags, 0.5, 100, np.random.default_rng(1))
    pos, neg = idx[flags[idx]], idx[~flags[idx]]
    # 50 of 60 positives: all distinct; 50 from 40 negatives: all 40 once, then 10 repeats.
    assert len(pos) == 50 and len(np.unique(pos)) == 50
    counts = np.bincount(neg, minlength=100)[~flags]
    assert counts.min() == 1 and counts.max() == 2 and counts.sum() == 50


@pytest.mark.parametrize(("share", "n", "n_pos"), [(0.0, 50, 0), (1.0, 50, 50), (0.5, 5, 3)])
def test_share_extremes_and_rounding(share, n, n_pos):
    flags = _flags(20, 30)
    idx = epoch_indices(flags, share, n, np.random.default_rng(2))
    assert len(idx) == n and flags[idx].sum() == n_pos


def test_output_is_shuffled():
    flags = _flags(50, 50)
    idx = epoch_indices(flags, 0.5, None, np.random.default_rng(3))
    # Not all positives first: the classes are interleaved.
    assert 10 < np.flatnonzero(flags[idx])[:25].max() < 100
    assert not np.array_equal(idx, np.sort(idx))


def test_natural_share_is_a_permutation():
    flags = _flags(22, 78)
    idx = epoch_indices(flags, None, None, np.random.default_rng(4))
    np.testing.assert_array_equal(np.sort(idx), np.arange(100))
    assert not np.array_equal(idx, np.arange(100))


@pytest.mark.parametrize(("n", "max_count"), [(30, 1), (250, 3)])
def test_natural_share_with_other_n(n, max_count):
    flags = _flags(22, 78)
    idx = epoch_indices(flags, None, n, np.random.default_rng(5))
    counts = np.bincount(idx, minlength=100)
    assert len(idx) == n and counts.max() == max_count and counts.sum() == n
    assert counts.max() - counts.min() <= 1 or n < 100


@pytest.mark.parametrize("flags", [np.zeros(40, bool), np.ones(40, bool)])
def test_degenerate_classes_fall_back_to_natural(flags):
    idx = epoch_indices(flags, 0.8, None, np.random.default_rng(6))
    np.testing.assert_array_equal(np.sort(idx), np.arange(40))


def test_zero_one_ints_are_accepted():
    flags = _flags(10, 10).astype(np.uint8)
    idx = epoch_indices(flags, 0.5, None, np.random.default_rng(7))
    assert flags[idx].sum() == 10


def test_seeded_and_reproducible():
    flags = _flags(15, 85)
    a = epoch_indices(flags, 0.6, None, np.random.default_rng(8))
    b = epoch_indices(flags, 0.6, None, np.random.default_rng(8))
    c = epoch_indices(flags, 0.6, None, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_empty_cases():
    rng = np.random.default_rng(10)
    assert epoch_indices(np.zeros(0, bool), 0.5, None, rng).shape == (0,)
    assert epoch_indices(_flags(3, 3), 0.5, 0, rng).shape == (0,)
    with pytest.raises(ValueError, match="empty training set"):
        epoch_indices(np.zeros(0, bool), 0.5, 4, rng)


@pytest.mark.parametrize(
    ("flags", "share", "n", "fragment"),
    [
        (np.zeros((2, 2), bool), 0.5, None, "is_positive must be 1-D"),
        (np.array([0, 2, 1]), 0.5, None, "booleans or 0/1"),
        (np.array([True, False]), 1.5, None, "share must be in [0, 1] or None, got 1.5"),
        (np.array([True, False]), float("nan"), None, "share must be in [0, 1]"),
        (np.array([True, False]), 0.5, -1, "n must be a non-negative integer"),
        (np.array([True, False]), 0.5, 2.0, "n must be a non-negative integer"),
    ],
)
def test_epoch_indices_validation(flags, share, n, fragment):
    with pytest.raises(ValueError) as info:
        epoch_indices(flags, share, n, np.random.default_rng(0))
    assert fragment in str(info.value)
