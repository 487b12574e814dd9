"""The normal chest of the synthetic radiographs: a patient's body and the film's layers.

Pixels only (numpy and OpenCV; no DICOM, no files). What is here:

* :class:`Anatomy` / :func:`draw_anatomy`: one patient's body, shared by all their films;
* the lung outlines (closed Catmull-Rom splines in a body frame, the image-right lung
  with the cardiac silhouette in its border) and :class:`_Frame`, the per-film shift,
  scale and tilt from that body frame to the image;
* small float32 field helpers (smoothstep, resize, blur, signed distance to a polygon);
* the layers :func:`data.synth_render.render_case` stacks: body, mediastinum, lung
  fields, breast shadows and gastric bubble (:func:`_body_layer`), ribs, clavicles,
  vessel-like lung markings (:func:`_vessel_tree`), and the look-alikes drawn on any
  film, positive or not (:func:`_distractors`: skin folds, scapular borders, bullae,
  ECG wires, side markers), so that a line or a smooth patch alone does not mean
  "positive".

Every function is pure: anything random comes from the ``rng`` it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


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
