"""Table tests against hand-computed cases, seeded round trips, and malformed input."""

from __future__ import annotations

import numpy as np
import pytest

from pneumotune.data import rle


def _mask(shape, pixels):
    m = np.zeros(shape, np.uint8)
    for r, c in pixels:
        m[r, c] = 1
    return m


# (rle string, dialect, shape, foreground pixels as (row, col)).
# Column-major: flat index = col * H + row.
DECODE_TABLE = [
    ("-1", "relative", (3, 3), []),
    (" -1", "relative", (3, 3), []),
    ("0 1", "relative", (3, 3), [(0, 0)]),
    ("1 2", "relative", (3, 3), [(1, 0), (2, 0)]),  # flat 1,2 = rows 1,2 of column 0
    ("3 1", "relative", (3, 3), [(0, 1)]),  # flat 3 = row 0 of column 1
    ("0 1 1 1", "relative", (3, 3), [(0, 0), (2, 0)]),  # second start is a gap of 1 after flat 1
    ("0 1 0 1", "relative", (3, 3), [(0, 0), (1, 0)]),  # gap 0: adjacent runs
    ("8 1", "relative", (3, 3), [(2, 2)]),  # the very last pixel
    ("0 9", "relative", (3, 3), [(r, c) for r in range(3) for c in range(3)]),
    ("2 3", "relative", (2, 4), [(0, 1), (1, 1), (0, 2)]),  # non-square: H=2, W=4
    ("1 1", "standard", (3, 3), [(0, 0)]),
    ("1 1 3 1", "standard", (3, 3), [(0, 0), (2, 0)]),
    ("9 1", "standard", (3, 3), [(2, 2)]),
    ("-1", "standard", (3, 3), []),
]


@pytest.mark.parametrize(("text", "dialect", "shape", "pixels"), DECODE_TABLE)
def test_decode_table(text, dialect, shape, pixels):
    got = rle.decode(text, shape, dialect)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _mask(shape, pixels))


@pytest.mark.parametrize(("text", "dialect", "shape", "pixels"), DECODE_TABLE)
def test_encode_table_round_trips(text, dialect, shape, pixels):
    mask = _mask(shape, pixels)
    encoded = rle.encode(mask, dialect)
    np.testing.assert_array_equal(rle.decode(encoded, shape, dialect), mask)


def test_encode_is_canonical():
    mask = _mask((3, 3), [(0, 0), (1, 0), (2, 2)])
    assert rle.encode(mask, "relative") == "0 2 6 1"
    assert rle.encode(mask, "standard") == "1 2 9 1"
    assert rle.encode(np.zeros((4, 4)), "relative") == "-1"
    assert rle.encode(np.ones((2, 2)), "relative") == "0 4"


def test_run_touching_last_pixel_is_kept():
    # The organisers' reference encoder dropped a run that reached the last pixel.
    mask = np.zeros((1024, 1024), np.uint8)
    mask[-10:, -1] = 1
    text = rle.encode(mask)
    assert text == f"{1024 * 1024 - 10} 10"
    np.testing.assert_array_equal(rle.decode(text, mask.shape), mask)


def test_any_nonzero_value_is_foreground():
    mask = np.array([[0, 255], [7, 0]], np.uint8)
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), (2, 2)), (mask > 0).astype(np.uint8))


@pytest.mark.parametrize("dialect", rle.DIALECTS)
@pytest.mark.parametrize("seed", range(8))
def test_random_round_trip(dialect, seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 70)), int(rng.integers(1, 70)))
    mask = (rng.random(shape) < rng.random()).astype(np.uint8)
    np.testing.assert_array_equal(rle.decode(rle.encode(mask, dialect), shape, dialect), mask)


def test_merge_is_logical_or_of_overlapping_regions():
    shape = (8, 8)
    a = np.zeros(shape, np.uint8)
    a[1:5, 1:5] = 1
    b = np.zeros(shape, np.uint8)
    b[3:7, 3:7] = 1
    merged = rle.merge([rle.encode(a), " " + rle.encode(b), "-1"], shape)
    np.testing.assert_array_equal(merged, a | b)
    assert merged.max() == 1
    np.testing.assert_array_equal(rle.merge([], shape), np.zeros(shape, np.uint8))


@pytest.mark.parametrize(
    ("text", "dialect", "fragment"),
    [
        ("", "relative", "empty RLE string"),
        ("1 2 3", "relative", "odd number"),
        ("1 x", "relative", "non-integer"),
        ("1.5 2", "relative", "non-integer"),
        ("-3 2", "relative", "negative"),
        ("4 0", "relative", "length 0"),
        ("0 1", "standard", "1-based"),
        ("5 2 3 1", "standard", "overlap or are out of order"),
    ],
)
def test_malformed_strings_raise(text, dialect, fragment):
    with pytest.raises(rle.RLEError, match=fragment):
        rle.decode(text, (8, 8), dialect)


@pytest.mark.parametrize(
    ("text", "dialect"), [("60 5", "relative"), ("0 10 55 1", "relative"), ("64 2", "standard")]
)
def test_runs_past_the_image_raise(text, dialect):
    with pytest.raises(rle.RLEError, match="runs past the end of a 8x8 image"):
        rle.decode(text, (8, 8), dialect)


def test_unknown_dialect_is_a_value_error():
    with pytest.raises(ValueError, match="unknown RLE dialect"):
        rle.decode("0 1", (2, 2), "absolute")  # type: ignore[arg-type]
