"""Figure helpers both reports draw with: class colours, one figure factory, PNG bytes, masks.

Figures are built with matplotlib's object-oriented API (:func:`new_figure` returns a
``matplotlib.figure.Figure`` rendered by the Agg canvas), never through ``pyplot``: no
global figure registry to leak memory across many figures, no GUI backend to select,
and it works inside Ray workers and headless CI alike.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# One colour per label state in every figure (Okabe-Ito: distinguishable with the
# common colour-vision deficiencies, and in greyscale print).
PNEUMOTHORAX = "pneumothorax"
NO_PNEUMOTHORAX = "no pneumothorax"
UNLABELLED = "unlabelled"
CLASS_ORDER: tuple[str, ...] = (PNEUMOTHORAX, NO_PNEUMOTHORAX, UNLABELLED)
CLASS_COLOURS: dict[str, str] = {
    PNEUMOTHORAX: "#D55E00",  # vermillion
    NO_PNEUMOTHORAX: "#0072B2",  # blue
    UNLABELLED: "#999999",  # grey
}
DPI = 100
MASK_ALPHA = 0.45  # opacity of a mask's fill over its image


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches with constrained layout (no overlapping labels)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.patch.set_facecolor("white")
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg canvas, white background)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def empty_axes(fig: Figure) -> list[Axes]:
    """The axes of ``fig`` that draw no data (no patch, line, image or collection).

    A report never shows such an axis: a section without data says so in text. Tests
    call this on every figure a report builds.
    """
    return [ax for ax in fig.axes if not (ax.patches or ax.lines or ax.images or ax.collections)]


def mask_rgba(mask: np.ndarray, colour: str, alpha: float = MASK_ALPHA) -> np.ndarray:
    """An RGBA layer, ``(*mask.shape, 4)``: ``colour`` (``"#RRGGBB"``) at ``alpha`` where
    ``mask`` is set, transparent elsewhere."""
    rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    layer = np.zeros((*mask.shape, 4))
    layer[mask > 0] = (*rgb, alpha)
    return layer


def overlay_mask(ax: Any, mask: np.ndarray, colour: str, linewidth: float, **imshow: Any) -> None:
    """Draw ``mask`` over what ``ax`` shows: a translucent fill in ``colour`` and its
    outline (thin or tiny regions vanish under a translucent fill alone). An empty mask
    draws nothing. ``imshow`` goes to the fill's ``imshow`` (e.g. ``interpolation``)."""
    if not mask.any():
        return
    ax.imshow(mask_rgba(mask, colour), **imshow)
    ax.contour(mask, levels=[0.5], colors=[colour], linewidths=linewidth)
