"""A synthetic dataset in the SIIM-ACR layout: real JPEG Baseline DICOM files and an RLE CSV.

Real SIIM data cannot be downloaded here, so tests and the demo run on this. The files
follow DOMAIN.md to the letter, so the same code reads the real dataset unchanged::

    OUT/dicom-images-<split>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    OUT/train-rle.csv          stage 1: "ImageId, EncodedPixels", values with a leading space
    OUT/stage_2_train.csv      stage 2: "ImageId,EncodedPixels", no spaces
    OUT/test-rle.csv           a "test" split's labels (kept only to score predictions)

One CSV row per region (relative, column-major RLE from :func:`data.rle.encode`), ``-1``
for a negative image, and no row at all for an unlabelled one.

The images are chest-like (body, mediastinum, two darker lung fields with vessel-like
markings, ribs, clavicles, noise, per-image contrast and gamma, position and scale). A
pneumothorax is a region at a lung's apical/lateral edge where the lung markings are
missing (a darker, smooth area), bounded by a thin bright visceral pleural line. Every
image, positive or not, can carry look-alikes (skin folds, scapular borders, wires,
bullae, side markers) so that a line or a smooth patch alone does not mean "positive".

Everything is deterministic for a seed: image ``i`` draws only from its own child of
``SeedSequence(seed)``, so the output is byte-identical whatever the number of workers.
"""

from __future__ import annotations

import ctypes
import math
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


# =========================================================================== anatomy
@dataclass(frozen=True)
class Anatomy:
    """One patient's body, shared by all their radiographs (lengths are fractions of the frame)."""

    sex: str  # "M" or "F"
    body_half_width: float  # chest wall, from the midline
    lung_width: float  # scale of the lung fields across
    lung_height: float  # scale of the lung fields down
    heart_width: float  # half-width of the cardiac silhouette
    rib_spacing: float  # vertical pitch of the posterior ribs
    rib_arch: float  # how much the posterior ribs bend down laterally
    soft_tissue: float  # soft-tissue brightness (habitus)
    breast: float  # breast shadow strength (0 for men)
    shape_seed: int  # jitter of the lung outlines


def draw_anatomy(rng: np.random.Generator, sex: str) -> Anatomy:
    """A random patient body of ``sex`` ("M"/"F")."""
    female = sex == "F"
    return Anatomy(
        sex=sex,
        body_half_width=float(rng.uniform(0.44, 0.48)),
        lung_width=float(rng.uniform(0.93, 1.06) * (0.97 if female else 1.0)),
        lung_height=float(rng.uniform(1.02, 1.14)),
        heart_width=float(rng.uniform(0.10, 0.14)),
        rib_spacing=float(rng.uniform(0.058, 0.068)),
        rib_arch=float(rng.uniform(0.7, 1.1)),
        soft_tissue=float(rng.uniform(0.44, 0.54)),
        breast=float(rng.uniform(0.04, 0.09)) if female else 0.0,
        shape_seed=int(rng.integers(2**31)),
    )


# Lung outline control points in the body frame (u across, v down, both 0..1), clockwise
# from the apex. Image left = the patient's right lung; image right = the patient's left
# lung, whose lower medial border is the heart's left border (``h`` = heart half-width).
_LUNG_OUTLINE = np.array(
    [
        (0.330, 0.100),  # apex
        (0.262, 0.118),
        (0.195, 0.175),
        (0.145, 0.265),
        (0.113, 0.375),
        (0.095, 0.495),
        (0.088, 0.615),
        (0.086, 0.745),  # costophrenic angle
        (0.125, 0.728),
        (0.200, 0.685),
        (0.280, 0.655),  # dome of the hemidiaphragm
        (0.360, 0.660),
        (0.420, 0.685),  # cardiophrenic angle
        (0.440, 0.610),  # right heart border
        (0.452, 0.500),
        (0.447, 0.380),
        (0.432, 0.240),
        (0.405, 0.145),
        (0.372, 0.108),
    ]
)


_LUNG_CENTRE = np.array((0.27, 0.43))  # angles of pneumothorax arcs are measured from here
_HILUM = np.array((0.40, 0.45))


def _left_lung_outline(h: float) -> np.ndarray:
    """The image-right lung, with the cardiac silhouette of half-width ``h`` in its border."""
    mirror = _LUNG_OUTLINE[:10].copy()
    mirror[:, 0] = 1.0 - mirror[:, 0]
    mirror[7:, 1] += 0.02  # the left hemidiaphragm sits lower
    heart = np.array(
        [
            (0.700, 0.690),  # dome
            (0.5 + h + 0.04, 0.705),  # cardiac apex
            (0.5 + h + 0.03, 0.640),
            (0.5 + h + 0.01, 0.565),  # left ventricle, the widest point
            (0.5 + h - 0.04, 0.480),
            (0.578, 0.425),  # left atrial appendage / hilum
            (0.562, 0.340),
            (0.567, 0.240),
            (0.595, 0.145),
            (0.628, 0.108),
        ]
    )
    return np.concatenate([mirror, heart])


def _catmull_rom(points: np.ndarray, per_segment: int = 12) -> np.ndarray:
    """Closed Catmull-Rom spline through ``points`` ``(n, 2)`` -> ``(n * per_segment, 2)``."""
    p1 = np.asarray(points, np.float64)
    p0, p2, p3 = np.roll(p1, 1, 0), np.roll(p1, -1, 0), np.roll(p1, -2, 0)
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None, None]
    out = 0.5 * (
        2 * p1
        + (p2 - p0) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )
    return out.transpose(1, 0, 2).reshape(-1, 2)


def _lung_outlines(anatomy: Anatomy, inspiration: float) -> list[np.ndarray]:
    """Both lung outlines in the body frame: ``[image-left, image-right]``, each ``(n, 2)``."""
    jitter_rng = np.random.default_rng(anatomy.shape_seed)
    outlines = []
    for side, pts in ((-1, _LUNG_OUTLINE.copy()), (1, _left_lung_outline(anatomy.heart_width))):
        pts += jitter_rng.normal(0.0, 0.005, pts.shape)
        # Scale about the medial column: width sideways, height (and the breath) down.
        medial = 0.5 + side * 0.05
        pts[:, 0] = medial + (pts[:, 0] - medial) * anatomy.lung_width
        pts[:, 1] = 0.1 + (pts[:, 1] - 0.1) * anatomy.lung_height * inspiration
        outlines.append(_catmull_rom(pts))
    return outlines


# =========================================================================== frame
@dataclass(frozen=True)
class _Frame:
    """Body frame -> image frame (both normalised to 0..1): a small shift, scale and tilt."""

    matrix: np.ndarray  # (2, 2)
    shift: np.ndarray  # (2,)

    @staticmethod
    def draw(rng: np.random.Generator) -> _Frame:
        scale = rng.uniform(0.9, 1.04)
        aspect = rng.uniform(0.96, 1.04)
        angle = math.radians(rng.normal(0.0, 1.5))
        c, s = math.cos(angle), math.sin(angle)
        matrix = np.array([[c, -s], [s, c]]) @ np.diag([scale * aspect, scale / aspect])
        shift = np.array([rng.normal(0.0, 0.02), rng.normal(0.015, 0.025)])
        return _Frame(matrix, shift)

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        """Body-frame points ``(..., 2)`` -> image-normalised points."""
        return (pts - 0.5) @ self.matrix.T + 0.5 + self.shift

    def body_grid(self, res: int) -> tuple[np.ndarray, np.ndarray]:
        """Body-frame coordinates ``(u, v)`` of the pixel centres of a ``res`` x ``res`` grid."""
        axis = (np.arange(res, dtype=np.float32) + 0.5) / res
        x, y = np.meshgrid(axis, axis)
        inv = np.linalg.inv(self.matrix).astype(np.float32)
        dx, dy = x - 0.5 - np.float32(self.shift[0]), y - 0.5 - np.float32(self.shift[1])
        return inv[0, 0] * dx + inv[0, 1] * dy + 0.5, inv[1, 0] * dx + inv[1, 1] * dy + 0.5


# =========================================================================== helpers
def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, smooth in between (float32 in, float32 out)."""
    # In place on one temporary: this runs on full-size fields, memory traffic dominates.
    x = np.maximum(x, np.float32(0.0))
    np.minimum(x, np.float32(1.0), out=x)
    y = x * x
    x *= np.float32(-2.0)
    x += np.float32(3.0)
    y *= x
    return y


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear up-sampling (area averaging when shrinking) of a float32 field."""
    if img.shape[0] == size:
        return img
    interp = cv2.INTER_LINEAR if size > img.shape[0] else cv2.INTER_AREA
    return cv2.resize(img, (size, size), interpolation=interp)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px < 0.3:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)


def _signed_distance(outline_px: np.ndarray, res: int) -> np.ndarray:
    """Signed distance (in pixels, > 0 inside) to a filled polygon on a ``res`` grid."""
    mask = np.zeros((res, res), np.uint8)
    # Sub-pixel vertices (shift=4) keep the outline smooth at low resolution.
    pts = np.round(outline_px * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
    # Pixel centres sit half a pixel from the edge on either side.
    return np.where(mask > 0, inside - 0.5, 0.5 - outside).astype(np.float32)


# =========================================================================== regions
@dataclass(frozen=True)
class _Region:
    """A pneumothorax: the band between the chest wall and a collapsed lung edge.

    Depth inward from the wall (fraction of the frame) as a function of the angle ``phi``
    around the lung centre (0 = lateral, pi/2 = apex, -pi/2 = base, measured on each lung
    so that both sides read the same): ``depth * (1 - t^2)^power * wobble(t)`` with
    ``t = (phi - centre) / half_width`` in [-1, 1].
    """

    lung: int  # 0 = image left, 1 = image right
    centre: float
    half_width: float
    depth: float
    power: float
    wobble: tuple[float, float, float, float]  # amp1, freq1, phase1, amp2

    def depth_field(self, phi: np.ndarray) -> np.ndarray:
        t = (phi - self.centre) / self.half_width
        core = np.clip(1.0 - t * t, 0.0, 1.0) ** self.power
        a1, f1, p1, a2 = self.wobble
        wobble = 1.0 + a1 * np.sin(f1 * t + p1) + a2 * np.sin(2.3 * f1 * t + 2 * p1)
        return (self.depth * core * wobble).astype(np.float32)


def _draw_regions(rng: np.random.Generator) -> list[_Region]:
    """1 region for most positives, 2-3 for ~15% (some overlapping on one lung)."""
    n = 1 if rng.random() < 0.85 else int(rng.choice([2, 3], p=[0.7, 0.3]))
    # Area per image spans ~0.1% to ~8%: the depth is log-uniform, the arc grows with it.
    first_lung = int(rng.integers(2))
    regions: list[_Region] = []
    for k in range(n):
        if k == 0 or rng.random() < 0.35:
            lung = first_lung if k == 0 else 1 - first_lung
            # Apical to lateral, rarely lower lateral (supine patients).
            centre = float(rng.choice([rng.normal(1.45, 0.2), rng.normal(0.6, 0.35)]))
        else:
            # A second pocket on the same lung, overlapping the first one's arc.
            lung, base = regions[0].lung, regions[0]
            centre = base.centre + float(rng.choice([-1, 1])) * base.half_width * rng.uniform(
                0.4, 1.1
            )
        size = rng.uniform(0.0, 1.0)  # 0 tiny ... 1 large
        depth = float(math.exp(math.log(0.006) + size * math.log(0.15 / 0.006)))
        depth *= rng.uniform(0.8, 1.2)
        half_width = float(rng.uniform(0.25, 0.5) + 0.8 * size * rng.uniform(0.5, 1.0))
        # Keep the arc off the mediastinum (phi ~ pi) and the diaphragm (phi ~ -pi/2).
        centre = float(np.clip(centre, -0.6, 2.2))
        half_width = min(half_width, 2.9 - centre, centre + 1.3)
        regions.append(
            _Region(
                lung=lung,
                centre=centre,
                half_width=half_width,
                depth=depth,
                power=float(rng.uniform(0.5, 1.3)),
                wobble=(
                    float(rng.uniform(0.0, 0.25)),
                    float(rng.uniform(2.0, 6.0)),
                    float(rng.uniform(0, 2 * math.pi)),
                    float(rng.uniform(0.0, 0.12)),
                ),
            )
        )
    return regions


# =========================================================================== layers
def _body_layer(
    u: np.ndarray,
    v: np.ndarray,
    anatomy: Anatomy,
    lung_alpha: np.ndarray,
    lung_depth: np.ndarray,
    rng: np.random.Generator,
    view_ap: bool,
) -> np.ndarray:
    """Everything smooth (float32 brightness, ~0..1): body, mediastinum, lungs, bones.

    ``u, v`` are body-frame coordinates of the pixels; ``lung_alpha`` (0..1) and
    ``lung_depth`` (signed distance into the lungs, fraction of the frame) are on that grid.
    """
    res = u.shape[0]
    lat = np.abs(u - 0.5)
    # Chest wall half-width by height: wider at the top (shoulders and arms).
    half = anatomy.body_half_width + 0.08 * _smoothstep((0.2 - v) / 0.16)
    half = half + 0.02 * np.sin(np.clip(v, 0, 1) * math.pi)  # barrel-shaped thorax
    body = _smoothstep((half - lat) / 0.015)
    thickness = np.sqrt(np.clip(1.0 - (lat / (half + 1e-3)) ** 2, 0.0, 1.0))
    img = 0.02 + body * anatomy.soft_tissue * (0.55 + 0.45 * thickness)

    # Mediastinum (heart, great vessels, spine) fills the space between the lungs; the
    # abdomen fills the space below them. Blurred so its edge spills a little into the
    # lungs, as the heart does behind them.
    central = np.exp(-((lat / 0.2) ** 4))
    # Below a lung (any lung pixel higher up the same column) is the abdomen.
    below = np.maximum.accumulate(lung_alpha, axis=0) * _smoothstep((v - 0.45) / 0.1)
    dense = body * (1.0 - lung_alpha) * np.maximum(central, below)
    dense = _blur(dense.astype(np.float32), 0.012 * res)
    img += (0.3 + (0.03 if view_ap else 0.0)) * dense
    # The thoracic spine shows through the upper mediastinum; the trachea is a dark tube.
    spine = np.exp(-(((u - 0.5) / 0.03) ** 2)) * _smoothstep((0.55 - v) / 0.25)
    vert = 1.0 + 0.12 * np.cos(2 * math.pi * (v - rng.uniform(0, 0.05)) / 0.05)
    img += 0.05 * spine * vert * body
    img -= 0.07 * np.exp(-(((u - 0.5) / 0.02) ** 4)) * _smoothstep((0.3 - v) / 0.08) * body
    # Aortic knob.
    knob = ((u - 0.565) / 0.03) ** 2 + ((v - 0.27) / 0.028) ** 2
    img += 0.05 * _smoothstep((1.0 - knob) / 0.5)

    # The lungs: air removes brightness, most in the mid zones and deep in the lung.
    air = 0.25 + rng.uniform(-0.03, 0.03)
    zone = 1.0 - 0.3 * _smoothstep((0.3 - v) / 0.2) - 0.15 * _smoothstep((v - 0.55) / 0.2)
    img -= air * lung_alpha * zone * (0.7 + 0.3 * _smoothstep(lung_depth / 0.06))

    # Breast shadows over the lower lung zones, with a sharper lower edge.
    if anatomy.breast > 0:
        for side in (-1, 1):
            bx, by = 0.5 + side * 0.27, 0.6
            r = ((u - bx) / 0.2) ** 2 + ((v - by) / 0.14) ** 2
            img += anatomy.breast * _smoothstep((1.0 - r) / 0.6) * _smoothstep((0.72 - v) / 0.02)

    # Gastric bubble under the left hemidiaphragm (a dark smooth blob: not a pneumothorax).
    if rng.random() < 0.5:
        gx, gy = 0.66 + rng.normal(0, 0.02), 0.78 + rng.normal(0, 0.015)
        g = ((u - gx) / 0.05) ** 2 + ((v - gy) / 0.025) ** 2
        img -= rng.uniform(0.04, 0.1) * _smoothstep((1.0 - g) / 1.5) * (1 - lung_alpha)

    img += _ribs(u, v, anatomy, lung_alpha, body, dense, rng)
    img += _clavicles(u, v, rng)
    return img.astype(np.float32)


def _ribs(
    u: np.ndarray,
    v: np.ndarray,
    anatomy: Anatomy,
    lung_alpha: np.ndarray,
    body: np.ndarray,
    dense: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Posterior ribs (bright arches with cortical rims) and fainter anterior ribs."""
    lat = np.abs(u - 0.5)
    # Posterior ribs leave the spine, rise a little, then arch down to the lateral wall.
    arch = anatomy.rib_arch * (-0.5 * lat + 2.2 * lat**2)
    pitch = anatomy.rib_spacing * (1.0 + 0.3 * np.clip(v - 0.1, 0.0, 1.0))
    phase = (v - arch - 0.06 - rng.uniform(-0.01, 0.01)) / pitch
    k = np.floor(phase)
    # Each rib its own small offset and thickness, so the cage is not a perfect grating.
    kk = np.clip(k, 0, 11).astype(np.int32)
    offset = rng.uniform(-0.08, 0.08, 12).astype(np.float32)[kk]
    thick = rng.uniform(0.38, 0.5, 12).astype(np.float32)[kk]
    inside = (phase - k - offset) / thick
    rim = np.exp(-((inside / 0.13) ** 2)) + np.exp(-(((1.0 - inside) / 0.13) ** 2))
    band = _smoothstep(inside / 0.15) * _smoothstep((1.0 - inside) / 0.15) * (0.6 + 0.4 * rim)
    valid = (k >= 0) & (k < 11)
    fade = 1.0 - 0.04 * np.clip(k, 0, 11)  # lower ribs lie under more tissue
    # Seen through the lungs, faintly in the chest wall, hardly at all behind the heart.
    seen = (0.25 + 0.75 * lung_alpha) * (1.0 - 0.85 * dense) * _smoothstep((lat - 0.04) / 0.03)
    out = rng.uniform(0.05, 0.08) * band * valid * fade * seen * body
    # Anterior ribs: from the lateral wall down towards the midline, fainter, lungs only.
    phase_a = (v + 0.6 * (0.45 - lat) - 0.3) / (anatomy.rib_spacing * 1.35)
    fa = phase_a - np.floor(phase_a)
    band_a = _smoothstep(fa / 0.08) * _smoothstep((0.28 - fa) / 0.08)
    out += rng.uniform(0.02, 0.04) * band_a * lung_alpha * _smoothstep((lat - 0.12) / 0.05)
    return out.astype(np.float32)


def _clavicles(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two clavicles: from the sternum up and out to the shoulders, gently S-shaped."""
    lat = np.abs(u - 0.5)
    height = rng.uniform(-0.015, 0.03)
    centre = 0.175 + height - 0.3 * (lat - 0.05) + 0.5 * (lat - 0.22) ** 2
    d = (v - centre) / 0.017
    bar = np.exp(-(d**4)) * (1.0 + 0.35 * np.exp(-((np.abs(d) - 0.9) ** 2) / 0.05))
    span = _smoothstep((lat - 0.045) / 0.02) * _smoothstep((0.36 - lat) / 0.03)
    return (rng.uniform(0.06, 0.1) * bar * span).astype(np.float32)


def _vessel_tree(
    rng: np.random.Generator, sd: np.ndarray, hilum_px: np.ndarray, lateral: int
) -> np.ndarray:
    """Lung markings: branching, tapering vessels from a hilum (float32 on ``sd``'s grid).

    ``sd`` is the lung's signed distance (pixels, > 0 inside): vessels stop short of the
    pleura, as real markings fade in the outermost centimetre.
    """
    res = sd.shape[0]
    canvas = np.zeros((res, res), np.float32)
    step = 0.011 * res
    stop = 0.008 * res
    min_width = 0.0011 * res
    budget = 1000
    # Pre-drawn random numbers: far fewer Generator calls than one per step.
    noise = rng.standard_normal(budget * 2 + 2)
    uni = rng.random(budget * 2 + 2)
    stack: list[tuple[float, float, float, float]] = []
    # Trunks fan out from the hilum: up, out and (most) down into the lower lobe.
    for ang in rng.uniform(-1.9, 2.0, int(rng.integers(9, 14))):
        stack.append((float(hilum_px[0]), float(hilum_px[1]), float(ang), 0.011 * res))
    i = 0
    while stack and i < budget:
        x, y, ang, width = stack.pop()
        turn = 0.0
        while width > min_width and i < budget:
            # Smoothly curving: the turn rate itself drifts.
            turn = 0.6 * turn + 0.07 * noise[2 * i]
            ang += turn
            length = step * (0.6 + 0.8 * uni[2 * i])
            nx = x + lateral * math.cos(ang) * length
            ny = y - math.sin(ang) * length
            ix, iy = int(nx), int(ny)
            if not (0 <= ix < res and 0 <= iy < res) or sd[iy, ix] < stop:
                break
            # Thin vessels are also fainter (less blood across the beam).
            inten = 0.1 + 0.9 * min(1.0, width / (0.011 * res)) ** 0.7
            # A vessel thinner than a pixel is drawn one pixel wide and proportionally
            # fainter, so small renders look like large ones shrunk.
            inten *= min(1.0, width)
            cv2.line(
                canvas,
                (int(x * 16 + 0.5), int(y * 16 + 0.5)),
                (int(nx * 16 + 0.5), int(ny * 16 + 0.5)),
                inten,
                max(1, int(width + 0.5)),
                cv2.LINE_8,
                4,
            )
            i += 1
            x, y = nx, ny
            width *= 0.94
            if uni[2 * i + 1] < 0.28:
                side = 1.0 if noise[2 * i + 1] > 0 else -1.0
                spread = 0.3 + 0.5 * abs(float(noise[2 * i + 1])) / 2.0
                stack.append((x, y, ang + side * spread, width * 0.8))
                width *= 0.92
    return _blur(canvas, 0.0012 * res)


def _edge_line(
    out: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    x0: float,
    y0: float,
    slope: float,
    bend: float,
    y_range: tuple[float, float],
    amp: float,
    width: float,
    sign: int,
) -> None:
    """Add to ``out`` a skin-fold-like edge: brightness ramps up to a curve, then drops.

    The curve is ``u = x0 + slope * (v - y0) + bend * (v - y0)^2`` for ``v`` in
    ``y_range``; ``sign`` picks the brighter side. Lung markings run on across it (unlike
    a pleural line). Only the rows the curve spans are computed.
    """
    rows = np.flatnonzero((v.min(axis=1) < y_range[1] + 0.06) & (v.max(axis=1) > y_range[0] - 0.06))
    if rows.size == 0:
        return
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    uu, vv = u[r0:r1], v[r0:r1]
    t = sign * (uu - (x0 + slope * (vv - y0) + bend * (vv - y0) ** 2))
    ramp = np.exp(-np.maximum(t, 0.0) / width) * _smoothstep(t / 0.0015 + 0.5)
    span = _smoothstep((vv - y_range[0]) / 0.05) * _smoothstep((y_range[1] - vv) / 0.05)
    out[r0:r1] += amp * ramp * span


def _distractors(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    frame: _Frame,
    res: int,
    lung_alpha: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Look-alikes drawn independently of the label: ``(overlay, texture_keep)``.

    ``overlay`` adds brightness (skin folds, scapular borders, wires, side marker);
    ``texture_keep`` (1 = keep) removes lung markings inside bullae, which, like a
    pneumothorax, are smooth lucent patches, but round and away from the wall.
    """
    overlay = np.zeros((res, res), np.float32)
    keep = np.ones((res, res), np.float32)
    # Skin fold: a long, nearly vertical edge crossing a lung and running beyond it.
    if rng.random() < 0.3:
        side = int(rng.choice([-1, 1]))
        x0 = 0.5 + side * rng.uniform(0.26, 0.38)
        curve = (x0, 0.45, rng.normal(0, 0.15), rng.normal(0, 0.6))
        y_range = (rng.uniform(0.1, 0.3), rng.uniform(0.6, 0.9))
        look = (rng.uniform(0.04, 0.08), rng.uniform(0.006, 0.02), side)
        _edge_line(overlay, u, v, *curve, y_range, *look)
    # Medial border of the scapula over the upper lateral lung (very common on AP films).
    for side in (-1, 1):
        if rng.random() < 0.45:
            x0 = 0.5 + side * rng.uniform(0.3, 0.37)
            curve = (x0, 0.2, side * rng.uniform(0.05, 0.2), side * rng.uniform(-0.4, 0.2))
            y_range = (0.1, rng.uniform(0.38, 0.5))
            look = (rng.uniform(0.04, 0.07), rng.uniform(0.03, 0.08), side)
            _edge_line(overlay, u, v, *curve, y_range, *look)
    # Bullae: round lucent patches without markings, with a hair-thin wall.
    if rng.random() < 0.05:
        side = float(rng.choice([-1, 1]))
        bx, by = 0.5 + side * rng.uniform(0.15, 0.3), rng.uniform(0.2, 0.45)
        r = rng.uniform(0.02, 0.05)
        d = np.sqrt((u - bx) ** 2 + (v - by) ** 2) / r
        keep *= 1.0 - _smoothstep((1.0 - d) / 0.1) * lung_alpha
        overlay += 0.05 * np.exp(-(((d - 1.0) / 0.05) ** 2)) * lung_alpha
        overlay -= 0.03 * _smoothstep((1.0 - d) / 0.2) * lung_alpha
    # ECG leads: thin bright wires with round electrodes.
    lines = np.zeros((res, res), np.float32)
    if rng.random() < 0.25:
        for _ in range(int(rng.integers(1, 4))):
            start = np.array([rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.8)])
            ctrl = start + rng.normal(0, 0.2, 2)
            end = np.array([rng.choice([-0.05, 1.05]), rng.uniform(0.3, 1.1)])
            t = np.linspace(0, 1, 40)[:, None]
            pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end
            px = np.round(frame.to_image(pts) * res * 16).astype(np.int32)
            # Sub-pixel wires: one pixel wide, proportionally fainter (as for vessels).
            width = 0.002 * res
            cv2.polylines(lines, [px], False, 0.3 * min(1.0, width), max(1, round(width)), 8, 4)
            centre = tuple(int(c) for c in px[0])
            cv2.circle(lines, centre, round(0.012 * res * 16), 0.45, -1, cv2.LINE_8, 4)
    # A side marker ("R" / "L") near a top corner, burned into the image.
    if rng.random() < 0.6:
        text = str(rng.choice(["R", "L"]))
        scale = res / 400
        org = (
            int(rng.uniform(0.03, 0.2) * res) if rng.random() < 0.5 else int(0.86 * res),
            int(rng.uniform(0.08, 0.2) * res),
        )
        letter = np.zeros((res, res), np.uint8)  # putText draws on 8-bit images only
        cv2.putText(letter, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 230, max(1, res // 200))
        lines += letter.astype(np.float32) / 255.0
    overlay += _blur(lines, 0.0012 * res)
    return overlay, keep


# =========================================================================== render
def render_case(
    rng: np.random.Generator,
    size: int,
    positive: bool,
    anatomy: Anatomy | None = None,
    view: str | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render one synthetic chest radiograph and its pneumothorax regions.

    Pure: everything random comes from ``rng``. ``anatomy`` is the patient's body (drawn
    from ``rng`` when None), so several images of one patient look alike; ``view`` is the
    ViewPosition ("PA" or "AP", drawn when None): AP films magnify the heart.

    Returns ``(image, masks)``: ``image`` is ``uint8 (size, size)`` (MONOCHROME2: air dark,
    bone bright); ``masks`` is a list of ``uint8 (size, size)`` 0/1 arrays, one per region,
    which may overlap; empty for a negative. Each mask is exactly the drawn region: the
    image and the masks are computed from the same full-resolution fields. The same
    ``rng`` state with ``positive`` False gives the same film without the lesions.
    """
    if anatomy is None:
        anatomy = draw_anatomy(rng, "M" if rng.random() < 0.55 else "F")
    # Smooth anatomy at ~1/4, lung fields and markings at ~1/2, the lesion at full size:
    # up-sampling the smooth layers costs nothing visible and most of the time.
    res_lo = min(size, max(96, size // 4))
    res_tex = min(size, max(128, size // 2))
    frame = _Frame.draw(rng)
    view_ap = (rng.random() < 0.4) if view is None else view == "AP"
    inspiration = float(rng.uniform(0.94, 1.05))
    outlines = _lung_outlines(anatomy, inspiration)

    # Lung signed distances (fraction of the frame, > 0 inside) at the texture resolution.
    sds = [_signed_distance(frame.to_image(o) * res_tex, res_tex) / res_tex for o in outlines]
    sd_both = np.maximum(sds[0], sds[1])
    edge = 0.006  # lung edge softness (fraction of the frame)
    lung_alpha_tex = _smoothstep(sd_both / edge + 0.5)

    # --- the smooth layer, at res_lo, then brought to res_tex.
    u_lo, v_lo = frame.body_grid(res_lo)
    sd_lo = _resize(sd_both, res_lo)
    alpha_lo = _smoothstep(sd_lo / edge + 0.5)
    base = _body_layer(u_lo, v_lo, anatomy, alpha_lo, sd_lo, rng, view_ap)
    # Exposure falls off a little across the film (heel effect, patient not centred).
    ramp = np.linspace(-1.0, 1.0, res_lo, dtype=np.float32)
    base += np.float32(rng.normal(0, 0.03)) * ramp[None, :]
    base += np.float32(rng.normal(0, 0.03)) * ramp[:, None]
    base = _resize(base, res_tex)

    # --- lung markings and parenchyma, at res_tex.
    u, v = frame.body_grid(res_tex)
    texture = np.zeros((res_tex, res_tex), np.float32)
    for side, sd in zip((-1, 1), sds, strict=True):
        hilum = _HILUM if side < 0 else np.array((1.0 - _HILUM[0], _HILUM[1] + 0.01))
        hilum_px = frame.to_image(hilum) * res_tex
        texture += _vessel_tree(rng, sd * res_tex, hilum_px, side)
        # The hilum itself: a denser knot of large vessels and nodes.
        knot = ((u - float(hilum[0])) / 0.035) ** 2 + ((v - float(hilum[1])) / 0.07) ** 2
        texture += 0.8 * np.exp(-knot) * _smoothstep(sd * res_tex / 3 + 0.5)
    # Noise amplitudes scale with the resolution so that a small render has the
    # statistics of a 1024 one shrunk (averaging n pixels divides the std by sqrt(n)).
    per_px = res_tex / 512
    grain = rng.random((res_tex, res_tex), dtype=np.float32) - np.float32(0.5)
    parenchyma = _blur(grain, 0.004 * res_tex) - _blur(grain, 0.012 * res_tex)
    texture = texture * np.float32(rng.uniform(0.08, 0.12)) + 0.28 * per_px * parenchyma
    texture *= lung_alpha_tex * (0.35 + 0.65 * _smoothstep(sd_both / 0.03))
    overlay, keep = _distractors(rng, u, v, frame, res_tex, lung_alpha_tex)
    texture *= keep
    base += overlay

    # Detector noise, coarse part (uniform noise: normal variates cost 6x more and look
    # the same after the JPEG).
    mottle = rng.random((res_tex, res_tex), dtype=np.float32) - np.float32(0.5)
    base += mottle * np.float32(rng.uniform(0.02, 0.05) * per_px)

    # --- full resolution: the lesions, fine noise, then window/gamma to uint8.
    img = _resize(base + texture, size)
    # The lesions draw from their own stream, taken whether or not the case is positive:
    # the same rng then renders the same film with and without the pneumothorax.
    lesion_rng = np.random.default_rng(rng.integers(2**63))
    masks: list[np.ndarray] = []
    if positive:
        # A region can miss the lung entirely only in freak geometry: draw again.
        for _ in range(10):
            regions = _draw_regions(lesion_rng)
            masks = _paint_regions(img, texture, sds, regions, frame, lesion_rng)
            if masks:
                break
    grain = rng.random((size, size), dtype=np.float32)
    grain -= np.float32(0.5)
    grain *= np.float32(rng.uniform(0.006, 0.018) * size / 1024)
    img += grain
    return _tone(img, rng), masks


def _sample(field: np.ndarray, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Bilinear samples of a low-resolution ``field`` on the pixels ``box`` of a ``size`` grid.

    ``box`` is ``(y0, y1, x0, x1)`` in full-resolution pixels. Pixel centres map as in
    ``cv2.resize`` (``src = (dst + 0.5) * scale - 0.5``), so a crop is sampled directly
    without up-sampling the whole field.
    """
    y0, y1, x0, x1 = box
    scale = field.shape[0] / size
    matrix = np.array(
        [[scale, 0.0, (x0 + 0.5) * scale - 0.5], [0.0, scale, (y0 + 0.5) * scale - 0.5]]
    )
    return cv2.warpAffine(
        field,
        matrix,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _paint_regions(
    img: np.ndarray,
    texture: np.ndarray,
    sds: list[np.ndarray],
    regions: list[_Region],
    frame: _Frame,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Cut the pneumothorax regions into ``img`` (float32, full size, in place).

    ``texture`` (lung markings, low resolution) is what a region removes.

    A region is ``{0 < sd < depth(phi)}`` with ``sd`` the lung's signed distance, both
    sampled at full resolution: inside it the markings go and the lung gets darker; at its
    inner edge runs a thin bright visceral pleural line. The masks and the pixels come from
    the same sampled fields, so they agree to the pixel. Work is confined to the regions'
    bounding box. Returns one ``uint8`` 0/1 mask per non-empty region.
    """
    size = img.shape[0]
    res_tex = sds[0].shape[0]
    axis = (np.arange(res_tex, dtype=np.float32) + 0.5) / res_tex
    gx, gy = np.meshgrid(axis, axis)
    masks: list[np.ndarray] = []
    for lung in (0, 1):
        mine = [r for r in regions if r.lung == lung]
        if not mine:
            continue
        lateral = -1.0 if lung == 0 else 1.0
        centre = _LUNG_CENTRE if lung == 0 else np.array((1 - _LUNG_CENTRE[0], _LUNG_CENTRE[1]))
        cx, cy = (float(c) for c in frame.to_image(centre))
        phi = np.arctan2(cy - gy, lateral * (gx - cx))
        # Angles past the medial side wrap to -pi; arcs never reach there (depth ~ 0).
        phi = np.where(phi < -2.4, phi + np.float32(2 * np.pi), phi)
        depth_tex = [r.depth_field(phi) * (sds[lung] > -0.01) for r in mine]
        rows, cols = np.nonzero(np.maximum.reduce(depth_tex) > 0)
        if rows.size == 0:
            continue
        k = size / res_tex
        box = (
            max(0, int((rows.min() - 2) * k)),
            min(size, int((rows.max() + 3) * k) + 1),
            max(0, int((cols.min() - 2) * k)),
            min(size, int((cols.max() + 3) * k) + 1),
        )
        y0, y1, x0, x1 = box
        sd = _sample(sds[lung], size, box)
        # At least 1.5 pixels deep wherever the arc is, so tiny regions stay visible.
        floor = np.float32(1.5 / size)
        depths = [_sample(d, size, box) for d in depth_tex]
        depths = [np.where(d > 0, np.maximum(d, floor), np.float32(0)) for d in depths]
        inside = sd > 0
        for d in depths:
            mask = np.zeros((size, size), np.uint8)
            mask[y0:y1, x0:x1] = inside & (sd < d)
            masks.append(mask)
        depth = np.maximum.reduce(depths)
        excess = depth - sd  # > 0 inside the union of this lung's regions
        # Soft membership, one pixel wide, centred on the mask boundary.
        soft = _smoothstep(excess * size + 0.5) * _smoothstep(sd * size + 0.5) * (depth > 0)
        on_arc = _smoothstep(depth / (3.0 / size))
        crop = img[y0:y1, x0:x1]
        # Pleural air is darker than aerated lung, more so the thicker the air layer.
        lucency = rng.uniform(0.035, 0.07) + 0.3 * max(r.depth for r in mine)
        crop -= soft * (_sample(texture, size, box) + np.float32(lucency))
        # The visceral pleural line: a thin bright curve along the collapsed lung's edge,
        # at least ~0.6 px wide so it survives small sizes (fainter, wider).
        width = max(1.1 / 1024, 0.6 / size)
        amp = rng.uniform(0.07, 0.13) * (1.1 / 1024) / width
        line = np.exp(-((excess / np.float32(width)) ** 2)) * on_arc * inside
        crop += np.float32(amp) * line
        # The collapsed lung just inside the line is a little denser.
        denser = np.exp(np.minimum(excess, 0) / np.float32(0.01)) * (excess < 0) * on_arc
        crop += np.float32(rng.uniform(0.0, 0.03)) * denser
    return [m for m in masks if m.any()]


def _tone(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-image window and gamma, float32 (~0..1) -> ``uint8``, through a lookup table."""
    lo, hi = rng.uniform(-0.04, 0.06), rng.uniform(0.86, 1.04)
    gamma = rng.uniform(0.8, 1.25)
    # 4096 levels over [-0.5, 1.5): finer than the 8-bit output everywhere that matters.
    levels = (np.arange(4096, dtype=np.float64) + 0.5) / 2048.0 - 0.5
    lut = np.clip((levels - lo) / (hi - lo), 0.0, 1.0) ** gamma
    lut = np.clip(lut * 255.0 + 0.5, 0, 255).astype(np.uint8)
    index = np.clip((img + np.float32(0.5)) * np.float32(2048.0), 0, 4095).astype(np.int32)
    return lut[index]


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
