"""Real albumentations pipelines on tiny images: alignment of image and mask, 0/1 masks,
seeding, no albumentations warnings, and config validation."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from pneumotune.model.augment import AugmentConfig, augment_batch, build_augment, worker_seed

REPO = Path(__file__).resolve().parents[2]
SIZE = 64
NONE = AugmentConfig.none()

# Each group's strongest setting at p=1: alone (GROUPS), and all five together (ALL_ON).
STRONGEST = {
    "flip": {"flip_p": 1.0},
    "color": {"color_p": 1.0, "color_strength": 0.8},
    "distort": {"distort_p": 1.0, "distort_strength": 1.0},
    "affine": {"affine_p": 1.0, "affine_strength": 0.5},
    "crop": {"crop_p": 1.0, "crop_min_scale": 0.3},
}
GROUPS = {group: dataclasses.replace(NONE, **setting) for group, setting in STRONGEST.items()}
GEOMETRIC = ("distort", "affine", "crop")
ALL_ON = AugmentConfig(**{k: v for setting in STRONGEST.values() for k, v in setting.items()})


def _batch(n: int = 6, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth blobs with values away from 127, and masks that are exactly ``image > 127``.

    Blocky, smooth content keeps the image's 127 crossing where the mask's edge is, so after
    a geometric transform the mask can be compared with the thresholded image.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 2, (n, size // 8, size // 8)).astype(np.uint8)
    big = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    images = np.where(big == 1, 220, 30).astype(np.uint8)
    images[:, : size // 4, : size // 4] = 220  # an asymmetric patch: a flip is always visible
    images[:, : size // 4, -size // 4 :] = 30
    return images, (images > 127).astype(np.uint8)


def test_identity_config_gives_no_pipeline_and_no_change():
    assert NONE.is_identity()
    assert build_augment(NONE, SIZE, seed=0) is None
    images, masks = _batch()
    out_images, out_masks = augment_batch(None, images, masks)
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_masks, masks)


@pytest.mark.parametrize(
    "cfg",
    [
        dataclasses.replace(NONE, color_p=1.0, color_strength=0.0),
        dataclasses.replace(NONE, distort_p=1.0, distort_strength=0.0),
        dataclasses.replace(NONE, affine_p=1.0, affine_strength=0.0),
        dataclasses.replace(NONE, crop_p=1.0, crop_min_scale=1.0),
    ],
)
def test_zero_strength_is_identity(cfg):
    assert cfg.is_identity()
    assert build_augment(cfg, SIZE) is None


def test_tutorial_and_default_are_not_identity():
    assert not AugmentConfig().is_identity()
    tutorial = AugmentConfig.tutorial()
    assert not tutorial.is_identity()
    assert (tutorial.flip_p, tutorial.color_p, tutorial.distort_p, tutorial.crop_p) == (
        0.5,
        0.3,
        0.3,
        0.25,
    )
    assert round(tutorial.crop_min_scale * 256) == 176


def test_flip_moves_image_and_mask_together():
    images, masks = _batch()
    out_images, out_masks = augment_batch(build_augment(GROUPS["flip"], SIZE, 0), images, masks)
    np.testing.assert_array_equal(out_images, images[:, :, ::-1])
    np.testing.assert_array_equal(out_masks, masks[:, :, ::-1])


@pytest.mark.parametrize("group", GEOMETRIC)
def test_geometric_groups_keep_mask_aligned(group):
    images, masks = _batch(n=8)
    out_images, out_masks = augment_batch(build_augment(GROUPS[group], SIZE, 1), images, masks)
    assert not np.array_equal(out_images, images), "the group did nothing"
    disagree = out_masks != (out_images > 127)
    # Image (bilinear) and mask (nearest) may differ by a pixel along edges only. A half-pixel
    # misaligned mask (cv2.INTER_NEAREST in a resize) disagrees on ~4% at the crop's zoom.
    assert disagree.mean() < 0.01, f"{group}: {disagree.mean():.4f} of pixels disagree"
    assert disagree.reshape(len(images), -1).mean(axis=1).max() < 0.05


def test_every_mask_is_resampled_by_nearest_neighbour():
    def leaves(transforms):
        for t in transforms:
            yield from leaves(t.transforms) if hasattr(t, "transforms") else (t,)

    pipeline = build_augment(ALL_ON, SIZE)
    assert pipeline.mask_interpolation is None  # would override the per-transform choice
    geometric = [t for t in leaves(pipeline.transforms) if hasattr(t, "mask_interpolation")]
    assert len(geometric) == 5  # elastic, grid, optical, affine, crop
    for t in geometric:
        assert t.mask_interpolation in (cv2.INTER_NEAREST, cv2.INTER_NEAREST_EXACT), t


def test_color_changes_the_image_only():
    images, masks = _batch()
    out_images, out_masks = augment_batch(build_augment(GROUPS["color"], SIZE, 2), images, masks)
    assert not np.array_equal(out_images, images)
    np.testing.assert_array_equal(out_masks, masks)


@pytest.mark.parametrize("group", [*GROUPS, "all"])
def test_outputs_keep_shape_dtype_and_binary_masks(group):
    cfg = ALL_ON if group == "all" else GROUPS[group]
    images, masks = _batch()
    out_images, out_masks = augment_batch(build_augment(cfg, SIZE, 3), images, masks)
    assert out_images.shape == images.shape and out_images.dtype == np.uint8
    assert out_masks.shape == masks.shape and out_masks.dtype == np.uint8
    assert set(np.unique(out_masks).tolist()) <= {0, 1}
    assert out_images is not images and out_masks is not masks


def test_inputs_are_not_modified():
    images, masks = _batch()
    before = images.copy(), masks.copy()
    augment_batch(build_augment(ALL_ON, SIZE, 4), images, masks)
    np.testing.assert_array_equal(images, before[0])
    np.testing.assert_array_equal(masks, before[1])


def test_same_seed_same_outputs_different_seed_different():
    images, masks = _batch()
    cfg = AugmentConfig.tutorial()
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        pipeline = build_augment(cfg, SIZE, seed)
        # Two batches: the stream continues across calls and must stay in step.
        runs[name] = [augment_batch(pipeline, images, masks) for _ in range(2)]
    for (ia, ma), (ib, mb) in zip(runs["a"], runs["b"], strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    assert any(not np.array_equal(a[0], c[0]) for a, c in zip(runs["a"], runs["c"], strict=True))


def test_groups_draw_independently_under_a_seed():
    # Compose(seed=s) alone hands every transform an identical generator, so a p=0.5 flip and
    # a p=0.5 color group would always fire together. Expect ~1/4 of images with both.
    cfg = dataclasses.replace(NONE, flip_p=0.5, color_p=0.5, color_strength=0.5)
    images, masks = _batch(n=200, size=16)
    out_images, out_masks = augment_batch(build_augment(cfg, 16, seed=0), images, masks)
    flipped = (out_masks != masks).any(axis=(1, 2))  # color leaves the mask alone
    geometry_only = np.where(flipped[:, None, None], images[:, :, ::-1], images)
    recolored = (out_images != geometry_only).any(axis=(1, 2))
    assert 0.3 < flipped.mean() < 0.7 and 0.3 < recolored.mean() < 0.7
    both = (flipped & recolored).mean()
    assert 0.15 < both < 0.35, f"flip and color co-occur in {both:.2f} of images"


def test_every_group_builds_and_runs_without_albumentations_warnings():
    # pyproject already turns albumentations' warnings into errors; this holds without it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cfg in [*GROUPS.values(), ALL_ON, AugmentConfig(), AugmentConfig.tutorial()]:
            for size in (16, SIZE, 256):
                augment_batch(build_augment(cfg, size, seed=0), *_batch(n=2, size=size))


def test_worker_seeds_are_distinct_and_stable():
    seeds = [worker_seed(0, w) for w in range(8)]
    assert len(set(seeds)) == 8
    assert seeds == [worker_seed(0, w) for w in range(8)]
    assert worker_seed(1, 0) != worker_seed(0, 1)
    with pytest.raises(ValueError, match="worker must be >= 0"):
        worker_seed(0, -1)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"flip_p": 1.5}, "flip_p is a probability in [0, 1], got 1.5"),
        ({"color_p": -0.1}, "color_p is a probability in [0, 1], got -0.1"),
        ({"crop_p": float("nan")}, "crop_p must be finite"),
        ({"affine_p": "0.5"}, "affine_p must be a number"),
        ({"distort_p": True}, "distort_p must be a number"),
        ({"color_strength": -0.2}, "color_strength must be in [0.0, 0.8], got -0.2"),
        ({"color_strength": 0.9}, "color_strength must be in [0.0, 0.8]"),
        ({"distort_strength": 1.2}, "distort_strength must be in [0.0, 1.0], got 1.2"),
        ({"affine_strength": 0.7}, "affine_strength must be in [0.0, 0.5], got 0.7"),
        ({"crop_min_scale": 0.0}, "crop_min_scale must be in (0, 1], got 0.0"),
        ({"crop_min_scale": 1.1}, "crop_min_scale must be in (0, 1]"),
    ],
)
def test_config_validation(kwargs, fragment):
    with pytest.raises(ValueError, match="invalid augmentation config") as info:
        AugmentConfig(**kwargs)
    assert fragment in str(info.value)


def test_config_validation_reports_every_problem():
    with pytest.raises(ValueError) as info:
        AugmentConfig(flip_p=2.0, affine_strength=-1.0)
    assert "flip_p" in str(info.value) and "affine_strength" in str(info.value)


def test_config_accepts_ints_and_numpy_floats():
    cfg = AugmentConfig(flip_p=1, color_p=np.float64(0.25), crop_min_scale=np.float32(0.5))
    assert build_augment(cfg, SIZE, seed=0) is not None


@pytest.mark.parametrize(
    ("images", "masks", "fragment"),
    [
        (np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8), "images must be uint8"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), "images must be uint8 (B, H, W)"),
        (np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 4), np.uint8), "masks must be uint8"),
        (np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), bool), "masks must be uint8"),
    ],
)
def test_batch_validation(images, masks, fragment):
    with pytest.raises(ValueError) as info:
        augment_batch(None, images, masks)
    assert fragment in str(info.value)


def test_pipeline_built_for_another_size_fails_clearly():
    images, masks = _batch(n=1, size=32)
    pipeline = build_augment(GROUPS["crop"], SIZE, seed=0)
    with pytest.raises(ValueError, match="changed the image size"):
        augment_batch(pipeline, images, masks)


@pytest.mark.parametrize(("size", "seed"), [(0, None), (64.0, None), (64, 1.5), (64, "1")])
def test_build_validation(size, seed):
    with pytest.raises(ValueError):
        build_augment(AugmentConfig(), size, seed)


def test_import_pulls_in_neither_tensorflow_nor_ray():
    code = (
        "import sys, pneumotune.model.augment, pneumotune.model.sampling; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'ray', 'keras')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
