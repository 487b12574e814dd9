"""The DICOM reader on real files in every form (written by dicom_factory), no mocks."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom import encaps
from pydicom.uid import JPEG2000

from pneumotune.data import dicom
from tests.data_tests import dicom_factory as fac

IMG8 = fac.smooth_image((60, 84), seed=1)
IMG12 = fac.smooth_image((60, 84), seed=2, high=4095, dtype=np.uint16)
RGB = np.stack([fac.smooth_image((60, 84), seed=s) for s in (3, 4, 5)], axis=-1)
GRAY_OF_RGB = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int32) - b.astype(np.int32))


# --------------------------------------------------------------------------- supported forms

LOSSLESS_8BIT = fac.all_supported_8bit(IMG8)


@pytest.mark.parametrize("form", sorted(LOSSLESS_8BIT))
def test_lossless_8bit_forms_decode_exactly(form):
    image = dicom.read_image(LOSSLESS_8BIT[form])
    assert image.dtype == np.uint8
    assert image.shape == IMG8.shape
    np.testing.assert_array_equal(image, IMG8)


# (name, file, expected, max abs diff, max mean abs diff): lossy codecs and colour
# conversions get a tolerance, everything else is exact.
MONO1 = {"photometric": "MONOCHROME1"}
APPROX_TABLE = [
    ("jpeg-baseline", fac.jpeg_baseline(IMG8), IMG8, 6, 1.5),
    ("jpeg-3-fragments-no-bot", fac.jpeg_baseline(IMG8, fragments=3, has_bot=False), IMG8, 6, 1.5),
    ("jpeg-2000-lossy", fac.compressed(IMG8, JPEG2000), IMG8, 8, 2.0),
    ("monochrome1-native", fac.native(IMG8, **MONO1), 255 - IMG8, 0, 0.0),
    ("monochrome1-jpeg", fac.jpeg_baseline(IMG8, **MONO1), 255 - IMG8, 6, 1.5),
    ("monochrome1-rle", fac.compressed(IMG8, fac.LOSSLESS["rle"], **MONO1), 255 - IMG8, 0, 0.0),
    ("rgb-native", fac.rgb(RGB), GRAY_OF_RGB, 0, 0.0),
    ("ybr-full-native", fac.ybr_full(RGB), GRAY_OF_RGB, 2, 0.1),
    ("ybr-full-422-jpeg", fac.jpeg_baseline(RGB), GRAY_OF_RGB, 8, 1.5),
]


@pytest.mark.parametrize(
    ("data", "expected", "max_diff", "mean_diff"),
    [row[1:] for row in APPROX_TABLE],
    ids=[row[0] for row in APPROX_TABLE],
)
def test_forms_decode_to_the_source_image(data, expected, max_diff, mean_diff):
    image = dicom.read_image(data)
    assert image.dtype == np.uint8
    assert image.shape == expected.shape
    diff = _diff(image, expected)
    assert diff.max() <= max_diff
    assert diff.mean() <= mean_diff


def test_8bit_jpeg_baseline_is_byte_identical_to_opencv():
    # The SIIM contract: pixels arrive exactly as OpenCV decodes the frame, no rescaling.
    data = fac.jpeg_baseline(IMG8)
    frame = encaps.get_frame(fac.read_back(data).PixelData, 0, number_of_frames=1)
    expected = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(dicom.read_image(data), expected)


def _fast_path(data: bytes) -> np.ndarray | None:
    """What the JPEG Baseline fast path makes of a file (None: it hands over to pydicom)."""
    ds = fac.read_back(data)
    uid = pydicom.uid.UID(dicom.JPEG_BASELINE)
    frame = dicom._checked_frame(ds, uid, ds.Rows, ds.Columns, dicom.PIXEL_BUDGET)
    return dicom._decode_jpeg_baseline(*frame)


def test_fast_path_matches_pydicoms_decoder():
    img = fac.smooth_image((256, 256), seed=9)
    data = fac.jpeg_baseline(img, quality=90)
    fast = _fast_path(data)
    assert fast is not None, "the libjpeg-turbo fast path was not taken"
    np.testing.assert_array_equal(dicom.read_image(data), fast)
    assert _diff(fast, fac.read_back(data).pixel_array).max() <= 2


@pytest.mark.parametrize(("fragments", "has_bot"), [(1, True), (1, False), (3, True), (3, False)])
def test_fast_path_reads_fragmented_frames_with_or_without_offset_table(fragments, has_bot):
    fast = _fast_path(fac.jpeg_baseline(IMG8, fragments=fragments, has_bot=has_bot))
    assert fast is not None
    np.testing.assert_array_equal(fast, dicom.read_image(fac.jpeg_baseline(IMG8)))


def test_complete_frame_without_its_end_marker_is_read_by_the_fast_path():
    # Only the EOI marker (FFD9) is missing: the scan is whole, so the image is too.
    frame = fac.jpeg_frame(IMG8)[:-2]
    fast = _fast_path(fac.jpeg_baseline(IMG8, frame=frame))
    np.testing.assert_array_equal(fast, dicom.read_image(JPEG_SIIM))


def test_frames_the_fast_path_does_not_take_go_to_pydicom():
    # Four components (CMYK / YCCK): not a frame the 8-bit fast path decodes.
    cmyk = fac.jpeg_frame(IMG8)
    header = cmyk.index(b"\xff\xc0")
    cmyk = cmyk[: header + 9] + b"\x04" + cmyk[header + 10 :]
    assert _fast_path(fac.jpeg_baseline(IMG8, frame=cmyk)) is None
    with pytest.raises(dicom.DicomError, match="JPEG Baseline"):
        dicom.read_image(fac.jpeg_baseline(IMG8, frame=cmyk))


def test_sources_bytes_str_and_path_agree(tmp_path):
    data = fac.jpeg_baseline(IMG8)
    path = tmp_path / f"{fac.SOP_UID}.dcm"
    path.write_bytes(data)
    from_bytes = dicom.read(data)
    for source in (path, str(path), bytearray(data), memoryview(data)):
        meta, image = dicom.read(source)
        assert meta == from_bytes[0]
        np.testing.assert_array_equal(image, from_bytes[1])


def test_read_gives_what_read_meta_and_read_image_give():
    data = fac.compressed(IMG8, fac.LOSSLESS["jpeg-ls"])
    meta, image = dicom.read(data, image_id="x", key=b"k")
    assert meta == dicom.read_meta(data, image_id="x", key=b"k")
    np.testing.assert_array_equal(image, dicom.read_image(data))


def test_reading_a_siim_file_emits_no_warnings():
    # pydicom would warn (and log) on SIIM's PatientAge "58" for every file.
    data = fac.jpeg_baseline(IMG8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dicom.read(data)


# --------------------------------------------------------------------------- > 8 bits

# Stored s -> modality x = 2 s - 1024, window center 0 / width 401 (LINEAR):
# y = clip((x + 0.5) / 400 + 0.5, 0, 1) * 255, rounded. Hand-computed pairs:
WINDOW_TAGS = {
    **fac.modality_lut_tags(2, -1024),
    "WindowCenter": 0,
    "WindowWidth": 401,
}
WINDOW_TABLE = [
    (0, 0),  # x = -1024, far below the window
    (412, 0),  # x = -200: 0.00125 * 255 = 0.3
    (462, 64),  # x = -100: 0.25125 * 255 = 64.1
    (512, 128),  # x = 0 (the center): 0.50125 * 255 = 127.8
    (562, 192),  # x = 100: 0.75125 * 255 = 191.6
    (612, 255),  # x = 200: above center - 0.5 + 200
    (4095, 255),  # x = 7166
]
WINDOW_STORED = np.array([[s for s, _ in WINDOW_TABLE]] * 3, np.uint16)
WINDOW_EXPECTED = np.array([[y for _, y in WINDOW_TABLE]] * 3, np.uint8)


def test_window_maps_to_0_255_after_rescale():
    data = fac.native(WINDOW_STORED, bits_stored=12, **WINDOW_TAGS)
    np.testing.assert_array_equal(dicom.read_image(data), WINDOW_EXPECTED)


def test_window_monochrome1_is_inverted_after_windowing():
    data = fac.native(WINDOW_STORED, bits_stored=12, photometric="MONOCHROME1", **WINDOW_TAGS)
    np.testing.assert_array_equal(dicom.read_image(data), 255 - WINDOW_EXPECTED)


def test_signed_pixels_with_multi_valued_window_use_the_first():
    stored = WINDOW_STORED.astype(np.int16) - 512  # -512 .. 3583, the center at 0
    tags = {"RescaleSlope": 2, "RescaleIntercept": 0, "WindowCenter": [0, 999]}
    data = fac.native(stored, bits_stored=16, signed=True, WindowWidth=[401, 5], **tags)
    np.testing.assert_array_equal(dicom.read_image(data), WINDOW_EXPECTED)


@pytest.mark.parametrize(("function", "expected"), [("LINEAR_EXACT", 128), ("SIGMOID", 128)])
def test_voi_functions_put_the_center_at_mid_grey(function, expected):
    stored = np.full((4, 4), 512, np.uint16)
    data = fac.native(stored, bits_stored=12, VOILUTFunction=function, **WINDOW_TAGS)
    assert int(dicom.read_image(data)[0, 0]) == expected


def test_voi_lut_sequence_without_window():
    stored = np.array([[100, 101, 102, 103]], np.uint16)
    lut = fac.voi_lut_sequence(first=100, entries=np.array([0, 51, 204, 255]))
    data = fac.native(stored, bits_stored=12, VOILUTSequence=lut)
    np.testing.assert_array_equal(dicom.read_image(data), [[0, 51, 204, 255]])


def test_16bit_lossless_forms_match_native_little_endian():
    tags = {"bits_stored": 12, **WINDOW_TAGS, "WindowCenter": 2000, "WindowWidth": 3000}
    reference = dicom.read_image(fac.native(IMG12, **tags))
    assert reference.min() < 40 and reference.max() > 215  # the window spans the image
    forms = {"big-endian": fac.big_endian(IMG12, **tags)}
    forms |= {name: fac.compressed(IMG12, uid, **tags) for name, uid in fac.LOSSLESS.items()}
    for name, data in forms.items():
        np.testing.assert_array_equal(dicom.read_image(data), reference, err_msg=name)


def test_without_window_robust_min_max_ignores_hot_pixels():
    ramp = np.tile(np.linspace(1000, 2000, 100), (100, 1)).astype(np.uint16)
    ramp[0, 0] = 65535  # one hot pixel would squeeze plain min-max into 1/65 of the range
    image = dicom.read_image(fac.native(ramp, bits_stored=16))
    body = image[1:]
    assert body.min() <= 2 and body.max() >= 253
    assert image[0, 0] == 255
    assert np.all(np.diff(body[0].astype(int)) >= 0)  # monotone: no wrap-around


def test_constant_16bit_image_is_black_not_an_error():
    image = dicom.read_image(fac.native(np.full((8, 8), 777, np.uint16), bits_stored=12))
    np.testing.assert_array_equal(image, np.zeros((8, 8), np.uint8))


# --------------------------------------------------------------------------- rejected forms

JPEG_SIIM = fac.jpeg_baseline(IMG8)
NATIVE_SIIM = fac.native(IMG8)

REJECT_TABLE = [
    ("multi-frame", fac.multi_frame(12), "multi-frame DICOM (12 frames): expected one radiograph"),
    ("no-pixel-data", fac.no_pixel_data(), "no pixel data"),
    ("zero-sized", fac.zero_sized(), "zero-sized image (0x84)"),
    ("palette-color", fac.palette_color(), "unsupported photometric interpretation PALETTE COLOR"),
    ("mpeg2", fac.encapsulated_without_decoder(fac.MPEG2),
     "unsupported transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2 Main Profile / Main Level) "
     "and no decoder installed"),
    ("private-syntax", fac.encapsulated_without_decoder(fac.PRIVATE_SYNTAX),
     f"unsupported transfer syntax {fac.PRIVATE_SYNTAX} (unknown) and no decoder installed"),
    ("png", fac.png(), "not a DICOM file (no DICM preamble and no valid DICOM header)"),
    ("text", fac.text(), "not a DICOM file"),
    ("empty", b"", "empty file (0 bytes)"),
    ("truncated-jpeg-pixel-data", JPEG_SIIM[: len(JPEG_SIIM) * 2 // 3], "truncated file"),
    ("truncated-native-pixel-data", NATIVE_SIIM[:-100],
     f"truncated file: pixel data is shorter than the header says "
     f"({IMG8.size - 100} of {IMG8.size} bytes)"),
    ("truncated-header", NATIVE_SIIM[:420], "truncated file"),
    ("truncated-file-meta", NATIVE_SIIM[:200], "truncated file"),
    ("compressed-without-file-meta", fac.without_file_meta(JPEG_SIIM),
     "compressed pixel data but no Transfer Syntax UID"),
    ("corrupt-jpeg-frame", fac.jpeg_baseline(IMG8, frame=b"\xff\xd8" + bytes(64) + b"\xff\xd9"),
     "cannot decode JPEG Baseline (Process 1) pixel data"),
    ("frame-smaller-than-header", fac.jpeg_baseline(IMG8, frame=fac.jpeg_frame(IMG8[:30])),
     "JPEG frame size differs from the header (30x84 vs 60x84)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "fragment"), [row[1:] for row in REJECT_TABLE], ids=[row[0] for row in REJECT_TABLE]
)
def test_rejected_forms_raise_dicom_error_with_a_reason(data, fragment):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about some of these files itself
        with pytest.raises(dicom.DicomError) as info:
            dicom.read(data)
        with pytest.raises(dicom.DicomError):
            dicom.read_image(data)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message  # one ledger row per file
    assert fac.PATIENT_ID not in message
    assert " at 0x" not in message  # no memory addresses: the same reason reads the same
    assert isinstance(info.value, ValueError)


def test_missing_file_is_a_dicom_error(tmp_path):
    with pytest.raises(dicom.DicomError, match="cannot open file"):
        dicom.read_image(tmp_path / "absent.dcm")


def test_caller_mistakes_are_type_errors_not_ledger_rows():
    with pytest.raises(TypeError, match="source must be bytes or a path"):
        dicom.read_image(12)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be bytes"):
        dicom.read(JPEG_SIIM, key="secret")  # type: ignore[arg-type]


def test_read_meta_does_not_need_decodable_pixels():
    # Header only: a multi-frame or palette file still has a readable header.
    assert dicom.read_meta(fac.multi_frame(3)).height == 60
    assert dicom.read_meta(fac.palette_color()).photometric == "PALETTE COLOR"
    assert dicom.read_meta(JPEG_SIIM[: len(JPEG_SIIM) // 2]).width == 84
    with pytest.raises(dicom.DicomError, match="truncated file"):
        dicom.read_meta(NATIVE_SIIM[:420])
    with pytest.raises(dicom.DicomError, match="not a DICOM file"):
        dicom.read_meta(fac.png())


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # cuts inside a UID
@pytest.mark.parametrize("form", ["jpeg", "native", "no-preamble"])
def test_header_read_from_a_prefix_of_the_file_is_the_whole_header(tmp_path, monkeypatch, form):
    # read_meta reads HEADER_PREFIX bytes of a file and the rest only when the header is
    # longer: every cut (inside the preamble, the file meta, an element, between two
    # elements, past the end) must give the same header as a read of the whole file.
    data = {
        "jpeg": JPEG_SIIM,
        "native": NATIVE_SIIM,
        "no-preamble": fac.without_preamble(JPEG_SIIM),
    }[form]
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    whole = dicom.read_meta(data)
    header_end = data.index(b"\xe0\x7f\x10\x00")  # the Pixel Data tag
    for prefix in range(1, header_end + 16):
        monkeypatch.setattr(dicom, "HEADER_PREFIX", prefix)
        assert dicom.read_meta(path) == whole, prefix
    path.write_bytes(NATIVE_SIIM[:420])  # truncated inside the header
    for prefix in (100, 419, 420, 421):
        monkeypatch.setattr(dicom, "HEADER_PREFIX", prefix)
        with pytest.raises(dicom.DicomError, match="truncated file"):
            dicom.read_meta(path)


# --------------------------------------------------------------------------- metadata


def test_siim_meta_fields():
    meta = dicom.read_meta(JPEG_SIIM, key=b"secret")
    assert meta == dicom.DicomMeta(
        image_id=fac.SOP_UID,
        sop_instance_uid=fac.SOP_UID,
        patient_id=dicom.pseudonymise(fac.PATIENT_ID, b"secret"),
        sex="M",
        age=58,
        age_status="ok",
        view_position="PA",
        pixel_spacing=0.143,
        modality="CR",
        body_part="CHEST",
        height=60,
        width=84,
        photometric="MONOCHROME2",
        bits_stored=8,
        transfer_syntax=dicom.JPEG_BASELINE,
    )


def test_image_id_argument_wins_over_sop_instance_uid():
    assert dicom.read_meta(JPEG_SIIM, image_id="ID_0011fe81e").image_id == "ID_0011fe81e"
    assert dicom.read_meta(JPEG_SIIM, image_id=" ").image_id == fac.SOP_UID
    no_uid = fac.native(IMG8, SOPInstanceUID=None)
    assert dicom.read_meta(no_uid, image_id="stem").sop_instance_uid is None
    with pytest.raises(dicom.DicomError, match="no SOPInstanceUID"):
        dicom.read_meta(no_uid)


@pytest.mark.parametrize(
    ("age", "years", "status"),
    [
        ("58", 58, "ok"),  # SIIM's plain number
        ("058Y", 58, "ok"),  # DICOM AS form
        ("7", 7, "ok"),
        ("089Y", 89, "ok"),
        ("90", 90, "ok"),  # 90 and over are one group, stored as 90 (HIPAA Safe Harbor)
        ("097Y", 90, "ok"),
        ("120", 90, "ok"),
        ("006M", 0, "ok"),  # months / weeks / days count as whole years
        ("030M", 2, "ok"),
        ("010W", 0, "ok"),
        ("400D", 1, "ok"),
        ("130", None, "invalid"),  # SIIM has two of these
        ("121Y", None, "invalid"),
        ("5x", None, "invalid"),
        ("-5", None, "invalid"),
        ("58.5", None, "invalid"),
        ("", None, "missing"),
        (None, None, "missing"),
    ],
)
def test_age_table(age, years, status):
    meta = dicom.read_meta(fac.native(IMG8, PatientAge=age))
    assert (meta.age, meta.age_status) == (years, status)


@pytest.mark.parametrize(
    ("sex", "expected"), [("M", "M"), ("F", "F"), ("O", "O"), ("f", "F"), ("U", None), (None, None)]
)
def test_sex_table(sex, expected):
    assert dicom.read_meta(fac.native(IMG8, PatientSex=sex)).sex == expected


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"PixelSpacing": [0.168, 0.16]}, 0.168),
        ({"PixelSpacing": None, "ImagerPixelSpacing": [0.15, 0.15]}, 0.15),
        ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.15, 0.15]}, 0.15),
        ({"PixelSpacing": None}, None),
    ],
)
def test_pixel_spacing_table(tags, expected):
    assert dicom.read_meta(fac.native(IMG8, **tags)).pixel_spacing == expected


def test_missing_codes_are_none():
    data = fac.native(IMG8, ViewPosition=None, Modality=None, BodyPartExamined=None, PatientID=None)
    meta = dicom.read_meta(data)
    assert (meta.view_position, meta.modality, meta.body_part, meta.patient_id) == (None,) * 4


def test_pseudonymise_table():
    a = dicom.pseudonymise(fac.PATIENT_ID, b"key-1")
    assert a == dicom.pseudonymise(fac.PATIENT_ID, b"key-1")
    assert a == dicom.pseudonymise(f" {fac.PATIENT_ID} ", b"key-1")  # DICOM space padding
    assert a != dicom.pseudonymise(fac.PATIENT_ID, b"key-2")
    assert a != dicom.pseudonymise(fac.PATIENT_ID + "0", b"key-1")
    assert len(a) == 16 and int(a, 16) >= 0
    assert dicom.pseudonymise(None, b"k") is None
    assert dicom.pseudonymise("  ", b"k") is None
    with pytest.raises(TypeError, match="key must be bytes"):
        dicom.pseudonymise("x", "k")  # type: ignore[arg-type]


def test_meta_holds_no_direct_identifier():
    data = fac.jpeg_baseline(IMG8, PatientName="Doe^Jane", PatientID="MRN-0042-7731")
    meta = dicom.read_meta(data, key=b"k")
    text = repr(meta)
    for raw in ("Doe", "Jane", "MRN-0042-7731", "19600101", "St Elsewhere"):
        assert raw not in text
    assert meta.patient_id == dicom.pseudonymise("MRN-0042-7731", b"k")
    siim = repr(dicom.read_meta(JPEG_SIIM))
    assert fac.PATIENT_ID not in siim  # PatientID = PatientName = this UUID in SIIM


def test_transfer_syntax_is_inferred_for_files_without_file_meta():
    implicit = dicom.read_meta(LOSSLESS_8BIT["no-file-meta-implicit"])
    explicit = dicom.read_meta(LOSSLESS_8BIT["no-file-meta-explicit"])
    assert implicit.transfer_syntax == "1.2.840.10008.1.2"
    assert explicit.transfer_syntax == "1.2.840.10008.1.2.1"


def test_factory_files_are_what_pydicom_reads():
    # Guards the factory itself: the forms are real, standard files.
    ds = pydicom.dcmread(io.BytesIO(JPEG_SIIM))
    assert ds.file_meta.TransferSyntaxUID == dicom.JPEG_BASELINE
    assert ds.SOPClassUID == fac.SECONDARY_CAPTURE
    assert ds.PatientName == ds.PatientID == fac.PATIENT_ID


def test_damaged_patient_id_does_not_leak_into_the_reason():
    # PatientID's VR damaged to FD: pydicom's error quotes the raw value bytes.
    data = NATIVE_SIIM.replace(b"\x10\x00\x20\x00LO", b"\x10\x00\x20\x00FD", 1)
    assert data != NATIVE_SIIM
    with pytest.raises(dicom.DicomError) as info:
        dicom.read(data)
    assert "<bytes>" in str(info.value)
    assert fac.PATIENT_ID[:8] not in str(info.value)


# --------------------------------------------------------------------------- damaged files


def _damaged_files(seed: int) -> list[bytes]:
    """Seeded truncations and byte flips of a few forms (header and pixel data alike)."""
    rng = np.random.default_rng(seed)
    forms = [JPEG_SIIM, NATIVE_SIIM, LOSSLESS_8BIT["rle"], fac.big_endian(IMG12, bits_stored=12)]
    cases = []
    for data in forms:
        cases += [data[:k] for k in rng.integers(0, len(data), 12)]
        for _ in range(12):
            damaged = bytearray(data)
            for i in rng.integers(0, len(data), int(rng.integers(1, 6))):
                damaged[i] = int(rng.integers(0, 256))
            cases.append(bytes(damaged))
    return cases


@pytest.mark.parametrize("seed", range(3))
def test_damaged_files_give_an_image_or_a_dicom_error(seed):
    # Whatever the damage: a consistent image, or a DicomError; never another exception.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in _damaged_files(seed):
            try:
                meta, image = dicom.read(data, image_id="x")
            except dicom.DicomError:
                continue
            assert image.dtype == np.uint8
            assert image.shape == (meta.height, meta.width)


# --------------------------------------------------------------------------- hostile files
# Bombs: small files that declare (or inflate to) hundreds of MiB. Each is refused, with
# its reason, before a decoder or zlib allocates the pixels (peak memory: see
# test_bombs_keep_peak_memory_small, which measures it in a fresh process).

BOMB_REASON = (
    "image over the pixel budget (16384x16384x1 x 1 bytes = 256 MiB > 64 MiB; "
    "raise --pixel-budget-mb to accept it)"
)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {
        "jpeg": fac.jpeg_bomb(),
        "rle": fac.rle_bomb(),
        "deflated": fac.deflate_bomb(),
    }


@pytest.mark.parametrize("kind", ["jpeg", "rle", "deflated"])
def test_bombs_are_refused_before_decoding(bombs, kind):
    data = bombs[kind]
    assert len(data) < 300_000  # 1.2 KB, 1 KB and 260 KB
    for read in (dicom.read_meta, dicom.read_image, dicom.read):
        with pytest.raises(dicom.DicomError) as info:
            read(data)
        assert str(info.value) == BOMB_REASON


def test_jpeg_frame_that_claims_more_than_its_header_is_refused_undecoded():
    data = fac.jpeg_bomb(header=(60, 84))
    assert dicom.read_meta(data).height == 60  # the header alone is fine
    with pytest.raises(dicom.DicomError) as info:
        dicom.read_image(data)
    assert str(info.value) == "JPEG frame size differs from the header (16384x16384 vs 60x84)"


def test_frame_components_count_against_the_budget():
    frame = fac.with_sof_size(fac.jpeg_frame(IMG8), 60, 84, components=255)
    data = fac.jpeg_baseline(IMG8, frame=frame)
    with pytest.raises(dicom.DicomError, match=r"over the pixel budget \(60x84x255 x 1 bytes"):
        dicom.read_image(data, pixel_budget=60 * 84 * 3)


def test_jpeg_2000_and_jpeg_ls_frames_are_checked_too():
    for uid in (fac.LOSSLESS["j2k-lossless"], fac.LOSSLESS["jpeg-ls"]):
        ds = fac.read_back(fac.compressed(IMG8, uid))
        ds.Rows = 30  # the codestream still says 60 rows
        with pytest.raises(dicom.DicomError, match=r"frame size differs from the header \(60x84"):
            dicom.read_image(fac.to_bytes(ds))


def test_deflated_pixel_data_far_larger_than_its_image_is_refused():
    data = fac.deflate_bomb(2**28, shape=(60, 84))  # 256 MiB of pixel data, 5 KB of image
    assert dicom.read_meta(data).height == 60  # the header pass inflates the header only
    with pytest.raises(dicom.DicomError, match="deflated data set larger than its image"):
        dicom.read_image(data)


def test_pixel_budget_is_a_keyword_that_can_be_raised():
    exact = IMG8.size  # 60x84 8-bit
    np.testing.assert_array_equal(dicom.read_image(NATIVE_SIIM, pixel_budget=exact), IMG8)
    with pytest.raises(dicom.DicomError, match="image over the pixel budget"):
        dicom.read_image(NATIVE_SIIM, pixel_budget=exact - 1)
    # A larger budget lets the header through (nothing is decoded here).
    assert dicom.read_meta(fac.jpeg_bomb(), pixel_budget=2**28).height == fac.BOMB_SIDE


def test_file_larger_than_the_budget_allows_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(dicom, "NON_PIXEL_ALLOWANCE", 0)
    path = tmp_path / "x.dcm"
    path.write_bytes(NATIVE_SIIM)
    for source in (path, NATIVE_SIIM):
        with pytest.raises(dicom.DicomError, match="file over the pixel budget") as info:
            dicom.read_meta(source, pixel_budget=len(NATIVE_SIIM) - 1)
        assert "raise --pixel-budget-mb" in str(info.value)


def test_a_budget_of_the_wrong_type_is_the_callers_mistake():
    for budget in ("64", 1.5, True, None):
        with pytest.raises(TypeError, match="pixel_budget must be an int"):
            dicom.read_image(NATIVE_SIIM, pixel_budget=budget)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive") as info:
        dicom.read_meta(NATIVE_SIIM, pixel_budget=0)
    assert not isinstance(info.value, dicom.DicomError)


def test_cli_default_budget_is_the_readers():
    from pneumotune.cli_args import PIXEL_BUDGET_MB

    assert PIXEL_BUDGET_MB * 2**20 == dicom.PIXEL_BUDGET
    assert dicom.PIXEL_BUDGET >= 64 * 1024 * 1024  # SIIM's 1024x1024x1 many times over


def test_pixel_budget_option_of_convert_predict_and_score(capsys):
    from pneumotune import cli, cli_args
    from pneumotune.data.convert import ConvertConfig

    parser = cli.build_parser()
    for argv in (["convert", "src", "out"], ["predict", "model", "dicoms"], ["score", "s", "t"]):
        assert parser.parse_args(argv).pixel_budget == dicom.PIXEL_BUDGET
        assert parser.parse_args([*argv, "--pixel-budget-mb", "0.5"]).pixel_budget == 2**19
        for bad in ("0", "-1", "nan", "lots"):
            with pytest.raises(SystemExit):
                parser.parse_args([*argv, "--pixel-budget-mb", bad])
    assert "--pixel-budget-mb MIB" in capsys.readouterr().err
    args = parser.parse_args(["convert", "src", "out", "--pixel-budget-mb", "256"])
    cfg = cli_args.config_from(args, ConvertConfig, n_folds="folds")
    assert cfg.pixel_budget == 256 * 2**20


def test_score_with_dicoms_uses_the_budget(tmp_path):
    # `pneumotune score --dicoms`: masks are decoded at each header's size, so a header
    # over the budget is not used (16384x16384 would be 256 MiB per mask).
    from pneumotune.model.predict import dicom_shapes, score_submission

    (tmp_path / "ok.dcm").write_bytes(NATIVE_SIIM)
    (tmp_path / "bomb.dcm").write_bytes(fac.jpeg_bomb())
    assert dicom_shapes(tmp_path) == {"ok": (60, 84)}
    assert dicom_shapes(tmp_path, pixel_budget=2**28)["bomb"] == (16384, 16384)
    truth = tmp_path / "truth.csv"
    truth.write_text("ImageId,EncodedPixels\nok,1 10\nbomb,1 10\n")
    result = score_submission(truth, truth, dicom_dir=tmp_path, pixel_budget=IMG8.size)
    assert result.score == 1.0 and result.images == 2


_PEAK_SCRIPT = """
import resource, sys, warnings
warnings.simplefilter("ignore")
from pneumotune.data import dicom

def peak():  # bytes; Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

for path in sys.argv[1].split(","):  # warm up: every codec loaded, its buffers made
    dicom.read_image(path)
base = peak()
for path in sys.argv[2].split(","):
    try:
        dicom.read_meta(path)  # some headers are fine: the frame or the data set lies
    except dicom.DicomError:
        pass
    try:
        dicom.read_image(path)
    except dicom.DicomError:
        print(path, peak() - base, flush=True)
    else:
        sys.exit(f"{path} was decoded")
"""


def test_bombs_keep_peak_memory_small(tmp_path, bombs):
    # In a fresh process: ru_maxrss is the peak resident size since it started, so what
    # it gains while the bombs are read is the most any of them allocated at once.
    # Unchecked, each would take 256 MiB or more (the deflated one with a small header:
    # 256 MiB inflated by pydicom before any check).
    warm = {
        "jpeg": JPEG_SIIM,
        "rle": LOSSLESS_8BIT["rle"],
        "deflated": LOSSLESS_8BIT["deflated"],
        "jpeg-ls": LOSSLESS_8BIT["jpeg-ls"],
    }
    hostile = {
        **bombs,
        "jpeg-lying": fac.jpeg_bomb(header=(60, 84)),
        "deflated-small-header": fac.deflate_bomb(2**28, shape=(60, 84)),
    }
    paths = {}
    for name, data in [*warm.items(), *(("bomb-" + k, v) for k, v in hostile.items())]:
        paths[name] = tmp_path / f"{name}.dcm"
        paths[name].write_bytes(data)
    warm_paths = ",".join(str(paths[k]) for k in warm)
    bomb_paths = ",".join(str(paths["bomb-" + k]) for k in hostile)
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, warm_paths, bomb_paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    growth = {Path(path).stem: int(grown) for path, grown in lines}
    assert set(growth) == {"bomb-" + k for k in hostile}
    # The deflated file with a small header is inflated up to its 16 MiB allowance.
    assert max(growth.values()) < 48 * 2**20, growth


def test_truncated_jpeg_frame_is_refused():
    # A third of the scan, closed with EOI: libjpeg fills the rest with grey, warns on
    # stderr, and OpenCV returned the image.
    img = fac.smooth_image((256, 256), seed=4)
    data = fac.jpeg_baseline(img, frame=fac.truncated_jpeg_frame(img))
    with pytest.raises(dicom.DicomError) as info:
        dicom.read_image(data)
    assert str(info.value) == (
        "cannot decode JPEG Baseline (Process 1) pixel data: the JPEG data is truncated or "
        "corrupt (Corrupt JPEG data: premature end of data segment)"
    )
    assert dicom.read_meta(data).height == 256  # the header is fine: a decode-stage row


def test_truncated_frames_are_refused_on_the_pydicom_paths_too():
    img = fac.smooth_image((128, 128), seed=5)
    # JPEG Extended with an 8-bit frame: decoded by pydicom's plugins, which accept a cut
    # scan; libjpeg-turbo reads it first.
    for frame in (fac.jpeg_frame(img), fac.truncated_jpeg_frame(img)):
        ds = fac.read_back(fac.jpeg_baseline(img, frame=frame))
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGExtended12Bit
        data = fac.to_bytes(ds)
        if frame == fac.jpeg_frame(img):
            assert _diff(dicom.read_image(data), img).max() <= 6
        else:
            with pytest.raises(dicom.DicomError, match="truncated or corrupt"):
                dicom.read_image(data)
    # JPEG-LS cut and closed with EOI: pylibjpeg decodes it to garbage, CharLS refuses it.
    ds = fac.read_back(fac.compressed(img, fac.LOSSLESS["jpeg-ls"]))
    frame = encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encaps.encapsulate([frame[: len(frame) // 3] + b"\xff\xd9"])
    with pytest.raises(dicom.DicomError, match="cannot decode JPEG-LS"):
        dicom.read_image(fac.to_bytes(ds))


def test_siim_sized_files_written_by_synth_decode(tmp_path):
    # data.synth writes SIIM's form at SIIM's size with OpenCV: the strict decoder must
    # take its frames as OpenCV does (byte for byte).
    from pneumotune.data.synth import SynthConfig, write_dataset

    write_dataset(tmp_path / "raw", SynthConfig(n_images=2, size=1024, seed=3), workers=1)
    paths = dicom.find_dicoms(tmp_path / "raw")
    assert len(paths) == 2
    for path in paths:
        ds = pydicom.dcmread(path)
        frame = encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
        expected = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(dicom.read_image(path), expected)


def test_large_deflated_file_converts_from_a_header_prefix(tmp_path, monkeypatch):
    # Over 64 KiB deflated: the header pass reads a prefix of the file and inflates what
    # it can; a cut anywhere gives the same header as the whole file.
    noise = np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)
    data = fac.deflated(noise)
    assert len(data) > 4 * dicom.HEADER_PREFIX
    path = tmp_path / "big.dcm"
    path.write_bytes(data)
    whole = dicom.read_meta(data)
    assert (whole.height, whole.width) == (512, 512)
    assert dicom.read_meta(path) == whole
    np.testing.assert_array_equal(dicom.read_image(path), noise)
    for prefix in (1, 131, 200, 300, 400, 600, 1000, 2000, 4096, 30_000):
        monkeypatch.setattr(dicom, "HEADER_PREFIX", prefix)
        assert dicom.read_meta(path) == whole, prefix


def test_deflated_files_cut_or_corrupt_are_refused():
    data = LOSSLESS_8BIT["deflated"]
    for cut in (data[: len(data) - 10], data[: len(data) // 2]):
        with pytest.raises(dicom.DicomError, match="truncated file"):
            dicom.read_image(cut)
    start = data.index(b"1.2.840.10008.1.2.1.99") + 40
    corrupt = data[:start] + bytes(b ^ 0xFF for b in data[start : start + 40]) + data[start + 40 :]
    with pytest.raises(dicom.DicomError):
        dicom.read_image(corrupt)


def test_deflated_file_not_recognised_as_such_is_refused_not_inflated():
    # A 70 KB file meta puts the transfer syntax past where the reader looks for it:
    # pydicom would then inflate the data set itself, unbounded. It is refused instead.
    ds = fac.dataset(IMG8, transfer_syntax=pydicom.uid.DeflatedExplicitVRLittleEndian)
    ds.file_meta.FileMetaInformationVersion = bytes(70_000)
    data = fac.to_bytes(ds)
    for read in (dicom.read_meta, dicom.read_image):
        with pytest.raises(dicom.DicomError, match="deflated data set whose file meta"):
            read(data)


# --------------------------------------------------------------------------- header text


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, writing the file
def test_header_values_keep_printable_characters_only():
    data = fac.native(
        IMG8,
        ViewPosition="P\x1b[2JA",
        Modality="C\x07R",
        BodyPartExamined="CHEST\x00\x7f",
        SOPInstanceUID="1.2.3\x1b]0;owned\x07",
    )
    meta = dicom.read_meta(data)
    assert meta.view_position == "P[2JA"
    assert meta.modality == "CR"
    assert meta.body_part == "CHEST"
    assert meta.image_id == "1.2.3]0;owned"
    for value in dataclasses.astuple(meta):
        assert not isinstance(value, str) or value.isprintable()


def test_mathtext_in_a_header_value_is_kept_as_text():
    meta = dicom.read_meta(fac.native(IMG8, ViewPosition="$\\undefinedcmd$"))
    assert meta.view_position == "$\\undefinedcmd$"  # plotted as text by data.eda_plots


def test_reasons_hold_no_control_characters():
    data = fac.native(IMG8, photometric="MONO\x1b[31mCHROME9\r\n")
    with pytest.raises(dicom.DicomError) as info:
        dicom.read_image(data)
    assert "unsupported photometric interpretation MONO[31MCHROME9" in str(info.value)
    assert str(info.value).isprintable()
    assert str(dicom.DicomError("a\x1b[2J\nb\u202ec")) == "a[2J bc"
