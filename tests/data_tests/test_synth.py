"""The synthetic SIIM-layout generator: real files on disk, read back as the real data is.

Small images (64-160 px) and tens of files keep this fast; everything is checked with
the readers the real data needs (pydicom + pylibjpeg, the csv module, data.rle, data.labels).
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from pneumotune.cli import main as cli_main
from pneumotune.data import rle
from pneumotune.data.labels import read_labels
from pneumotune.data.synth import (
    ImagePlan,
    SynthConfig,
    SynthSummary,
    plan_images,
    render_case,
    write_dataset,
)

SIZE = 128
# Fixed seeds: the counts these tests rely on (multi-region and overlapping positives,
# several images per patient) hold for them, and the output is deterministic.
TRAIN_CFG = SynthConfig(n_images=48, size=SIZE, seed=7, positive_fraction=0.5, unlabelled=5)


@pytest.fixture(scope="module")
def train(tmp_path_factory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "siim"
    return out, write_dataset(out, TRAIN_CFG, workers=1)


@pytest.fixture(scope="module")
def plans(train) -> list[ImagePlan]:
    out, _ = train
    return plan_images(TRAIN_CFG, out / "dicom-images-train")[0]


def _dicoms(out: Path, split: str = "train") -> list[Path]:
    return sorted((out / f"dicom-images-{split}").rglob("*.dcm"))


def _csv_rows(path: Path) -> dict[str, list[str]]:
    """ImageId -> RLE strings, via data.labels (the reader the converter uses)."""
    table = read_labels(path)
    return {image_id: [r.rle for r in rows] for image_id, rows in table.rows.items()}


# --------------------------------------------------------------------------- layout
def test_layout_and_file_naming(train):
    out, summary = train
    files = _dicoms(out)
    assert len(files) == TRAIN_CFG.n_images == summary.images
    sops = set()
    for path in files:
        rel = path.relative_to(out / "dicom-images-train")
        assert len(rel.parts) == 3, rel  # <study>/<series>/<sop>.dcm
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert path.stem == ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert rel.parts[0] == ds.StudyInstanceUID
        assert rel.parts[1] == ds.SeriesInstanceUID
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert UID(uid).is_valid, uid
        sops.add(path.stem)
    assert len(sops) == len(files)
    assert summary.csv_path == out / "train-rle.csv"
    assert sorted(p.name for p in out.iterdir()) == ["dicom-images-train", "train-rle.csv"]


def test_dicom_header_and_pixels(train, plans):
    out, _ = train
    by_sop = {p.tags.sop_uid: p for p in plans}
    for path in _dicoms(out)[:6]:
        with path.open("rb") as fh:
            assert fh.read(132)[128:] == b"DICM"  # Part 10 preamble + prefix
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG Baseline
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
        assert ds.Modality == "CR"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            8,
            8,
            7,
            0,
        )
        assert ds.SamplesPerPixel == 1
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE)
        assert ds.get("NumberOfFrames", 1) == 1
        assert ds.BodyPartExamined == "CHEST"
        assert ds.ViewPosition in ("PA", "AP")
        assert ds.PatientSex in ("M", "F")
        assert re.fullmatch(r"\d{1,3}", ds.PatientAge), ds.PatientAge  # "58", not "058Y"
        assert str(uuid.UUID(ds.PatientID)) == ds.PatientID
        assert str(ds.PatientName) == ds.PatientID  # an identifier, as in SIIM
        assert ds.StudyDescription
        spacing = [float(v) for v in ds.PixelSpacing]
        assert len(spacing) == 2 and all(0.139 <= v <= 0.168 for v in spacing)

        # pydicom decodes it (pylibjpeg), and so does the fast OpenCV path on the raw frame.
        pixels = ds.pixel_array
        assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.uint8
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        fast = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.abs(fast.astype(int) - pixels.astype(int)).max() <= 1

        # The file holds the rendered image, up to JPEG quality-95 loss.
        plan = by_sop[path.stem]
        rng = np.random.default_rng(plan.seed)
        image, _ = render_case(rng, SIZE, plan.positive, plan.anatomy, plan.tags.view)
        assert np.abs(pixels.astype(float) - image).mean() < 2.0


# --------------------------------------------------------------------------- CSV
def test_stage1_csv_has_the_leading_spaces(train):
    out, _ = train
    lines = (out / "train-rle.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    for line in lines[1:]:
        assert re.fullmatch(r"2\.25\.\d+, (-1|\d+( \d+)*)", line), line


def test_stage2_csv_has_no_spaces(tmp_path):
    cfg = SynthConfig(n_images=8, size=64, seed=1, positive_fraction=0.5, dialect="stage2")
    summary = write_dataset(tmp_path, cfg, workers=1)
    assert summary.csv_path == tmp_path / "stage_2_train.csv"
    lines = summary.csv_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "ImageId,EncodedPixels"
    assert len(lines) > 1
    for line in lines[1:]:
        assert re.fullmatch(r"2\.25\.\d+,(-1|\d+( \d+)*)", line), line
    assert not (tmp_path / "train-rle.csv").exists()


def test_counts_and_unlabelled_images(train):
    out, summary = train
    rows = _csv_rows(out / "train-rle.csv")
    stems = {p.stem for p in _dicoms(out)}
    labelled = TRAIN_CFG.n_images - TRAIN_CFG.unlabelled
    # Exactly `unlabelled` files have no row at all; every row names a file.
    assert set(rows) <= stems
    assert len(stems - set(rows)) == TRAIN_CFG.unlabelled == summary.unlabelled
    assert len(rows) == labelled == summary.labelled
    positives = [i for i, r in rows.items() if not rle.is_empty(r[0])]
    assert len(positives) == round(TRAIN_CFG.positive_fraction * labelled) == summary.positive
    # A negative has exactly one "-1" row; a positive has only region rows.
    for image_id, rles in rows.items():
        if image_id in positives:
            assert all(not rle.is_empty(r) for r in rles)
        else:
            assert rles == ["-1"]  # data.labels strips the leading space
    assert summary.regions == sum(len(rows[i]) for i in positives)
    # Several positives have more than one region, and some of those overlap.
    multi = [i for i in positives if len(rows[i]) > 1]
    assert multi
    overlapping = 0
    for image_id in multi:
        masks = [rle.decode(r, (SIZE, SIZE)) for r in rows[image_id]]
        overlapping += int(np.sum(masks, axis=0).max() > 1)
    assert overlapping >= 1
    assert "48 DICOMs" in summary.describe() and "unlabelled" in summary.describe()


def test_rows_of_an_image_are_together_and_order_is_shuffled(train):
    out, _ = train
    ids = [line.split(",")[0] for line in (out / "train-rle.csv").read_text().splitlines()[1:]]
    runs = [k for i, k in enumerate(ids) if i == 0 or ids[i - 1] != k]
    assert len(runs) == len(set(ids))  # each image's rows are contiguous
    assert runs != sorted(runs)


# --------------------------------------------------------------------------- masks
def test_csv_masks_are_the_rendered_regions(train, plans):
    """Decoding the CSV (column-major) gives back exactly the regions that were drawn."""
    out, _ = train
    rows = _csv_rows(out / "train-rle.csv")
    checked = 0
    for plan in plans:
        if plan.tags.sop_uid not in rows or not plan.positive:
            continue
        rng = np.random.default_rng(plan.seed)
        _, masks = render_case(rng, SIZE, True, plan.anatomy, plan.tags.view)
        decoded = rle.merge(rows[plan.tags.sop_uid], (SIZE, SIZE), "relative")
        np.testing.assert_array_equal(decoded, np.logical_or.reduce(masks).astype(np.uint8))
        for text, mask in zip(rows[plan.tags.sop_uid], masks, strict=True):
            np.testing.assert_array_equal(rle.decode(text, (SIZE, SIZE)), mask)
        # The transpose trap: these regions are far from symmetric about the diagonal.
        assert not np.array_equal(decoded, decoded.T)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("seed", range(6))
def test_mask_is_where_the_region_is_drawn(seed):
    """The same film rendered with and without the lesion differs only at the mask."""
    size = 160
    with_ptx, masks = render_case(np.random.default_rng(seed), size, True)
    without, none = render_case(np.random.default_rng(seed), size, False)
    assert none == [] and masks
    mask = np.logical_or.reduce(masks)
    diff = with_ptx.astype(int) - without.astype(int)
    changed = np.abs(diff) >= 3
    # Every visible change lies on the mask or its thin rim (the pleural line and the
    # denser collapsed-lung edge sit just inside the mask boundary).
    rim = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert not (changed & ~rim).any()
    # Inside, the region is darker (markings gone, more air) ...
    assert diff[mask].mean() < -1.0


def _detail(img: np.ndarray) -> np.ndarray:
    """High-pass magnitude: what lung markings and parenchyma contribute."""
    img = img.astype(np.float32)
    return np.abs(img - cv2.GaussianBlur(img, (0, 0), 1.5))


def test_lung_texture_is_missing_inside_the_region():
    size, compared = 256, 0
    for seed in range(8):
        with_ptx, masks = render_case(np.random.default_rng(seed), size, True)
        without, _ = render_case(np.random.default_rng(seed), size, False)
        mask = np.logical_or.reduce(masks).astype(np.uint8)
        # Well inside the region, away from the pleural line and the chest wall.
        inner = cv2.erode(mask, np.ones((13, 13), np.uint8)) > 0
        if inner.sum() < 30:
            continue
        assert _detail(with_ptx)[inner].mean() < 0.9 * _detail(without)[inner].mean()
        compared += 1
    assert compared >= 2


def test_render_case_contract():
    for positive in (False, True):
        image, masks = render_case(np.random.default_rng(3), 96, positive)
        assert image.shape == (96, 96) and image.dtype == np.uint8
        assert 20 < image.mean() < 235 and image.std() > 15
        assert bool(masks) == positive
        for m in masks:
            assert m.shape == (96, 96) and m.dtype == np.uint8
            assert set(np.unique(m).tolist()) == {0, 1}
    a = render_case(np.random.default_rng(11), 96, True)
    b = render_case(np.random.default_rng(11), 96, True)
    np.testing.assert_array_equal(a[0], b[0])
    assert all(np.array_equal(x, y) for x, y in zip(a[1], b[1], strict=True))


def test_region_sizes_span_tiny_to_large_and_some_overlap():
    areas, n_regions, overlaps = [], [], 0
    for seed in range(120):
        _, masks = render_case(np.random.default_rng(1000 + seed), 128, True)
        areas.append(np.logical_or.reduce(masks).mean())
        n_regions.append(len(masks))
        overlaps += int(len(masks) > 1 and np.sum(masks, axis=0).max() > 1)
    areas = np.array(areas)
    assert areas.min() < 0.003 and areas.max() > 0.04 and areas.max() < 0.15
    multi = np.mean(np.array(n_regions) > 1)
    assert 0.05 <= multi <= 0.3
    assert overlaps >= 2


# --------------------------------------------------------------------------- patients
def test_several_images_per_patient_with_consistent_demographics(train):
    out, summary = train
    by_patient: dict[str, set[tuple[str, str]]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for path in _dicoms(out):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_patient[ds.PatientID].add((ds.PatientSex, ds.PatientAge))
        counts[ds.PatientID] += 1
    assert len(by_patient) == summary.patients < TRAIN_CFG.n_images
    assert max(counts.values()) >= 3 and min(counts.values()) == 1
    assert all(len(v) == 1 for v in by_patient.values())  # same sex and age on every film


def test_a_few_ages_are_invalid_as_in_siim(tmp_path):
    jobs, *_ = plan_images(SynthConfig(n_images=6000, size=64, seed=2), tmp_path)
    ages = {j.tags.patient_id: int(j.tags.age) for j in jobs}
    invalid = sum(a > 100 for a in ages.values())
    assert 1 <= invalid <= 0.01 * len(ages)
    assert 30 < np.median(list(ages.values())) < 65


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    cfg = SynthConfig(n_images=10, size=64, seed=5, positive_fraction=0.5, unlabelled=1)
    a = write_dataset(tmp_path / "a", cfg, workers=1)
    b = write_dataset(tmp_path / "b", cfg, workers=2)
    assert a.csv_path.read_bytes() == b.csv_path.read_bytes()
    files_a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in _dicoms(tmp_path / "a")}
    files_b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in _dicoms(tmp_path / "b")}
    assert files_a == files_b
    c = write_dataset(tmp_path / "c", SynthConfig(**{**cfg.__dict__, "seed": 6}), workers=1)
    assert c.csv_path.read_bytes() != a.csv_path.read_bytes()


# --------------------------------------------------------------------------- splits, CLI
def test_test_split_shares_the_folder_and_writes_test_rle(train, tmp_path):
    cfg = SynthConfig(n_images=5, size=64, seed=9, split="test")
    summary = write_dataset(tmp_path, cfg, workers=1)
    assert summary.csv_path == tmp_path / "test-rle.csv"
    assert len(_dicoms(tmp_path, "test")) == 5
    assert summary.csv_path.read_text().startswith("ImageId, EncodedPixels\n")
    # A train split can join it in the same folder; the same split twice cannot.
    write_dataset(tmp_path, SynthConfig(n_images=3, size=64, seed=9), workers=1)
    assert {p.name for p in tmp_path.iterdir()} == {
        "dicom-images-test",
        "dicom-images-train",
        "test-rle.csv",
        "train-rle.csv",
    }
    with pytest.raises(FileExistsError, match="already"):
        write_dataset(tmp_path, cfg, workers=1)


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["synth", str(out), "--images", "4", "--size", "64", "--workers", "1"]
    assert cli_main([*argv, "--unlabelled", "1", "--dialect", "stage2"]) == 0
    assert "4 DICOMs" in capsys.readouterr().out
    assert len(_dicoms(out)) == 4 and (out / "stage_2_train.csv").is_file()
    assert cli_main(argv) == 2  # refuses to mix datasets, as a usage error
    assert "already" in capsys.readouterr().err


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_images": 0}, "n_images must be an integer >= 1, got 0"),
        ({"n_images": True}, "n_images must be an integer >= 1, got True"),
        ({"n_images": 2.0}, "n_images must be an integer >= 1, got 2.0"),
        ({"n_images": 4, "size": 16}, r"size must be an integer in \[32, 4096\].*got 16"),
        ({"n_images": 4, "seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"n_images": 4, "positive_fraction": 1.5}, r"positive_fraction must be in \[0, 1\]"),
        ({"n_images": 4, "positive_fraction": float("nan")}, "positive_fraction must be in"),
        ({"n_images": 4, "unlabelled": 5}, r"unlabelled must be .*\[0, n_images=4\], got 5"),
        ({"n_images": 4, "unlabelled": -1}, "unlabelled must be"),
        ({"n_images": 4, "dialect": "stage3"}, "unknown dialect 'stage3'; expected one of"),
        ({"n_images": 4, "split": "val"}, "unknown split 'val'; expected one of"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs)


def test_config_accepts_numpy_integers():
    cfg = SynthConfig(n_images=np.int64(4), size=np.int32(64), seed=np.uint8(1))
    assert cfg.labelled == 4 and cfg.csv_name == "train-rle.csv"


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        write_dataset(tmp_path, SynthConfig(n_images=2, size=64), workers=0)
