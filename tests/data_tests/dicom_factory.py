"""Real DICOM files, written with pydicom, in every form ``data.dicom`` has to handle.

Test-only and self-contained (``data.synth`` has its own SIIM writer). Every builder
returns the complete file content as ``bytes``, exactly what Ray Data's
``read_binary_files`` hands to the reader. Header tags follow the SIIM files:
Secondary Capture, Modality CR, PatientID = PatientName = a UUID,
PatientSex, PatientAge "58", ViewPosition, PixelSpacing, BodyPartExamined CHEST.
Keyword arguments named after DICOM keywords override a tag; ``None`` removes it.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MPEG2 = "1.2.840.10008.1.2.4.100"
PRIVATE_SYNTAX = "1.2.826.0.1.3680043.10.999.1"
# SIIM's PatientID and PatientName are the same random UUID.
PATIENT_ID = "5b6e1c0a-7f3d-4c2e-9a41-2d8f0b7e6c13"
SOP_UID = "1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027"
LOSSLESS = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless, "j2k-lossless": JPEG2000Lossless}


def smooth_image(
    shape: tuple[int, int] = (60, 84), seed: int = 0, high: int = 255, dtype: Any = np.uint8
) -> np.ndarray:
    """A chest-like smooth image ``(H, W)`` spanning ``0..high``: gradients, blobs, faint noise.

    Smooth so that lossy codecs stay within a few grey levels; non-square and not a
    multiple of 8 or 16 so that transposes and JPEG block padding would show.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.3 * yy / h + 0.2 * xx / w
    for _ in range(4):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.15, 0.35) * min(h, w)
        img += rng.uniform(-0.4, 0.6) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img += rng.normal(0, 0.004, shape)
    img = (img - img.min()) / (img.max() - img.min())
    return np.rint(img * high).astype(dtype)


def dataset(
    pixels: np.ndarray | None,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    photometric: str | None = None,
    bits_stored: int | None = None,
    signed: bool = False,
    **tags: Any,
) -> Dataset:
    """A SIIM-like Secondary Capture dataset holding ``pixels`` as native pixel data.

    ``pixels`` is ``(H, W)`` grayscale or ``(H, W, 3)`` colour (interleaved), or
    ``None`` for an image header without Pixel Data. ``bits_stored`` defaults to
    the array's itemsize in bits.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = SOP_UID
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    # SIIM's PatientAge "58" is not in the DICOM AS form: keep pydicom's validator quiet.
    with config.disable_value_validation():
        _fill(ds, pixels, transfer_syntax, photometric, bits_stored, signed, tags)
    return ds


def _fill(
    ds: Dataset,
    pixels: np.ndarray | None,
    transfer_syntax: str,
    photometric: str | None,
    bits_stored: int | None,
    signed: bool,
    tags: dict[str, Any],
) -> None:
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = "1.2.276.0.7230010.3.1.2.8323329.1000.1517875165.878026"
    ds.SeriesInstanceUID = "1.2.276.0.7230010.3.1.3.8323329.1000.1517875165.878025"
    ds.PatientName = PATIENT_ID
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19600101"
    ds.InstitutionName = "St Elsewhere General Hospital"
    ds.PatientSex = "M"
    ds.PatientAge = "58"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PixelSpacing = [0.143, 0.143]
    shape = (60, 84) if pixels is None else pixels.shape
    array = None if pixels is None else np.asarray(pixels)
    itemsize = 1 if array is None else array.dtype.itemsize
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3 if len(shape) == 3 else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if len(shape) == 3 else "MONOCHROME2")
    if len(shape) == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 * itemsize
    ds.BitsStored = bits_stored or 8 * itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if array is not None:
        order = ">" if transfer_syntax == ExplicitVRBigEndian else "<"
        ds.PixelData = array.astype(array.dtype.newbyteorder(order)).tobytes()
        ds["PixelData"].VR = "OB" if itemsize == 1 else "OW"
    _set_tags(ds, tags)


def _set_tags(ds: Dataset, tags: dict[str, Any]) -> None:
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                del ds[keyword]
        else:
            setattr(ds, keyword, value)


def to_bytes(ds: Dataset) -> bytes:
    """The file content: preamble, "DICM", file meta and dataset, in ds's transfer syntax.

    A private transfer syntax is written as explicit VR little endian (pydicom cannot
    know its encoding).
    """
    buffer = io.BytesIO()
    encoding = {}
    if not UID(ds.file_meta.TransferSyntaxUID).is_transfer_syntax:
        encoding = {"implicit_vr": False, "little_endian": True}
    ds.save_as(buffer, enforce_file_format=True, **encoding)
    return buffer.getvalue()


# --------------------------------------------------------------------------- supported forms


def native(pixels: np.ndarray, transfer_syntax: str = ExplicitVRLittleEndian, **kw: Any) -> bytes:
    """Uncompressed pixel data (explicit/implicit little endian, big endian or deflated)."""
    return to_bytes(dataset(pixels, transfer_syntax=transfer_syntax, **kw))


def big_endian(pixels: np.ndarray, **kw: Any) -> bytes:
    return native(pixels, ExplicitVRBigEndian, **kw)


def implicit_little_endian(pixels: np.ndarray, **kw: Any) -> bytes:
    return native(pixels, ImplicitVRLittleEndian, **kw)


def deflated(pixels: np.ndarray, **kw: Any) -> bytes:
    return native(pixels, DeflatedExplicitVRLittleEndian, **kw)


def compressed(pixels: np.ndarray, transfer_syntax: str, **kw: Any) -> bytes:
    """Compressed by pydicom's own encoders (RLE Lossless, JPEG-LS, JPEG 2000)."""
    encoder_options = {"j2k_cr": [15]} if transfer_syntax == JPEG2000 else {}
    ds = dataset(pixels, **kw)
    ds.compress(transfer_syntax, generate_instance_uid=False, **encoder_options)
    return to_bytes(ds)


def jpeg_frame(pixels: np.ndarray, quality: int = 95) -> bytes:
    """One JPEG Baseline frame from grayscale ``(H, W)`` or RGB ``(H, W, 3)`` uint8 pixels."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        # DICOM's YBR_FULL_422 means 2x1 chroma subsampling (OpenCV defaults to 4:2:0).
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]
    ok, encoded = cv2.imencode(".jpg", pixels, params)
    assert ok, "OpenCV could not encode the test frame"
    return encoded.tobytes()


def jpeg_baseline(
    pixels: np.ndarray,
    *,
    quality: int = 95,
    frame: bytes | None = None,
    fragments: int = 1,
    has_bot: bool = True,
    photometric: str | None = None,
    **kw: Any,
) -> bytes:
    """The SIIM form: one JPEG Baseline frame (OpenCV-encoded), encapsulated.

    ``frame`` replaces the encoded frame (for corrupt-frame cases); ``fragments``
    splits it over several items; ``has_bot`` False leaves the Basic Offset Table
    empty.
    """
    if photometric is None:
        photometric = "YBR_FULL_422" if pixels.ndim == 3 else "MONOCHROME2"
    ds = dataset(pixels, transfer_syntax=JPEG_BASELINE, photometric=photometric, **kw)
    data = jpeg_frame(pixels, quality) if frame is None else frame
    ds.PixelData = encapsulate([data], fragments_per_frame=fragments, has_bot=has_bot)
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def rgb(pixels: np.ndarray, **kw: Any) -> bytes:
    """Native interleaved RGB ``(H, W, 3)``."""
    return native(pixels, photometric="RGB", **kw)


def ybr_full(pixels: np.ndarray, **kw: Any) -> bytes:
    """Native YBR_FULL, converted from RGB ``(H, W, 3)`` with pydicom's own transform."""
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(pixels, "RGB", "YBR_FULL")
    return native(ybr, photometric="YBR_FULL", **kw)


def without_preamble(data: bytes) -> bytes:
    """Drop the 128-byte preamble and "DICM": file meta group first."""
    assert data[128:132] == b"DICM"
    return data[132:]


def without_file_meta(data: bytes) -> bytes:
    """Drop preamble, "DICM" and the whole file meta group: a bare dataset (ACR-NEMA style)."""
    assert data[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) File Meta Group Length
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


# --------------------------------------------------------------------------- rejected forms


def multi_frame(frames: int = 3, shape: tuple[int, int] = (60, 84)) -> bytes:
    stack = np.stack([smooth_image(shape, seed=i) for i in range(frames)])
    ds = dataset(stack[0])
    ds.NumberOfFrames = frames
    ds.PixelData = stack.tobytes()
    return to_bytes(ds)


def no_pixel_data() -> bytes:
    """An image header (Rows, Columns, ...) without (7FE0,0010) Pixel Data."""
    return to_bytes(dataset(None))


def zero_sized() -> bytes:
    ds = dataset(smooth_image((60, 84)))
    ds.Rows = 0
    ds.PixelData = b""
    return to_bytes(ds)


def palette_color() -> bytes:
    """8-bit indices into a colour palette (the palette LUT itself does not matter here)."""
    ds = dataset(smooth_image((60, 84)), photometric="PALETTE COLOR")
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.arange(256, dtype="<u2").tobytes())
    return to_bytes(ds)


def encapsulated_without_decoder(transfer_syntax: str = MPEG2) -> bytes:
    """Encapsulated data in a transfer syntax pydicom has no decoder for."""
    ds = dataset(smooth_image((60, 84)), transfer_syntax=transfer_syntax)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def png() -> bytes:
    """A PNG of a radiograph, as if renamed to .dcm."""
    return cv2.imencode(".png", smooth_image((60, 84)))[1].tobytes()


def text() -> bytes:
    return b"ImageId, EncodedPixels\n1.2.276.0.7230010.3.1.4.8323329.1000, -1\n" * 20


# --------------------------------------------------------------------------- hostile forms
# Small files that make a naive reader allocate hundreds of MiB, and cut files that a
# lenient decoder turns into an image. Each is a real file pydicom reads.

BOMB_SIDE = 16384  # 16384 x 16384 x 1 byte = 256 MiB


def with_sof_size(frame: bytes, rows: int, cols: int, components: int | None = None) -> bytes:
    """A JPEG frame whose frame header (SOF0) declares another size (and component count)."""
    at = frame.index(b"\xff\xc0") + 5  # past marker, length and precision
    patched = bytearray(frame)
    patched[at : at + 4] = struct.pack(">HH", rows, cols)
    if components is not None:
        patched[at + 4] = components
    return bytes(patched)


def jpeg_bomb(side: int = BOMB_SIDE, header: tuple[int, int] | None = None) -> bytes:
    """~1.2 KB: a JPEG Baseline file whose one frame declares ``side`` x ``side`` pixels.

    The scan holds a 16x16 image; libjpeg allocates the declared size and fills the rest.
    The DICOM header says the same size, or ``header`` (a frame that lies about itself).
    """
    small = smooth_image((16, 16))
    rows, cols = header or (side, side)
    frame = with_sof_size(jpeg_frame(small, quality=50), side, side)
    return jpeg_baseline(small, frame=frame, Rows=rows, Columns=cols)


def rle_bomb(side: int = BOMB_SIDE) -> bytes:
    """~1 KB: an RLE Lossless file of a small image whose header says ``side`` x ``side``."""
    ds = read_back(compressed(smooth_image((16, 16)), RLELossless))
    ds.Rows = ds.Columns = side
    return to_bytes(ds)


def deflate_bomb(pixel_bytes: int = BOMB_SIDE**2, shape: tuple[int, int] | None = None) -> bytes:
    """A deflated file whose Pixel Data is ``pixel_bytes`` zero bytes (~1000:1: 256 MiB
    of zeros are 260 KB). The header declares ``shape`` (default: a square that holds the
    pixels), so a small ``shape`` makes a file whose pixel data is far larger than its
    image. Written as a stream, without ever holding the inflated bytes.
    """
    side = int(pixel_bytes**0.5)
    rows, cols = shape or (side, side)
    ds = dataset(smooth_image((8, 8)), transfer_syntax=DeflatedExplicitVRLittleEndian)
    ds.Rows, ds.Columns = rows, cols
    del ds.PixelData
    head = to_bytes(ds)
    (group_length,) = struct.unpack("<I", head[140:144])
    meta_end = 144 + group_length
    body = zlib.decompress(head[meta_end:], -zlib.MAX_WBITS)
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixel_bytes)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [head[:meta_end], packer.compress(body + element), packer.flush(zlib.Z_FULL_FLUSH)]
    # After a full flush a deflate block refers to nothing before it: the block of 4 MiB
    # of zeros is compressed once and repeated (seconds less than compressing 256 MiB).
    full, rest = divmod(pixel_bytes, 2**22)
    if full:
        block = packer.compress(bytes(2**22)) + packer.flush(zlib.Z_FULL_FLUSH)
        parts += [block] * full
    parts += [packer.compress(bytes(rest)), packer.flush()]
    return b"".join(parts)


def truncated_jpeg_frame(pixels: np.ndarray, keep: float = 1 / 3) -> bytes:
    """A JPEG frame cut to ``keep`` of its scan data and closed with an EOI marker (FFD9):
    libjpeg decodes it with a warning only, the rest of the image grey."""
    frame = jpeg_frame(pixels)
    sos = frame.index(b"\xff\xda")
    scan = sos + 2 + struct.unpack(">H", frame[sos + 2 : sos + 4])[0]
    data = frame[scan:-2]
    return frame[:scan] + data[: int(len(data) * keep)] + b"\xff\xd9"


def modality_lut_tags(slope: float, intercept: float) -> dict[str, Any]:
    return {"RescaleSlope": slope, "RescaleIntercept": intercept, "RescaleType": "US"}


def voi_lut_sequence(first: int, entries: np.ndarray, depth: int = 8) -> list[Dataset]:
    """A VOI LUT Sequence with one LUT mapping values ``first ..`` to ``entries``."""
    item = Dataset()
    item.LUTDescriptor = [len(entries), first, depth]
    item.LUTData = np.asarray(entries, "<u2").tobytes()
    item["LUTData"].VR = "OW"
    return [item]


def all_supported_8bit(pixels: np.ndarray) -> dict[str, bytes]:
    """Every lossless 8-bit MONOCHROME2 form of ``pixels``: each must decode to it exactly."""
    forms = {
        "explicit-le": native(pixels),
        "implicit-le": implicit_little_endian(pixels),
        "big-endian": big_endian(pixels),
        "deflated": deflated(pixels),
        **{name: compressed(pixels, uid) for name, uid in LOSSLESS.items()},
    }
    forms["no-preamble"] = without_preamble(forms["explicit-le"])
    forms["no-file-meta-explicit"] = without_file_meta(forms["explicit-le"])
    forms["no-file-meta-implicit"] = without_file_meta(forms["implicit-le"])
    return forms


def read_back(data: bytes) -> Dataset:
    """pydicom's own reading of a factory file (for comparisons)."""
    return pydicom.dcmread(io.BytesIO(data))
