"""One DICOM file -> a uint8 grayscale image and de-identified metadata.

The SIIM-ACR files are single-frame, 8-bit MONOCHROME2, JPEG Baseline
(``1.2.840.10008.1.2.4.50``). For those the encapsulated JPEG frame is decoded
with OpenCV (~4 ms for 1024x1024, against ~19 ms through pydicom's plugin) and
the pixels are returned unchanged. Every other transfer syntax goes through
pydicom's decoders (native little/big endian, deflated, RLE Lossless, JPEG
Lossless, JPEG-LS, JPEG 2000).

Images come back as ``uint8`` arrays of shape ``(H, W)`` = ``(Rows, Columns)``,
display-ready in the MONOCHROME2 sense (bright = dense):

* 8-bit grayscale (``BitsStored == 8``, unsigned) is passed through byte for byte;
  MONOCHROME1 is inverted (``255 - x``).
* Anything else grayscale (12/16-bit, signed, < 8 bits): the Modality LUT
  (Rescale Slope/Intercept or a Modality LUT Sequence), then the first VOI window
  (Window Center/Width, LINEAR / LINEAR_EXACT / SIGMOID), else a VOI LUT Sequence,
  else robust min-max between the 0.5th and 99.5th percentiles; MONOCHROME1 is
  inverted after that mapping.
* RGB / YBR_FULL / YBR_FULL_422 / YBR_ICT / YBR_RCT: luminance
  (``0.299 R + 0.587 G + 0.114 B``).

Whatever the reader cannot turn into one grayscale radiograph raises
:class:`DicomError` with a reason meant for a person reading an error ledger:
non-DICOM files, truncated files, missing pixel data, multi-frame data, zero-sized
images, unsupported photometric interpretations, transfer syntaxes without an
installed decoder. No other exception type escapes :func:`read`,
:func:`read_image` or :func:`read_meta` (except a ``TypeError`` for a source or
key of the wrong type: a caller's bug, not a bad file).

Privacy: :class:`DicomMeta` never holds a direct identifier. The patient id is
replaced by a keyed pseudonym (:func:`pseudonymise`); PatientName, birth date,
institution and the like are never read.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import pydicom
from pydicom import encaps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
# Bytes read for a header: SIIM headers end ~1 KB in; a longer one is read whole.
HEADER_PREFIX = 64 * 1024

Source = bytes | bytearray | memoryview | str | PathLike[str]

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# After pydicom's decode these all arrive as RGB (it converts YBR_FULL/_422, and the
# JPEG 2000 decoder undoes the ICT/RCT component transforms).
COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")

MAX_AGE_YEARS = 120
# Robust min-max for images without a window: a handful of hot pixels, burned-in
# text or a collimator edge would otherwise own the ends of the range and squeeze
# the anatomy into a few grey levels.
ROBUST_PERCENTILES = (0.5, 99.5)
# Percentiles are taken on a strided subsample once the short side exceeds this:
# the estimate barely moves, and a full-size sort would cost more than the decode.
_PERCENTILE_SIDE = 512
_LUMA = np.array([0.299, 0.587, 0.114])
_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-F]+")
_BYTES_RE = re.compile(r"\bb'(?:[^'\\]|\\.)*'" + r'|\bb"(?:[^"\\]|\\.)*"')
_AGE_RE = re.compile(r"^(\d{1,3})([DWMY]?)$")
_AGE_UNIT_DAYS_PER_YEAR = {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}
_T = TypeVar("_T")


class DicomError(ValueError):
    """A file the reader rejects; ``str(exc)`` is a sentence a person can act on.

    One line; details that differ from file to file (sizes, decoder messages) come
    last, in parentheses, so that the text before `` (`` groups files by reason.
    """


@dataclass(frozen=True)
class DicomMeta:
    """De-identified header fields of one DICOM image.

    ``patient_id`` is a pseudonym (see :func:`pseudonymise`), never the raw PatientID.
    ``photometric`` is ``""`` and ``bits_stored`` is ``0`` when the header lacks them
    (:func:`read_meta` does not judge whether the pixels are decodable).
    """

    image_id: str  # the image_id argument if given, else SOPInstanceUID
    sop_instance_uid: str | None
    patient_id: str | None  # pseudonymise(PatientID, key); None when missing / blank
    sex: str | None  # "M" / "F" / "O"; None when missing or another value
    age: int | None  # whole years; None when missing or invalid
    age_status: str  # "ok" | "missing" | "invalid"
    view_position: str | None  # "PA" / "AP" / ...
    pixel_spacing: float | None  # mm: PixelSpacing[0], else ImagerPixelSpacing[0]
    modality: str | None
    body_part: str | None
    height: int  # Rows
    width: int  # Columns
    photometric: str  # PhotometricInterpretation
    bits_stored: int
    transfer_syntax: str  # UID string


# --------------------------------------------------------------------------- public API


def pseudonymise(patient_id: str | None, key: bytes) -> str | None:
    """Keyed pseudonym of a patient id: the first 16 hex chars of HMAC-SHA256(key, id).

    Surrounding whitespace is ignored (DICOM pads values with spaces). ``None`` or a
    blank id gives ``None``. The same id and key always give the same pseudonym, so
    patient-grouped splits still work; without the key the id cannot be recovered
    (with the default empty key a guessable id could be found by trying candidates).
    """
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"key must be bytes, got {type(key).__name__}")
    if patient_id is None or not str(patient_id).strip():
        return None
    digest = hmac.new(bytes(key), str(patient_id).strip().encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:16]


def read_meta(source: Source, image_id: str | None = None, key: bytes = b"") -> DicomMeta:
    """Read the header only (the pixel data is not read) into a :class:`DicomMeta`.

    ``source`` is the whole file content as bytes, or a path. Raises
    :class:`DicomError` for non-DICOM files, truncated headers, headers without
    Rows/Columns, and when there is neither an ``image_id`` nor a SOPInstanceUID.
    """
    _check_arguments(source, key)
    with _as_dicom_error():
        return _meta(_parse(source, header_only=True), image_id, key)


def read_image(source: Source) -> np.ndarray:
    """Decode the single frame of ``source`` into a ``uint8`` ``(H, W)`` image.

    Display-ready in the MONOCHROME2 sense (see the module docstring for the
    mapping). Raises :class:`DicomError` for anything that is not one decodable
    grayscale or colour radiograph.
    """
    _check_arguments(source, b"")
    with _as_dicom_error():
        return _image(_parse(source, header_only=False))


def read(
    source: Source, image_id: str | None = None, key: bytes = b""
) -> tuple[DicomMeta, np.ndarray]:
    """:func:`read_meta` and :func:`read_image` in one pass over the file."""
    _check_arguments(source, key)
    with _as_dicom_error():
        parsed = _parse(source, header_only=False)
        return _meta(parsed, image_id, key), _image(parsed)


# --------------------------------------------------------------------------- parsing


def _check_arguments(source: object, key: object) -> None:
    # A caller's mistake, not a bad file: a TypeError, never a ledger row.
    if not isinstance(source, bytes | bytearray | memoryview | str | PathLike):
        raise TypeError(f"source must be bytes or a path, got {type(source).__name__}")
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"key must be bytes, got {type(key).__name__}")


@contextmanager
def _as_dicom_error() -> Iterator[None]:
    # Real-world files from many vendors break pydicom, numpy and OpenCV in ways
    # nobody can list in advance; one bad file must become one ledger row, not a
    # crashed conversion run.
    try:
        yield
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(f"unreadable DICOM ({type(exc).__name__}: {_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    # Decoder errors span several lines (one per plugin) and name objects by memory
    # address; a ledger row is one line and should read the same for every file.
    # pydicom quotes raw element bytes when a value has the wrong length, and in a
    # damaged file those bytes can be a patient's id or name: they are dropped.
    text = _BYTES_RE.sub("<bytes>", " ".join(str(exc).split()))
    return _ADDRESS_RE.sub("", text)


class _TrackedReader(io.BytesIO):
    """An in-memory file that records whether the data ended inside an element.

    pydicom is lenient with files that end early: it keeps a short value, or drops
    the element with a warning, or stops silently. A read that returns fewer bytes
    than asked for is the sign. The one short read every valid file ends with is
    the 8-byte tag read that finds nothing (0 of 8 bytes), so that one is not counted.
    In memory because pydicom calls ``tell()`` once per element: on a real file each
    is a system call that releases the GIL, which made the header pass 4x slower.
    """

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name
        self.ended_early = False

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size > 0 and len(data) < size and (data or size != 8):
            self.ended_early = True
        return data


@dataclass
class _Parsed:
    ds: Dataset
    ended_early: bool  # the data ran out inside an element (a truncated file)
    header_only: bool
    size: int  # bytes in the file


def _parse(source: Source, *, header_only: bool) -> _Parsed:
    """Parse ``source``; a second, forced attempt only when the DICM preamble is missing."""
    data, size = _load(source, HEADER_PREFIX if header_only else None)
    if size == 0:
        raise DicomError("empty file (0 bytes)")
    parsed = _parse_bytes(data, size, _name(source), header_only)
    if parsed is None and len(data) < size:  # the header is longer than the prefix read
        data, size = _load(source, None)
        parsed = _parse_bytes(data, size, _name(source), header_only)
    if parsed is None:
        raise _truncated(size)
    return _check_parsed(parsed)


def _parse_bytes(data: bytes, size: int, name: str, header_only: bool) -> _Parsed | None:
    """The parse of ``data`` (the first bytes of a ``size``-byte file), or None when those
    bytes end inside an element and more of the file was not read."""
    partial = len(data) < size
    reader = _TrackedReader(data, name)
    try:
        ds = pydicom.dcmread(reader, stop_before_pixels=header_only)
    except InvalidDicomError:
        pass  # no preamble / DICM prefix: try again as a raw dataset below
    except Exception as exc:
        if reader.ended_early:  # a parser error caused by the missing end of the data
            if partial:
                return None
            raise _truncated(size) from exc
        raise
    else:
        if partial and _ran_out(reader, data):
            return None
        return _Parsed(ds, reader.ended_early, header_only, size)
    # Old (ACR-NEMA style) and some vendor files start directly with the data
    # elements. force=True parses anything, so a result only counts if it holds
    # an image header (Rows and Columns); a PNG or a text file does not.
    reader = _TrackedReader(data, name)
    try:
        ds = pydicom.dcmread(reader, stop_before_pixels=header_only, force=True)
        has_image_header = "Rows" in ds and "Columns" in ds
    except Exception:
        has_image_header = False
    if partial and _ran_out(reader, data):
        return None
    if not has_image_header:
        raise DicomError("not a DICOM file (no DICM preamble and no valid DICOM header)")
    return _Parsed(ds, reader.ended_early, header_only, size)


def _ran_out(reader: _TrackedReader, data: bytes) -> bool:
    # At the end of a prefix even a clean 0-of-8 tag read means "maybe more elements".
    return reader.ended_early or reader.tell() >= len(data)


def _load(source: Source, limit: int | None) -> tuple[bytes, int]:
    """The first ``limit`` bytes of ``source`` (all of them for None) and its size."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return (data if limit is None else data[:limit]), len(data)
    try:
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            return handle.read(-1 if limit is None else limit), size
    except OSError as exc:
        raise DicomError(f"cannot open file: {exc.strerror or exc}") from exc


def _name(source: Source) -> str:
    return "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else str(source)


def _truncated(size: int) -> DicomError:
    return DicomError(
        f"truncated file: the data ends in the middle of a data element ({size} bytes)"
    )


def _check_parsed(parsed: _Parsed) -> _Parsed:
    ds = parsed.ds
    truncated = _truncated(parsed.size)
    # pydicom drops everything it had read when a file ends inside pixel data that
    # is encapsulated, so "no Rows" is often a truncation: check that first.
    if "Rows" not in ds or "Columns" not in ds:
        if parsed.ended_early:
            raise truncated
        raise DicomError("no pixel data (no Rows/Columns in the header: not an image)")
    if parsed.header_only and parsed.ended_early:
        raise truncated
    if not parsed.header_only and "PixelData" not in ds:
        if parsed.ended_early:
            raise truncated
        raise DicomError("no pixel data")
    _ensure_transfer_syntax(ds)
    return parsed


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Fill in a missing Transfer Syntax UID from the encoding the dataset was read with."""
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    if _text(ds.file_meta, "TransferSyntaxUID"):
        return
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        raise DicomError(
            "compressed pixel data but no Transfer Syntax UID in the file meta: "
            "cannot tell which codec to use"
        )
    implicit, little = ds.original_encoding
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif little is False:
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


# --------------------------------------------------------------------------- header values


def _text(ds: Dataset, keyword: str) -> str | None:
    """The stripped string value of an element, or None when missing or blank.

    Reads the raw bytes where it can, without pydicom's value conversion: pydicom's
    validator would warn (and log) on every SIIM file, whose PatientAge "58" is not
    in the DICOM AS form "058Y". Only for code-like values (AS, CS, DS, IS, UI),
    which are plain ASCII; multiple values come back joined with a backslash.
    """
    if keyword not in ds:
        return None
    value: Any = ds.get_item(keyword).value
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("ascii", errors="replace")
    elif value is None:
        return None
    elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip(" \x00")
    return text or None


def _first_number(ds: Dataset, keyword: str, kind: Callable[[str], _T]) -> _T | None:
    text = _text(ds, keyword)
    if text is None:
        return None
    try:
        return kind(text.split("\\")[0].strip())
    except ValueError:
        return None


def _us(ds: Dataset, keyword: str) -> int | None:
    """An unsigned binary integer element (Rows, BitsStored, ...), converted by pydicom."""
    value = ds.get(keyword)
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    return int(value) if isinstance(value, int) else None


def _is(ds: Dataset, keyword: str) -> int | None:
    """An IS (integer string) element such as NumberOfFrames; "3" and "3.0" both give 3."""
    number = _first_number(ds, keyword, float)
    return int(number) if number is not None and math.isfinite(number) else None


def _float(ds: Dataset, keyword: str) -> float | None:
    number = _first_number(ds, keyword, float)
    return number if number is not None and math.isfinite(number) else None


def parse_age(text: str | None) -> tuple[int | None, str]:
    """``(years, status)`` from a PatientAge value; status is "ok", "missing" or "invalid".

    Accepts SIIM's plain numbers ("58") and the DICOM AS form ("058Y", "006M",
    "010W", "020D"); months, weeks and days count as whole years (so "006M" is 0).
    Anything else, and ages above 120 years, is invalid.
    """
    if text is None or not text.strip():
        return None, "missing"
    match = _AGE_RE.match(text.strip().upper())
    if match is None:
        return None, "invalid"
    years = int(match.group(1)) // _AGE_UNIT_DAYS_PER_YEAR[match.group(2)]
    if years > MAX_AGE_YEARS:
        return None, "invalid"
    return years, "ok"


def _spacing(ds: Dataset) -> float | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _float(ds, keyword)
        if value is not None and value > 0:
            return value
    return None


def _patient_id(ds: Dataset) -> str | None:
    # Through pydicom's conversion (character set aware); the LO validator does not
    # echo the value into warnings, so the raw id never reaches a log.
    value = ds.get("PatientID")
    return None if value is None else str(value)


def _meta(parsed: _Parsed, image_id: str | None, key: bytes) -> DicomMeta:
    ds = parsed.ds
    sop = _text(ds, "SOPInstanceUID")
    name = image_id if image_id is not None and image_id.strip() else sop
    if name is None:
        raise DicomError("no SOPInstanceUID in the header and no image_id given")
    age, age_status = parse_age(_text(ds, "PatientAge"))
    sex = (_text(ds, "PatientSex") or "").upper()
    return DicomMeta(
        image_id=name,
        sop_instance_uid=sop,
        patient_id=pseudonymise(_patient_id(ds), key),
        sex=sex if sex in ("M", "F", "O") else None,
        age=age,
        age_status=age_status,
        view_position=_text(ds, "ViewPosition"),
        pixel_spacing=_spacing(ds),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        height=_us(ds, "Rows") or 0,
        width=_us(ds, "Columns") or 0,
        photometric=_text(ds, "PhotometricInterpretation") or "",
        bits_stored=_us(ds, "BitsStored") or _us(ds, "BitsAllocated") or 0,
        transfer_syntax=_text(ds.file_meta, "TransferSyntaxUID") or "",
    )


# --------------------------------------------------------------------------- pixels


def _image(parsed: _Parsed) -> np.ndarray:
    ds = parsed.ds
    rows, cols = _us(ds, "Rows") or 0, _us(ds, "Columns") or 0
    if rows <= 0 or cols <= 0:
        raise DicomError(f"zero-sized image ({rows}x{cols})")
    frames = _is(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames): expected one radiograph")
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    if photometric not in GRAYSCALE + COLOR:
        shown = photometric or "missing"
        raise DicomError(
            f"unsupported photometric interpretation {shown}: expected a grayscale "
            "(MONOCHROME1/2) or RGB/YBR radiograph"
        )
    uid = UID(_text(ds.file_meta, "TransferSyntaxUID") or "")
    if uid == JPEG_BASELINE:
        image = _decode_jpeg_baseline(ds, rows, cols)
        if image is not None:
            return _invert(image) if photometric == "MONOCHROME1" else image
    return _to_display(_decode_with_pydicom(ds, uid, rows, cols), ds, photometric)


def _decode_jpeg_baseline(ds: Dataset, rows: int, cols: int) -> np.ndarray | None:
    """The fast path: the one encapsulated JPEG frame through OpenCV, or None to fall back.

    Returns the ``uint8`` ``(rows, cols)`` luminance image (before any MONOCHROME1
    inversion), or None whenever OpenCV's answer cannot be trusted: no frame,
    a frame without an end-of-image marker (OpenCV would fill the missing part
    with grey and only print a warning), or a decode failure. A frame that decodes
    to another size than the header's raises :class:`DicomError`.
    """
    try:
        frame = encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception:
        return None
    # A frame is padded to even length with 0x00 after the EOI marker (FFD9).
    if b"\xff\xd9" not in frame[-8:]:
        return None
    image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8:
        return None
    if image.shape[:2] != (rows, cols):
        # A well-formed JPEG of another size: no decoder can make it fit the header.
        raise DicomError(
            "JPEG frame size differs from the header "
            f"({image.shape[0]}x{image.shape[1]} vs {rows}x{cols})"
        )
    if image.ndim == 3:
        if image.shape[2] != 3:
            return None
        # libjpeg has already turned YCbCr into RGB, which OpenCV hands over as BGR.
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image


def _decode_with_pydicom(ds: Dataset, uid: UID, rows: int, cols: int) -> np.ndarray:
    for keyword in ("SamplesPerPixel", "BitsAllocated", "PixelRepresentation"):
        if _us(ds, keyword) is None:
            raise DicomError(f"incomplete image header (no {keyword})")
    try:
        decoder = get_decoder(uid)
        available = decoder.is_available
    except NotImplementedError:
        available = False
    if not available:
        name = uid.name if uid.name != str(uid) else "unknown"
        raise DicomError(f"unsupported transfer syntax {uid} ({name}) and no decoder installed")
    if not uid.is_encapsulated:
        expected = get_expected_length(ds, "bytes")
        got = len(ds.PixelData)
        if got < expected:
            raise DicomError(
                "truncated file: pixel data is shorter than the header says "
                f"({got} of {expected} bytes)"
            )
    try:
        array = ds.pixel_array
    except Exception as exc:
        raise DicomError(f"cannot decode {uid.name} pixel data ({_one_line(exc)})") from exc
    if array.shape[:2] != (rows, cols):
        raise DicomError(
            "decoded image size differs from the header "
            f"({array.shape[0]}x{array.shape[1]} vs {rows}x{cols})"
        )
    return array


def _to_display(array: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Map decoded pixels ``(H, W)`` or RGB ``(H, W, 3)`` to display-ready uint8 ``(H, W)``."""
    if array.ndim == 3:
        if array.dtype == np.uint8:
            return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2GRAY)
        return _scale_robust(array.astype(np.float64) @ _LUMA)
    bits = _us(ds, "BitsStored") or _us(ds, "BitsAllocated") or 0
    if array.dtype == np.uint8 and bits == 8:
        # The SIIM contract: 8-bit grayscale arrives exactly as stored.
        image = array if array.flags.writeable else array.copy()
    else:
        values = _modality(array, ds)
        unit = _voi(values, ds)
        image = _scale_robust(values) if unit is None else _unit_to_uint8(unit)
    return _invert(image) if photometric == "MONOCHROME1" else image


def _invert(image: np.ndarray) -> np.ndarray:
    return np.subtract(255, image, dtype=np.uint8)


def _modality(array: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (float64): Modality LUT Sequence or Rescale."""
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(array, ds).astype(np.float64)
    slope = _float(ds, "RescaleSlope")
    intercept = _float(ds, "RescaleIntercept")
    values = array.astype(np.float64)
    # A zero slope would flatten the image: a broken header, treated as absent.
    if slope is not None and slope != 0 and slope != 1:
        values *= slope
    if intercept:
        values += intercept
    return values


def _voi(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Modality values -> [0, 1] through the first window (or a VOI LUT); None if neither."""
    center, width = _float(ds, "WindowCenter"), _float(ds, "WindowWidth")
    function = (_text(ds, "VOILUTFunction") or "LINEAR").upper()
    if center is not None and width is not None and width > 0:
        # PS3.3 C.11.2.1.2 and C.11.2.1.3; an unknown function is read as LINEAR.
        if function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if function == "LINEAR_EXACT":
            return np.clip((values - center) / width + 0.5, 0.0, 1.0)
        if width >= 1:
            if width == 1:  # LINEAR with width 1 is a threshold at center - 0.5
                return (values > center - 0.5).astype(np.float64)
            return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    lut = ds.get("VOILUTSequence")
    if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
        depth = int(lut[0].LUTDescriptor[2])
        # The VOI LUT indexes modality values, which are whole numbers.
        mapped = apply_voi(np.rint(values).astype(np.int64), ds)
        return mapped.astype(np.float64) / float(2**depth - 1)
    return None


def _scale_robust(values: np.ndarray) -> np.ndarray:
    """Linear map of the [0.5, 99.5] percentile range to 0..255 (min-max if that is flat)."""
    step = max(1, min(values.shape[:2]) // _PERCENTILE_SIDE)
    sample = values[::step, ::step]
    low, high = (float(v) for v in np.percentile(sample, ROBUST_PERCENTILES))
    if not high > low:
        low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape[:2], np.uint8)  # a constant image has no contrast
    return _unit_to_uint8(np.clip((values - low) / (high - low), 0.0, 1.0))


def _unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    # Clipped because a VOI LUT may hold values above its declared bit depth.
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def find_dicoms(root: Path) -> list[Path]:
    """Every ``*.dcm`` file below ``root`` (any depth, any case of the suffix), sorted.

    Never rely on the depth of a SIIM tree (study/series/instance).
    """
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() == ".dcm" and p.is_file())
