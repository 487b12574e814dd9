"""Resizing images and masks to the stored square sizes.

Images use area interpolation (the right filter for downsampling radiographs).
Masks use area interpolation followed by a 0.5 threshold: each output pixel is
foreground when most of the source pixels it covers are. The tutorial resized
masks bilinearly and kept every pixel ``> 0``, which dilates every region by up
to one output pixel; plain nearest-neighbour at 1024 -> 64 keeps one source pixel
in 256 and lets small regions vanish or jitter.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """``uint8 (H, W)`` -> ``uint8 (size, size)``."""
    if image.shape == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size < max(image.shape) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """0/1 ``uint8 (H, W)`` -> 0/1 ``uint8 (size, size)`` (area + threshold 0.5)."""
    if mask.shape == (size, size):
        return mask
    if not mask.any():
        return np.zeros((size, size), np.uint8)
    if size >= max(mask.shape):
        return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    area = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (area >= 0.5).astype(np.uint8)


def resize_probabilities(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """Float probabilities ``(h, w)`` -> ``(height, width)``, bilinear (threshold afterwards)."""
    if prob.shape == (height, width):
        return prob
    return cv2.resize(prob.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
