"""A synthetic dataset in the SIIM-ACR layout: real JPEG Baseline DICOM files and an RLE CSV.

Real SIIM data cannot be downloaded here, so tests and the demo run on this. The files
follow the SIIM-ACR dataset's layout to the letter, so the same code reads the real
dataset unchanged::

    OUT/dicom-images-<split>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    OUT/train-rle.csv          stage 1: "ImageId, EncodedPixels", values with a leading space
    OUT/stage_2_train.csv      stage 2: "ImageId,EncodedPixels", no spaces
    OUT/test-rle.csv           a "test" split's labels (kept only to score predictions)

Each file is one study, one series, one instance: a Secondary Capture (Modality CR) with
a single JPEG Baseline (8-bit, lossy) frame, MONOCHROME2 (air dark, bone bright). Its
SOPInstanceUID is both the file name and the CSV ``ImageId``. The header carries what
real SIIM files carry: PatientID = PatientName = a random UUID, the age as a bare number
(a few above 100), ViewPosition PA/AP, one PixelSpacing for rows and columns.

One CSV row per region (relative, column-major RLE from :func:`data.rle.encode`), so a
positive image with several regions has several rows; ``-1`` for a negative image, and
no row at all for an unlabelled one.

This module is the writer and the public entry point (:class:`SynthConfig`,
:func:`write_dataset`, :class:`SynthSummary`): it plans patients, labels and headers
(:func:`plan_images`), builds and saves the DICOM datasets (:func:`write_dicom`), lays
out the folders and writes the label CSV in the chosen dialect. The pixels come from
:func:`data.synth_render.render_case` (re-exported here), which draws on the chest
anatomy of ``data.synth_anatomy``.

Everything is deterministic for a seed: image ``i`` draws only from its own child of
``SeedSequence(seed)``, so the output is byte-identical whatever the number of workers.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom import config as dicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
)
from tqdm import tqdm

from pneumotune.data import rle
from pneumotune.data.synth_anatomy import Anatomy, draw_anatomy
from pneumotune.data.synth_render import render_case

DIALECT_FILES = {"stage1": "train-rle.csv", "stage2": "stage_2_train.csv"}
TEST_LABEL_FILE = "test-rle.csv"
SPLITS = ("train", "test")
JPEG_QUALITY = 95

# Typical SIIM PixelSpacing values (mm, row = column); the real files were downsampled to
# 1024 without updating the tag, so we keep these values whatever the image size.
PIXEL_SPACINGS = ("0.139", "0.143", "0.148", "0.16", "0.168")
STUDY_DESCRIPTIONS = ("CHEST 1 VIEW", "XR CHEST PA OR AP", "CHEST PORTABLE", "CHEST PA")
# Patients have 1-4 radiographs (follow-ups), as in SIIM, so splits must group them.
IMAGES_PER_PATIENT_P = (0.55, 0.25, 0.12, 0.08)
INVALID_AGE_RATE = 0.002  # real SIIM has a couple of ages > 100 per ten thousand rows


# =========================================================================== config
def _is_int(value: object) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``n_images`` counts every DICOM, the ``unlabelled`` ones included."""

    n_images: int
    size: int = 1024
    seed: int = 0
    positive_fraction: float = 0.22  # share of *labelled* images that are positive
    unlabelled: int = 0  # of n_images, how many get no CSV row at all
    dialect: str = "stage1"  # "stage1" -> train-rle.csv ; "stage2" -> stage_2_train.csv
    split: str = "train"  # folder dicom-images-<split>; "test" writes test-rle.csv

    def __post_init__(self) -> None:
        if not _is_int(self.n_images) or self.n_images < 1:
            raise ValueError(f"n_images must be an integer >= 1, got {self.n_images!r}")
        if not _is_int(self.size) or not 32 <= self.size <= 4096:
            raise ValueError(f"size must be an integer in [32, 4096] pixels, got {self.size!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.positive_fraction, int | float) or not (
            0.0 <= self.positive_fraction <= 1.0
        ):
            raise ValueError(f"positive_fraction must be in [0, 1], got {self.positive_fraction!r}")
        if not _is_int(self.unlabelled) or not 0 <= self.unlabelled <= self.n_images:
            raise ValueError(
                f"unlabelled must be an integer in [0, n_images={self.n_images}], "
                f"got {self.unlabelled!r}"
            )
        if self.dialect not in DIALECT_FILES:
            raise ValueError(
                f"unknown dialect {self.dialect!r}; expected one of {tuple(DIALECT_FILES)}"
            )
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; expected one of {SPLITS}")

    @property
    def labelled(self) -> int:
        return self.n_images - self.unlabelled

    @property
    def csv_name(self) -> str:
        """The label file name: by dialect for train, ``test-rle.csv`` for a test split."""
        return TEST_LABEL_FILE if self.split == "test" else DIALECT_FILES[self.dialect]


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_dataset` wrote (counts are of DICOM files, CSV rows for regions)."""

    out: Path
    images: int
    labelled: int
    unlabelled: int
    positive: int  # labelled positive images
    regions: int  # non-empty CSV rows (a positive image has one or more)
    patients: int
    csv_path: Path
    seconds: float
    size: int = 1024
    bytes: int = 0  # total size of the DICOM files

    def describe(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"wrote {self.images} DICOMs ({self.size}x{self.size}, "
            f"{self.bytes / max(self.images, 1) / 1024:.0f} KB each) of {self.patients} "
            f"patients to {self.out} in {self.seconds:.1f} s ({rate:.1f} images/s)\n"
            f"  labelled {self.labelled}: {self.positive} positive with {self.regions} "
            f"regions, {self.labelled - self.positive} negative; "
            f"unlabelled (no CSV row) {self.unlabelled}\n"
            f"  labels: {self.csv_path}"
        )


# =========================================================================== DICOM
@dataclass(frozen=True)
class DicomTags:
    """The header of one synthetic radiograph (the tags real SIIM files carry)."""

    patient_id: str  # a random UUID; PatientName is the same string, as in SIIM
    sex: str  # "M" / "F"
    age: str  # plain number as in SIIM ("58"), not the standard "058Y"; a few are > 100
    view: str  # ViewPosition "PA" / "AP"
    pixel_spacing: str  # mm, a DS string used for both rows and columns
    study_uid: str
    series_uid: str
    sop_uid: str  # also the file stem and the CSV ImageId
    study_description: str = "CHEST 1 VIEW"


def write_dicom(path: Path, image: np.ndarray, tags: DicomTags) -> int:
    """Write ``image`` (``uint8 (H, W)``) as a JPEG Baseline Secondary Capture DICOM file.

    Part 10 file: 128-byte preamble, ``DICM``, file meta, explicit VR little endian
    dataset, one encapsulated JPEG frame (OpenCV, quality 95). Returns the file size.
    """
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"image must be uint8 (H, W); got {image.dtype} {image.shape}")
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode the image for {path}")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = tags.sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = tags.sop_uid
    ds.StudyDate = "19010101"  # SIIM's de-identified date
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = tags.study_description
    ds.SeriesDescription = f"view: {tags.view}"
    ds.PatientName = tags.patient_id
    ds.PatientID = tags.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = tags.sex
    # SIIM writes the age as a bare number, which is not a valid AS value ("058Y"):
    # skip pydicom's validation so the file carries exactly what real files carry.
    ds.add(DataElement(0x00101010, "AS", tags.age, validation_mode=dicom_config.IGNORE))
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = tags.view
    ds.StudyInstanceUID = tags.study_uid
    ds.SeriesInstanceUID = tags.series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.PixelSpacing = [tags.pixel_spacing, tags.pixel_spacing]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


# =========================================================================== dataset
@dataclass(frozen=True)
class ImagePlan:
    """One file to write: its seed, label, patient body and header (small, picklable).

    ``render_case(np.random.default_rng(seed), size, positive, anatomy, tags.view)``
    gives exactly the pixels (before JPEG) and region masks written for it.
    """

    index: int
    seed: np.random.SeedSequence
    size: int
    positive: bool
    anatomy: Anatomy
    tags: DicomTags
    path: Path


def _uid(rng: np.random.Generator) -> str:
    """A DICOM UID under the UUID root 2.25 (PS3.5 B.2), deterministic for ``rng``."""
    return f"2.25.{uuid.UUID(bytes=rng.bytes(16), version=4).int}"


def plan_images(
    cfg: SynthConfig, image_dir: Path
) -> tuple[list[ImagePlan], np.ndarray, np.ndarray, int]:
    """Patients, labels, headers and CSV order: ``(jobs, labelled, row_order, n_patients)``.

    Everything cross-image (who shares a patient, which images are positive or have no
    CSV row) comes from one planning stream; each image's pixels from its own child seed.
    """
    plan_seed, image_seeds = np.random.SeedSequence(cfg.seed).spawn(2)
    rng = np.random.default_rng(plan_seed)
    seeds = image_seeds.spawn(cfg.n_images)

    # Patients with 1-4 images each, in image order.
    patient_of: list[int] = []
    while len(patient_of) < cfg.n_images:
        k = int(rng.choice(len(IMAGES_PER_PATIENT_P), p=IMAGES_PER_PATIENT_P)) + 1
        patient_of.extend([len(set(patient_of))] * k)
    patient_of = patient_of[: cfg.n_images]
    n_patients = patient_of[-1] + 1
    patients = []
    for _ in range(n_patients):
        sex = "M" if rng.random() < 0.55 else "F"
        if rng.random() < INVALID_AGE_RATE:
            age = str(int(rng.integers(110, 160)))
        else:
            age = str(int(np.clip(rng.normal(47, 17), 10, 93)))
        pid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        patients.append((pid, sex, age, draw_anatomy(rng, sex)))

    # Exactly `unlabelled` images get no row; exactly round(fraction * labelled) of the
    # rest are positive. Unlabelled images are positive at the same rate, unknown to all.
    labelled = np.ones(cfg.n_images, bool)
    labelled[rng.permutation(cfg.n_images)[: cfg.unlabelled]] = False
    positive = rng.random(cfg.n_images) < cfg.positive_fraction
    lab_idx = np.flatnonzero(labelled)
    n_pos = round(cfg.positive_fraction * len(lab_idx))
    positive[lab_idx] = False
    positive[rng.permutation(lab_idx)[:n_pos]] = True

    jobs = []
    for i in range(cfg.n_images):
        pid, sex, age, anatomy = patients[patient_of[i]]
        tags = DicomTags(
            patient_id=pid,
            sex=sex,
            age=age,
            view="AP" if rng.random() < 0.4 else "PA",
            pixel_spacing=str(rng.choice(PIXEL_SPACINGS)),
            study_uid=_uid(rng),
            series_uid=_uid(rng),
            sop_uid=_uid(rng),
            study_description=str(rng.choice(STUDY_DESCRIPTIONS)),
        )
        path = image_dir / tags.study_uid / tags.series_uid / f"{tags.sop_uid}.dcm"
        jobs.append(ImagePlan(i, seeds[i], cfg.size, bool(positive[i]), anatomy, tags, path))
    # CSV rows in a shuffled order, as the real file (a positive image's rows together).
    order = rng.permutation(np.flatnonzero(labelled))
    return jobs, labelled, order, n_patients


def _make_image(job: ImagePlan) -> tuple[int, list[str], int]:
    """Render and write one file: ``(index, region RLE strings, file bytes)``."""
    rng = np.random.default_rng(job.seed)
    image, masks = render_case(rng, job.size, job.positive, job.anatomy, job.tags.view)
    nbytes = write_dicom(job.path, image, job.tags)
    return job.index, [rle.encode(m, "relative") for m in masks], nbytes


def _init_worker() -> None:
    """Set up a pool worker (a process of ours, so process-wide settings are fine)."""
    # One process per core already: OpenCV's own threads would only oversubscribe.
    cv2.setNumThreads(1)
    # Each image allocates a few dozen 4 MB temporaries; by default glibc hands every
    # such block back to the kernel and page-faults it in again, ~20% of the run time in
    # system calls. Keeping freed memory in the heap removes that.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: the same output, a little slower


def write_dataset(
    out: Path, cfg: SynthConfig, workers: int | None = None, progress: bool = False
) -> SynthSummary:
    """Write ``cfg.n_images`` DICOMs and the label CSV under ``out`` (see the module doc).

    ``workers`` processes render in parallel (default: all cores; 1 = in this process);
    the output is byte-identical whatever their number. Refuses to write into an existing
    ``dicom-images-<split>`` holding DICOMs or over an existing label file, so datasets are
    never mixed. A train and a test split can share one ``out``.
    """
    started = time.perf_counter()
    out = Path(out)
    image_dir = out / f"dicom-images-{cfg.split}"
    csv_path = out / cfg.csv_name
    if csv_path.exists():
        raise FileExistsError(f"{csv_path} already exists; choose an empty output folder")
    if image_dir.exists() and next(image_dir.rglob("*.dcm"), None) is not None:
        raise FileExistsError(f"{image_dir} already holds DICOM files; choose an empty folder")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (or None for all cores), got {workers}")
    workers = min(workers, cfg.n_images)

    jobs, labelled, order, n_patients = plan_images(cfg, image_dir)
    regions: list[list[str]] = [[] for _ in jobs]
    total_bytes = 0
    with tqdm(total=len(jobs), unit="img", desc="synth", disable=not progress) as bar:
        if workers == 1:
            results = map(_make_image, jobs)
            for index, rles, nbytes in results:
                regions[index], total_bytes = rles, total_bytes + nbytes
                bar.update()
        else:
            # spawn: safe under threads (Ray, TF) and the same on every OS.
            ctx = mp.get_context("spawn")
            chunk = max(1, min(8, len(jobs) // (workers * 4)))
            with ctx.Pool(workers, initializer=_init_worker) as pool:
                for index, rles, nbytes in pool.imap_unordered(_make_image, jobs, chunk):
                    regions[index], total_bytes = rles, total_bytes + nbytes
                    bar.update()

    sep = ", " if cfg.dialect == "stage1" else ","
    lines = [f"ImageId{sep}EncodedPixels"]
    for i in order:
        image_id = jobs[i].tags.sop_uid
        lines.extend(f"{image_id}{sep}{r}" for r in (regions[i] or [rle.EMPTY]))
    out.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(csv_path)

    return SynthSummary(
        out=out,
        images=cfg.n_images,
        labelled=int(labelled.sum()),
        unlabelled=cfg.unlabelled,
        positive=sum(1 for i in np.flatnonzero(labelled) if regions[i]),
        regions=sum(len(regions[i]) for i in np.flatnonzero(labelled)),
        patients=n_patients,
        csv_path=csv_path,
        seconds=time.perf_counter() - started,
        size=cfg.size,
        bytes=total_bytes,
    )
