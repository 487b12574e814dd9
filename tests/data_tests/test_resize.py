"""Mask resizing keeps regions where they are and does not dilate them."""

from __future__ import annotations

import numpy as np

from pneumotune.data.resize import resize_image, resize_mask, resize_probabilities


def test_mask_downsampling_is_a_majority_vote():
    mask = np.zeros((8, 8), np.uint8)
    mask[0:4, 0:4] = 1  # exactly one output pixel at 2x2
    mask[4:6, 4:8] = 1  # half of two output pixels: kept (>= 0.5)
    mask[7, 0] = 1  # a quarter of one output pixel: dropped
    out = resize_mask(mask, 2)
    np.testing.assert_array_equal(out, np.array([[1, 0], [0, 1]], np.uint8))
    assert out.dtype == np.uint8


def test_area_is_kept_and_region_stays_in_place():
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 12:32] = 1  # aligned with the 4x4 output cells: exactly 5x5 of them
    small = resize_mask(mask, 16)
    assert small.sum() == 25
    assert small[5:10, 3:8].all()
    mask[:] = 0
    mask[20:40, 10:30] = 1  # straddles cells: half-covered columns 2 and 7 are kept
    small = resize_mask(mask, 16)
    assert small.sum() == 30
    assert small[5:10, 2:8].all()


def test_upsampling_and_identity():
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    np.testing.assert_array_equal(resize_mask(mask, 4), np.kron(mask, np.ones((2, 2), np.uint8)))
    assert resize_mask(mask, 2) is mask
    assert resize_mask(np.zeros((10, 10), np.uint8), 4).sum() == 0


def test_image_and_probabilities():
    image = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    small = resize_image(image, 16)
    assert small.shape == (16, 16) and small.dtype == np.uint8
    assert abs(float(small.mean()) - float(image.mean())) < 2
    prob = np.zeros((4, 4), np.float32)
    prob[:, 2:] = 1.0
    big = resize_probabilities(prob, 8, 12)
    assert big.shape == (8, 12)
    assert big[:, :4].max() < 0.5 and big[:, -4:].min() > 0.5
