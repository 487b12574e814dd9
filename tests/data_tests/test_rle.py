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


# Hostile numbers: each once gave an OverflowError or StopIteration traceback, or (the
# last ones) passed the bounds check after wrapping around in int64 and painted pixels.
HOSTILE = [
    ("11111111111111111111 2", "relative", r"RLE number too large \(20 digits"),
    ("1" * 5000 + " 2", "relative", r"too large \(5000 digits: '1{24}'\.\.\. \(5,000 characters"),
    ("1 " + "9" * 5000, "standard", r"too large \(5000 digits"),
    ("\u00b2 1", "relative", "non-integer RLE value '\u00b2'"),  # "²": str.isdigit() is True
    ("\u0661\u0662 3", "relative", "non-integer RLE value"),  # Arabic-Indic 12: int() takes it
    ("\uff11 1", "relative", "non-integer RLE value"),  # full-width 1
    ("+1 2", "relative", "non-integer RLE value '\\+1'"),
    ("1\x002 3", "relative", r"non-integer RLE value '1\\x002'"),
    ("=1+2", "relative", "non-integer RLE value '=1\\+2'"),
    (f"{2**63 - 1} 2", "relative", r"too large \(19 digits"),
    # 2**63-1 twice wraps the running end to 0 in int64, so the third run started at 5.
    (f"{2**63 - 1} 1 {2**63 - 1} 1 5 1", "relative", "too large"),
    (f"{rle.MAX_PIXELS + 1} 1", "standard", "too large"),
    # Every value fits, their sum does not: the run would end past any DICOM image.
    (" ".join([str(rle.MAX_PIXELS)] * 4), "relative", "past the end of any image"),
    ("-" + "1" * 100 + " 1", "relative", r"negative RLE value '-1{23}'\.\.\. \(101 characters"),
]


@pytest.mark.parametrize(("text", "dialect", "fragment"), HOSTILE)
def test_hostile_numbers_are_one_line_rle_errors(text, dialect, fragment):
    with pytest.raises(rle.RLEError, match=fragment) as info:
        rle.decode(text, (8, 8), dialect)
    message = str(info.value)
    assert "\n" not in message and len(message) < 200


def test_leading_zeros_do_not_count_as_digits():
    np.testing.assert_array_equal(
        rle.decode("0" * 30 + "3 1", (2, 2)), np.array([[0, 0], [0, 1]], np.uint8)
    )


def test_largest_values_still_parse_and_are_checked_against_the_image():
    starts, lengths = rle.parse_runs(f"{rle.MAX_PIXELS - 1} 1")
    assert (int(starts[0]), int(lengths[0])) == (rle.MAX_PIXELS - 1, 1)
    with pytest.raises(rle.RLEError, match="runs past the end of a 8x8 image"):
        rle.check_bounds(starts, lengths, (8, 8))
