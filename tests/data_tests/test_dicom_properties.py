"""Properties of the DICOM reader on hostile input (hypothesis), on real files, no mocks.

Whatever the bytes: :func:`read`, :func:`read_meta` and :func:`read_image` return a
consistent result or raise :class:`DicomError` (a ``TypeError`` only for arguments of
the wrong type), and memory stays bounded: no decoded image exceeds the pixel budget,
and the peak of traced allocations (numpy arrays and Python objects, which is what the
decoders hand back; tracemalloc) stays within a fixed multiple of it.
"""

from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.uid import JPEG2000Lossless

from pneumotune.data import dicom
from tests.data_tests import dicom_factory as fac

# Small, so that a budget that bites is small too: 40x36 8-bit is 1440 bytes (OpenJPEG
# wants 32 px a side or more).
IMG = fac.smooth_image((40, 36), seed=7)
IMG16 = fac.smooth_image((40, 36), seed=8, high=4095, dtype=np.uint16)
BASES = {
    "jpeg": fac.jpeg_baseline(IMG),
    "native": fac.native(IMG),
    "big-endian-12bit": fac.big_endian(IMG16, bits_stored=12),
    "deflated": fac.deflated(IMG),
    "rle": fac.compressed(IMG, fac.LOSSLESS["rle"]),
    "jpeg-ls": fac.compressed(IMG, fac.LOSSLESS["jpeg-ls"]),
    "j2k": fac.compressed(IMG, JPEG2000Lossless),
    "no-preamble": fac.without_preamble(fac.jpeg_baseline(IMG)),
}
BUDGET = 64 * 1024  # 64 KiB: 45x the images above, 1/4096 of a 16384x16384 bomb
# What one read may allocate at most: the float64 display pipeline makes a few arrays
# of 8 bytes per pixel; a deflated data set may inflate its allowance beyond the pixels.
PEAK_LIMIT = 64 * BUDGET + dicom.NON_PIXEL_ALLOWANCE + 8 * 2**20

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout; a failure prints its example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@contextmanager
def _traced_peak() -> Iterator[list[int]]:
    """The peak of traced allocations inside the block, appended to the yielded list."""
    out: list[int] = []
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1] - base)
        if started:
            tracemalloc.stop()


def _check_reads(data: bytes, budget: int = BUDGET) -> None:
    """Each reader: a consistent result or a DicomError, within the memory bound."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns (and logs) on damaged files
        with _traced_peak() as peak:
            try:
                meta, image = dicom.read(data, image_id="x", pixel_budget=budget)
            except dicom.DicomError as exc:
                _check_reason(exc)
            else:
                assert image.dtype == np.uint8
                assert image.shape == (meta.height, meta.width)
                assert image.nbytes <= budget
            try:
                meta = dicom.read_meta(data, image_id="x", pixel_budget=budget)
            except dicom.DicomError as exc:
                _check_reason(exc)
            else:
                assert meta.height * meta.width <= budget
                assert all(not isinstance(v, str) or v.isprintable() for v in vars(meta).values())
            try:
                image = dicom.read_image(data, pixel_budget=budget)
            except dicom.DicomError as exc:
                _check_reason(exc)
            else:
                assert image.dtype == np.uint8 and image.nbytes <= budget
    assert peak[0] < PEAK_LIMIT + 8 * len(data), f"peak {peak[0]} bytes"


def _check_reason(exc: dicom.DicomError) -> None:
    text = str(exc)
    assert text and text.isprintable(), repr(text)  # one printable line for the ledger


# --------------------------------------------------------------------------- arbitrary bytes

_PREAMBLE = bytes(128) + b"DICM"


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=2048).map(lambda tail: _PREAMBLE + tail),  # past the DICM check
    )
)
def test_arbitrary_bytes_give_a_dicom_error_or_an_image(data):
    _check_reads(data)


# --------------------------------------------------------------------------- mutated files

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("delete"), st.floats(0, 1, exclude_max=True), st.integers(1, 64)),
    st.tuples(st.just("insert"), st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
)


def _mutate(data: bytes, mutations: list[tuple[str, float, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in mutations:
        at = int(where * len(out)) if out else 0
        if kind == "flip" and out:
            out[at] = value
        elif kind == "cut":
            del out[at:]
        elif kind == "delete":
            del out[at : at + value]
        elif kind == "insert":
            out[at:at] = bytes([value]) * 4
    return bytes(out)


@SETTINGS
@given(st.sampled_from(sorted(BASES)), st.lists(_mutation, min_size=1, max_size=6))
def test_mutated_files_give_a_dicom_error_or_an_image(form, mutations):
    _check_reads(_mutate(BASES[form], mutations))


# --------------------------------------------------------------------------- hostile headers

_US = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 255, 256, 16384, 32768, 65535]), st.integers(0, 65535)
)
_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
    "1.2.3.4",
]
_header = st.fixed_dictionaries(
    {},
    optional={
        "Rows": _US,
        "Columns": _US,
        "SamplesPerPixel": _US,
        "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64, 65535]),
        "BitsStored": st.sampled_from([0, 1, 8, 12, 16, 17, 64]),
        "HighBit": st.sampled_from([0, 7, 11, 15, 63]),
        "PixelRepresentation": st.sampled_from([0, 1, 2]),
        "PlanarConfiguration": st.sampled_from([0, 1]),
        "NumberOfFrames": st.sampled_from(["1", "0", "-1", "2", "1000000000"]),
        "PhotometricInterpretation": st.one_of(
            st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR"]),
            st.text(max_size=16),
        ),
        "ViewPosition": st.text(max_size=16),
        "PatientAge": st.text(max_size=6),
        "RescaleSlope": st.sampled_from(["0", "1e300", "-1", "nan", "2"]),
        "WindowWidth": st.sampled_from(["0", "1", "-5", "1e308", "100"]),
        "WindowCenter": st.sampled_from(["0", "128", "1e308", "-1e308"]),
    },
)


def _with_header(data: bytes, tags: dict, syntax: str | None) -> bytes | None:
    ds = fac.read_back(data)
    try:
        with config.disable_value_validation():
            for keyword, value in tags.items():
                setattr(ds, keyword, value)
            if syntax is not None:
                ds.file_meta.TransferSyntaxUID = syntax
            return fac.to_bytes(ds)
    except Exception:
        return None  # pydicom cannot write this combination: not a file to read


@settings(SETTINGS, max_examples=120)
@given(
    st.sampled_from(sorted(BASES)),
    _header,
    st.one_of(st.none(), st.sampled_from(_TRANSFER_SYNTAXES)),
)
def test_hostile_header_values_stay_within_the_budget(form, tags, syntax):
    # Rows x Columns x SamplesPerPixel x BitsAllocated up to 65535^3 x 8 KiB, lying
    # transfer syntaxes, text in numbers: the budget holds before any decoder runs.
    base = BASES["native"] if form == "no-preamble" else BASES[form]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _with_header(base, tags, syntax)
    if data is not None:
        _check_reads(data)


def test_a_header_that_declares_a_bomb_is_refused_within_the_bound():
    # The property's own check: a header of 16384x16384 is over this test's budget.
    data = _with_header(BASES["rle"], {"Rows": 16384, "Columns": 16384}, None)
    with pytest.raises(dicom.DicomError, match="over the pixel budget"):
        dicom.read_image(data, pixel_budget=BUDGET)
    _check_reads(data)


# --------------------------------------------------------------------------- caller mistakes


@settings(SETTINGS, max_examples=50)
@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.integers()),
    )
)
def test_sources_of_the_wrong_type_are_type_errors(source):
    for read in (dicom.read, dicom.read_meta, dicom.read_image):
        with pytest.raises(TypeError):
            read(source)  # type: ignore[arg-type]
