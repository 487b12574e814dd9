"""Properties of the RLE codec and the label-file parser, on inputs hypothesis makes up.

For any mask, encode/decode is the identity; for any text, the decoder and the label
parser return a valid result or raise the project's own error (RLEError,
LabelFileError), never OverflowError, StopIteration, IndexError or MemoryError; a
decoded mask never paints outside its image.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pneumotune.data import labels, rle

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dialects = st.sampled_from(rle.DIALECTS)
shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))


@st.composite
def masks(draw) -> np.ndarray:
    h, w = draw(shapes)
    bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    return np.array(bits, np.uint8).reshape(h, w)


# Text that looks like RLE often enough to get past the first checks: digits of any
# length (huge ones too), signs, non-ASCII digits, separators, junk.
rle_pieces = st.one_of(
    st.integers(0, 70).map(str),
    st.integers(0, 2**70).map(str),
    st.sampled_from(["-1", "-", "+1", "0", "00", "\u00b2", "\u0661", "\uff11", "1e3", "x"]),
    st.sampled_from([str(2**63 - 1), str(2**64), str(rle.MAX_PIXELS), "9" * 40]),
    st.text(max_size=4),
)
rle_texts = st.one_of(
    st.lists(rle_pieces, max_size=12).map(" ".join),
    st.text(max_size=40),
)


@FAST
@given(masks(), dialects)
def test_encode_decode_round_trip(mask, dialect):
    text = rle.encode(mask, dialect)
    np.testing.assert_array_equal(rle.decode(text, mask.shape, dialect), mask)
    # What encode writes is a safe submission cell: "-1" or ASCII digits and spaces.
    assert text == "-1" or all(t.isascii() and t.isdigit() for t in text.split(" "))


@FAST
@given(rle_texts, shapes, dialects)
def test_decoder_returns_a_mask_of_the_image_or_an_rle_error(text, shape, dialect):
    try:
        mask = rle.decode(text, shape, dialect)
    except rle.RLEError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300
        return
    assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    # Nothing painted outside the image: the runs cover exactly the decoded pixels.
    starts, lengths = rle.parse_runs(text, dialect)
    n = shape[0] * shape[1]
    assert (starts >= 0).all() and (starts + lengths <= n).all()
    assert mask.sum() <= int(lengths.sum())
    if len(starts):
        assert mask.any()


@FAST
@given(st.lists(st.tuples(st.integers(0, 2**66), st.integers(0, 2**66)), max_size=6), shapes)
def test_numbers_of_any_size_never_paint_outside(pairs, shape):
    # Large values in both dialects, the int64 wrap-around included.
    text = " ".join(f"{a} {b}" for a, b in pairs) or "-1"
    for dialect in rle.DIALECTS:
        try:
            mask = rle.decode(text, shape, dialect)
        except rle.RLEError:
            continue
        expected = np.zeros(shape[0] * shape[1], np.uint8)
        end = 0
        for a, b in pairs:  # the dialects' definitions, on Python ints
            start = end + a if dialect == "relative" else a - 1
            expected[start : start + b] = 1
            end = start + b
        np.testing.assert_array_equal(mask, expected.reshape(shape[1], shape[0]).T)


cells = st.one_of(rle_texts, st.sampled_from(["-1", " -1", "", '"', '"a,b"', "0 4"]))
ids = st.one_of(st.sampled_from(["a", "b", " a", "", "=1+2", '"x"', "1.2.3"]), st.text(max_size=8))
lines = st.one_of(
    st.tuples(ids, cells).map(lambda r: f"{r[0]},{r[1]}"),
    st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
    st.text(max_size=30),
)
headers = st.sampled_from(
    ["ImageId,EncodedPixels", "ImageId, EncodedPixels", "\ufeffImageId,EncodedPixels", "x,y", ""]
)


@FAST
@given(headers, st.lists(st.one_of(lines, st.binary(max_size=40)), max_size=15))
def test_label_parser_files_every_row_or_raises_its_own_error(header, rows):
    data = header.encode() + b"\n"
    for r in rows:
        data += (r if isinstance(r, bytes) else r.encode("utf-8", "surrogatepass")) + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_bytes(data)
        try:
            table = labels.read_labels(path)
        except labels.LabelFileError as exc:
            assert "\n" not in str(exc)
            return
    # Counts reconcile: every non-blank row is a usable row, a bad one or an orphan.
    used = sum(map(len, table.rows.values()))
    bad = sum(map(len, table.bad.values()))
    assert table.n_rows == used + bad + len(table.orphans)
    for rows_ in table.rows.values():
        for r in rows_:
            rle.parse_runs(r.rle)  # whatever was kept parses
    for problems in table.bad.values():
        assert all(p.reason.startswith(f"line {p.line}: ") for p in problems)
