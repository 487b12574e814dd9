"""Render one synthetic chest radiograph and its pneumothorax masks (:func:`render_case`).

Pixels only (numpy and OpenCV; no DICOM, no files): ``data.synth`` writes what this
renders. The chest itself (body, lungs, bones, markings, look-alikes) comes from
``data.synth_anatomy``; here are the pneumothorax regions, the composition of the
layers at three resolutions, and the tone curve to ``uint8``.

The images are chest-like (body, mediastinum, two darker lung fields with vessel-like
markings, ribs, clavicles, noise, per-image contrast and gamma, position and scale). A
pneumothorax is a region at a lung's apical/lateral edge where the lung markings are
missing (a darker, smooth area), bounded by a thin bright visceral pleural line. Every
image, positive or not, can carry look-alikes (skin folds, scapular borders, wires,
bullae, side markers) so that a line or a smooth patch alone does not mean "positive".
The masks and the pixels come from the same full-resolution fields, so they agree to
the pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pneumotune.data.synth_anatomy import (
    _HILUM,
    _LUNG_CENTRE,
    Anatomy,
    _blur,
    _body_layer,
    _distractors,
    _Frame,
    _lung_outlines,
    _resize,
    _signed_distance,
    _smoothstep,
    _vessel_tree,
    draw_anatomy,
)


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
