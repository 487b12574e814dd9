"""Run-length codecs for SIIM masks: pure numpy, no framework imports.

Two dialects share one pixel order: **column-major** over the image, i.e. the
flat index of pixel ``(row, col)`` is ``col * height + row`` (the mask is the
transpose of the row-major image array).

* ``"relative"`` (SIIM-ACR, train-rle.csv / stage_2_train.csv / submissions):
  pairs ``start length``; the first start is an absolute 0-based flat index,
  every later start is the gap from the exclusive end of the previous run.
* ``"standard"`` (most other Kaggle competitions): pairs of absolute, 1-based
  starts and lengths, strictly increasing and non-overlapping.

An empty mask encodes as ``"-1"``. Masks are ``uint8`` arrays of shape
``(H, W)`` holding 0/1. Malformed strings raise :class:`RLEError`, whose message
is meant for a person reading an error ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import cv2
import numpy as np

Dialect = Literal["relative", "standard"]
DIALECTS: tuple[str, ...] = ("relative", "standard")
EMPTY = "-1"


class RLEError(ValueError):
    """A run-length string that cannot be decoded (the message says why)."""


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown RLE dialect {dialect!r}; expected one of {DIALECTS}")


def is_empty(rle: str) -> bool:
    """True for the "no mask" marker (``-1``, with or without surrounding spaces)."""
    return rle.strip() == EMPTY


def parse_runs(rle: str, dialect: Dialect = "relative") -> tuple[np.ndarray, np.ndarray]:
    """Parse an RLE string into absolute 0-based run ``starts`` and ``lengths`` (int64).

    Checks syntax only (not the image size: see :func:`check_bounds`). ``-1`` gives
    two empty arrays.
    """
    _check_dialect(dialect)
    text = rle.strip()
    if text == EMPTY:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not text:
        raise RLEError("empty RLE string (an empty mask is written as -1)")
    tokens = text.split()
    if len(tokens) % 2:
        raise RLEError(f"odd number of RLE values ({len(tokens)}): expected start/length pairs")
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise RLEError(f"non-integer RLE value {bad!r}") from None
    if (values < 0).any():
        raise RLEError(f"negative RLE value {int(values[values < 0][0])}")
    firsts, lengths = values[0::2], values[1::2]
    if (lengths == 0).any():
        raise RLEError("RLE run of length 0")
    if dialect == "relative":
        # start_i = first_i + sum of (first_j + length_j) for j < i
        ends_before = np.concatenate(([0], np.cumsum(firsts + lengths)[:-1]))
        starts = firsts + ends_before
    else:
        if (firsts == 0).any():
            raise RLEError("standard RLE starts are 1-based; found a start of 0")
        starts = firsts - 1
        if len(starts) > 1 and (starts[1:] < starts[:-1] + lengths[:-1]).any():
            raise RLEError(
                "standard RLE runs overlap or are out of order "
                "(is this the SIIM relative dialect? try --rle-dialect relative)"
            )
    return starts, lengths


def check_bounds(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]) -> None:
    """Raise :class:`RLEError` when a run ends past the last pixel of ``shape``."""
    n = int(shape[0]) * int(shape[1])
    if len(starts) and int((starts + lengths).max()) > n:
        raise RLEError(
            f"RLE runs past the end of a {shape[0]}x{shape[1]} image "
            f"(last pixel {int((starts + lengths).max()) - 1}, image has {n})"
        )


def decode(rle: str, shape: tuple[int, int], dialect: Dialect = "relative") -> np.ndarray:
    """Decode one RLE string into a ``uint8`` 0/1 mask of ``shape`` ``(H, W)``."""
    starts, lengths = parse_runs(rle, dialect)
    check_bounds(starts, lengths, shape)
    return _paint(starts, lengths, shape)


def _paint(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = int(shape[0]), int(shape[1])
    flat = np.zeros(h * w, np.uint8)
    # One slice assignment per run: a mask has tens to a few thousand runs, far fewer
    # than pixels, so this beats any whole-image pass. Overlapping runs (several regions
    # of one image) just paint the same pixels again: the result is their union.
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        flat[start : start + length] = 1
    return _transpose(flat.reshape(w, h))


def _transpose(a: np.ndarray) -> np.ndarray:
    # OpenCV's blocked transpose is ~30x faster than numpy's strided copy on 1024^2
    # (0.3 ms vs 10+ ms): the column-major order costs nothing this way.
    return cv2.transpose(a)


def merge(rles: Iterable[str], shape: tuple[int, int], dialect: Dialect = "relative") -> np.ndarray:
    """Union (logical OR) of several region strings of one image, as a 0/1 ``uint8`` mask.

    Regions of one image may overlap; summing them would give values > 1.
    """
    all_starts, all_lengths = [], []
    for rle in rles:
        starts, lengths = parse_runs(rle, dialect)
        check_bounds(starts, lengths, shape)
        all_starts.append(starts)
        all_lengths.append(lengths)
    if not all_starts:
        return np.zeros(shape, np.uint8)
    return _paint(np.concatenate(all_starts), np.concatenate(all_lengths), shape)


def encode(mask: np.ndarray, dialect: Dialect = "relative") -> str:
    """Encode a 2-D mask (any nonzero pixel is foreground) as an RLE string.

    Runs that touch the last pixel are kept (the organisers' reference encoder
    dropped them). An all-zero mask gives ``"-1"``.
    """
    _check_dialect(dialect)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W); got shape {mask.shape}")
    flat = _transpose((np.asarray(mask) != 0).view(np.uint8)).reshape(-1)
    if not flat.any():
        return EMPTY
    # Run edges: where the value changes, plus the ends when a run touches them.
    inner = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    change = np.concatenate(([0] if flat[0] else [], inner, [flat.size] if flat[-1] else []))
    starts, ends = change[0::2], change[1::2]
    lengths = ends - starts
    if dialect == "relative":
        firsts = starts - np.concatenate(([0], ends[:-1]))
    else:
        firsts = starts + 1
    out = np.empty(2 * len(starts), np.int64)
    out[0::2], out[1::2] = firsts, lengths
    return " ".join(map(str, out.tolist()))
