"""Training augmentations built from searchable probabilities and strengths (albumentations 2).

A frozen :class:`AugmentConfig` names five groups, each with a probability and (except the
flip) a strength in ``[0, 1]``-like units, so that a search space can sample them directly:

* ``flip``    horizontal flip;
* ``color``   one of brightness, contrast or gamma (pixel values only, the mask is untouched);
* ``distort`` one of elastic, grid or optical distortion;
* ``affine``  shift-scale-rotate (``A.Affine``; ``ShiftScaleRotate`` is deprecated in 2.x);
* ``crop``    a random square crop resized back to the image size.

Images are ``uint8`` ``(H, W)`` radiographs and masks ``uint8`` ``(H, W)`` holding 0/1. Image
and mask go through one call, so they share every random parameter; masks are resampled with
nearest-neighbour interpolation (never bilinear + threshold, which dilates thin regions) and
borders are filled with 0 in both, so a pixel that leaves the frame leaves the mask too.

Only albumentations 2.0.8 argument names are used: 2.x ignores old names (``alpha_affine``,
``shift_limit``...) with nothing but a warning, and every Compose here is built with
``strict=True`` so that a stale name raises instead.
"""

from __future__ import annotations

import os

# albumentations checks PyPI for a newer version at import time unless this is set.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import math
import random
from dataclasses import dataclass, fields

import albumentations as A
import cv2
import numpy as np

# The tutorial trained at 256 px; distortion magnitudes given in pixels are scaled from it so
# that a strength means the same relative deformation at every image size.
_REFERENCE_SIZE = 256
# ShiftScaleRotate's default rotation limit, the cap for ``affine_strength * 100`` degrees.
_MAX_ROTATE_DEGREES = 45.0

# (field, lower, upper) for the strengths; the upper bounds keep every transform well defined
# (gamma stays > 0, the affine scale stays > 0; the grid's limit is capped at 0.9 below so that
# its cells never collapse to zero width).
_STRENGTH_RANGES: tuple[tuple[str, float, float], ...] = (
    ("color_strength", 0.0, 0.8),
    ("distort_strength", 0.0, 1.0),
    ("affine_strength", 0.0, 0.5),
)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of the five augmentation groups (see the module docstring).

    Every ``*_p`` is the probability that its group is applied to one image, in ``[0, 1]``.
    Strengths (``color_strength`` in ``[0, 0.8]``, ``distort_strength`` in ``[0, 1]``,
    ``affine_strength`` in ``[0, 0.5]``) scale the magnitude of their group's transforms;
    ``crop_min_scale`` in ``(0, 1]`` is the smallest crop side as a fraction of the image side.
    """

    flip_p: float = 0.5
    color_p: float = 0.5
    # brightness and contrast limits (fractions); gamma in [1 - s, 1 + s]
    color_strength: float = 0.2
    distort_p: float = 0.0
    # elastic alpha 400 * s (at 256 px), grid distort_limit min(s, 0.9), optical k limit s
    distort_strength: float = 0.3
    affine_p: float = 0.5
    # shift fraction s, scale in [1 - s, 1 + s], rotation min(100 * s, 45) degrees
    affine_strength: float = 0.1
    crop_p: float = 0.0
    crop_min_scale: float = 0.7

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                problems.append(f"{f.name} must be a number, got {value!r}")
            elif not math.isfinite(float(value)):
                problems.append(f"{f.name} must be finite, got {value!r}")
        if problems:
            raise ValueError("invalid augmentation config: " + "; ".join(problems))
        for f in fields(self):
            if f.name.endswith("_p") and not 0.0 <= getattr(self, f.name) <= 1.0:
                problems.append(f"{f.name} is a probability in [0, 1], got {getattr(self, f.name)}")
        for name, lo, hi in _STRENGTH_RANGES:
            if not lo <= getattr(self, name) <= hi:
                problems.append(f"{name} must be in [{lo}, {hi}], got {getattr(self, name)}")
        if not 0.0 < self.crop_min_scale <= 1.0:
            problems.append(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        if problems:
            raise ValueError("invalid augmentation config: " + "; ".join(problems))

    @classmethod
    def tutorial(cls) -> AugmentConfig:
        """The augmentations of the Keras SIIM ResUNet tutorial, in this config's units.

        The tutorial (albumentations 0.x, 256 px) used::

            HorizontalFlip(p=0.5)
            OneOf([RandomContrast(), RandomGamma(), RandomBrightness()], p=0.3)
            OneOf([ElasticTransform(alpha=120, sigma=120 * 0.05, alpha_affine=120 * 0.03),
                   GridDistortion(), OpticalDistortion(distort_limit=2, shift_limit=0.5)], p=0.3)
            RandomSizedCrop(min_max_height=(176, 256), height=256, width=256, p=0.25)

        It imported ``ShiftScaleRotate`` but never used it, so ``affine_p`` is 0. The 0.x
        defaults were a 0.2 brightness/contrast limit and gamma in [0.8, 1.2] (strength 0.2);
        elastic alpha 120 / sigma 6 and the grid's 0.3 limit are strength 0.3. Two parts are not
        reproduced: ``alpha_affine`` (an extra random affine inside the elastic transform, gone
        in 2.x) and the optical limit of 2, which in the same camera model pushes most of the
        image out of frame or zooms it up to ~2.7x; here the optical limit is the strength (0.3).
        """
        return cls(
            flip_p=0.5,
            color_p=0.3,
            color_strength=0.2,
            distort_p=0.3,
            distort_strength=0.3,
            affine_p=0.0,
            affine_strength=0.1,
            crop_p=0.25,
            crop_min_scale=176 / 256,
        )

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation: every probability 0 (:func:`build_augment` returns ``None``)."""
        return cls(flip_p=0.0, color_p=0.0, distort_p=0.0, affine_p=0.0, crop_p=0.0)

    def is_identity(self) -> bool:
        """True when no group can change a pixel: its probability or its strength is 0.

        A crop with ``crop_min_scale == 1`` always takes the whole image, so it is a no-op too.
        """
        return not (
            self.flip_p > 0
            or (self.color_p > 0 and self.color_strength > 0)
            or (self.distort_p > 0 and self.distort_strength > 0)
            or (self.affine_p > 0 and self.affine_strength > 0)
            or (self.crop_p > 0 and self.crop_min_scale < 1)
        )


# Shared by every geometric transform: the frame outside the image is 0 in both the image and
# the mask. Reflecting the image while the mask is filled with 0 would show lung (possibly a
# pneumothorax) where the label says there is none.
_BORDER = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
# Masks are resampled by nearest neighbour so they stay 0/1. Warps (remap / warpAffine) sample
# at exact coordinates, so cv2.INTER_NEAREST is aligned with the image's bilinear; a resize
# with cv2.INTER_NEAREST samples at floor(x * scale) instead of pixel centres and shifts the
# mask by up to half an output pixel per unit of zoom (~4% of the pixels of the alignment test
# disagree with the image at up to 3x zoom, 0.2% with the fix), so the crop uses
# INTER_NEAREST_EXACT (which remap and warpAffine reject).
_WARP_MASK = {"mask_interpolation": cv2.INTER_NEAREST}
_RESIZE_MASK = {"mask_interpolation": cv2.INTER_NEAREST_EXACT}


def _color_group(cfg: AugmentConfig) -> A.BaseCompose:
    s = cfg.color_strength
    # Three separate choices, as in the tutorial's OneOf(contrast, gamma, brightness).
    return A.OneOf(
        [
            A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=s, p=1.0),
            A.RandomGamma(gamma_limit=(100 * (1 - s), 100 * (1 + s)), p=1.0),
            A.RandomBrightnessContrast(brightness_limit=s, contrast_limit=0.0, p=1.0),
        ],
        p=cfg.color_p,
    )


def _distort_group(cfg: AugmentConfig, img_size: int) -> A.BaseCompose:
    s = cfg.distort_strength
    f = img_size / _REFERENCE_SIZE
    # Smoothed noise has a std ~ 1 / sigma, so the displacement is ~ alpha / sigma pixels:
    # sigma ~ f and alpha ~ f**2 keep the same deformation relative to the image at any size.
    sigma = max(1.0, 6.0 * f)  # albumentations requires sigma >= 1
    alpha = 400.0 * s * f * f
    return A.OneOf(
        [
            # Uniform noise, as albumentations 0.x did (2.x's default is a normalised gaussian).
            A.ElasticTransform(
                alpha=alpha,
                sigma=sigma,
                noise_distribution="uniform",
                p=1.0,
                **_BORDER,
                **_WARP_MASK,
            ),
            A.GridDistortion(
                num_steps=5, distort_limit=min(s, 0.9), p=1.0, **_BORDER, **_WARP_MASK
            ),
            A.OpticalDistortion(distort_limit=s, mode="camera", p=1.0, **_BORDER, **_WARP_MASK),
        ],
        p=cfg.distort_p,
    )


def _affine(cfg: AugmentConfig) -> A.BasicTransform:
    s = cfg.affine_strength
    rotate = min(100.0 * s, _MAX_ROTATE_DEGREES)
    return A.Affine(
        translate_percent=(-s, s),
        scale=(1.0 - s, 1.0 + s),
        rotate=(-rotate, rotate),
        shear=0.0,
        interpolation=cv2.INTER_LINEAR,
        p=cfg.affine_p,
        **_BORDER,
        **_WARP_MASK,
    )


def _crop(cfg: AugmentConfig, img_size: int) -> A.BasicTransform:
    min_side = max(1, round(cfg.crop_min_scale * img_size))
    return A.RandomSizedCrop(
        min_max_height=(min_side, img_size),
        size=(img_size, img_size),
        w2h_ratio=1.0,
        interpolation=cv2.INTER_LINEAR,
        p=cfg.crop_p,
        **_RESIZE_MASK,
    )


def build_augment(cfg: AugmentConfig, img_size: int, seed: int | None = None) -> A.Compose | None:
    """The albumentations pipeline for ``cfg`` on square ``img_size`` images, or ``None``.

    ``None`` when ``cfg.is_identity()``: nothing to do, so callers skip the per-image loop.
    Groups that cannot change a pixel (probability or strength 0) are left out. The order is
    the tutorial's: flip, color, distortion, then affine and crop; color comes before the
    geometric groups so that their zero borders stay 0.

    Seeding: the pipeline is a stateful random stream. Two pipelines built with the same
    ``seed`` produce the same sequence of augmentations when called on the same sequence of
    inputs; ``seed=None`` draws fresh OS entropy. Each parallel consumer (a tf.data worker
    process, a Ray actor, a DataLoader worker) must build its own pipeline with a distinct seed
    (:func:`worker_seed`): a pipeline copied into forked workers carries the same state into
    each, so every worker would repeat the others' augmentations. With one pipeline shared by
    threads (``tf.numpy_function`` under ``num_parallel_calls``) the draws interleave in
    scheduling order, so the results are valid but not reproducible.
    """
    if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)) or img_size < 1:
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    if cfg.is_identity():
        return None
    img_size = int(img_size)
    transforms: list[A.BasicTransform | A.BaseCompose] = []
    if cfg.flip_p > 0:
        transforms.append(A.HorizontalFlip(p=cfg.flip_p))
    if cfg.color_p > 0 and cfg.color_strength > 0:
        transforms.append(_color_group(cfg))
    if cfg.distort_p > 0 and cfg.distort_strength > 0:
        transforms.append(_distort_group(cfg, img_size))
    if cfg.affine_p > 0 and cfg.affine_strength > 0:
        transforms.append(_affine(cfg))
    if cfg.crop_p > 0 and cfg.crop_min_scale < 1:
        transforms.append(_crop(cfg, img_size))
    pipeline = A.Compose(
        transforms,
        # Not set here: Compose's mask_interpolation would override each transform's and put
        # the misaligned INTER_NEAREST on the crop's resize (see _RESIZE_MASK).
        mask_interpolation=None,
        strict=True,
        seed=None if seed is None else int(seed),
    )
    # Compose(seed=s) seeds *each* transform with its own generator from the same s, so their
    # draws are identical: with seed 0 a p=0.5 flip and a p=0.5 color group always fire
    # together. One pair of generators shared by the whole pipeline keeps the stream seeded
    # and the groups independent.
    py_seed = None if seed is None else int(seed)
    pipeline.set_random_state(np.random.default_rng(py_seed), random.Random(py_seed))
    return pipeline


def worker_seed(seed: int, worker: int) -> int:
    """A 32-bit seed for parallel consumer ``worker`` (0, 1, ...) derived from ``seed``.

    Statistically independent streams for different workers (``numpy.random.SeedSequence``
    spawning), unlike ``seed + worker``, with which run 0's worker 1 repeats run 1's worker 0.
    """
    if worker < 0:
        raise ValueError(f"worker must be >= 0, got {worker}")
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(worker),)).generate_state(1)[0])


def augment_batch(
    pipeline: A.Compose | None, images: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Augment every image of a batch with its mask, each with its own random parameters.

    ``images``: ``uint8`` ``(B, H, W)``; ``masks``: ``uint8`` ``(B, H, W)`` holding 0/1, the
    same shape. Returns new arrays of the same shapes and dtypes (masks still 0/1). When
    ``pipeline`` is ``None`` the inputs themselves are returned, without a copy. The pipeline
    must have been built for ``H == W == img_size``: a crop resizes to that size.
    """
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 (B, H, W); got dtype {images.dtype} shape {images.shape}"
        )
    if masks.shape != images.shape or masks.dtype != np.uint8:
        raise ValueError(
            f"masks must be uint8 with the images' shape {images.shape}; "
            f"got dtype {masks.dtype} shape {masks.shape}"
        )
    if pipeline is None:
        return images, masks
    out_images = np.empty_like(images)
    out_masks = np.empty_like(masks)
    for i in range(images.shape[0]):
        result = pipeline(image=images[i], mask=masks[i])
        image, mask = result["image"], result["mask"]
        if image.shape != images.shape[1:] or mask.shape != masks.shape[1:]:
            raise ValueError(
                f"the pipeline changed the image size from {images.shape[1:]} to {image.shape}: "
                f"build it with img_size equal to the batch's (square) image side"
            )
        out_images[i] = image
        out_masks[i] = mask
    return out_images, out_masks
