"""The EDA report's figures: metadata and pixel summaries in, matplotlib figures out.

Pure functions over what :mod:`data.report` has read (the metadata DataFrame with a
``label_state`` column from :func:`label_states`, the ``errors.csv`` frame, and a
:class:`Pixels` summary); no file is read or written here. Each ``fig_*`` returns a
``matplotlib.figure.Figure``, or ``None`` when there is nothing to draw, so that the
report says so in text instead of showing an empty axis. Colours per label state come
from :data:`pneumotune.reports.figures.CLASS_COLOURS` and are the same in every figure.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, NullLocator

from pneumotune.data.dicom import AGE_TOP_CODE
from pneumotune.reports.figures import (
    CLASS_COLOURS,
    CLASS_ORDER,
    NO_PNEUMOTHORAX,
    PNEUMOTHORAX,
    UNLABELLED,
    new_figure,
    overlay_mask,
)
from pneumotune.text import stripped

BOX_COLOUR = "#F0E442"  # yellow: stands out on grey and on the vermillion mask
SEX_COLOURS = {"M": "#009E73", "F": "#CC79A7", "O": "#E69F00", "unknown": "#DDDDDD"}
STAGE_COLOURS = {"read": "#CC79A7", "decode": "#E69F00", "label": "#56B4E9"}
MAX_ERROR_REASONS = 12  # bars in the errors figure; the rest are summed as "other reasons"
AGE_BAND = 5  # years per bar of the age histogram
MIN_SHAPE_N = 30  # fewer values than this make a per-class distribution mostly noise


def label_states(meta: pd.DataFrame) -> pd.Series:
    """Each row's class for the figures: pneumothorax / no pneumothorax / unlabelled."""
    labelled = meta["labelled"].fillna(False).astype(bool)
    positive = meta["has_pneumothorax"].eq(True)
    states = np.where(~labelled, UNLABELLED, np.where(positive, PNEUMOTHORAX, NO_PNEUMOTHORAX))
    return pd.Series(states, index=meta.index, name="label_state")


def patient_keys(meta: pd.DataFrame) -> pd.Series:
    """The patient of each row for counting: the pseudonym, or the row's own key when the
    DICOM had no PatientID (such an image is its own patient, as in data.split)."""
    return meta["patient_id"].where(meta["patient_id"].notna(), "image:" + meta["image_id"])


@dataclass
class Pixels:
    """What the report needs from the pixel columns at one ``size``.

    ``images`` / ``masks``: uint8 ``(S, S)`` arrays of the kept rows (masks 0/1, only
    for labelled rows). ``mask_sum``: per-pixel sum of every positive mask (float64
    ``(S, S)``); ``image_sum``: per-pixel sum of every image.
    """

    size: int
    images: dict[int, np.ndarray]
    masks: dict[int, np.ndarray]
    mask_sum: np.ndarray
    n_positive: int
    image_sum: np.ndarray
    n_images: int


# --------------------------------------------------------------------------- helpers
def pct(n: float, total: float) -> str:
    """``n`` as a percentage of ``total`` with one decimal ("-" when the total is 0)."""
    return f"{100 * n / total:.1f}%" if total else "-"


def _counts_axis(ax: Any, which: str = "y") -> None:
    """Whole-number ticks on an axis of counts (no 0.5 images), no top/right frame."""
    (ax.yaxis if which == "y" else ax.xaxis).set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)


# Tick values for a log axis of percentages: plain numbers ("0.5%"), not "5x10^-1".
_LOG_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


def _percent_log_axis(ax: Any, low: float, high: float) -> None:
    ax.set_xscale("log")
    ticks = [t for t in _LOG_TICKS if low <= t <= high]
    if len(ticks) < 2:
        ticks = sorted({*ticks, float(f"{low:.2g}"), float(f"{high:.2g}")})
    ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def _pie_percent(share: float) -> str:
    # Wedges under 3% are too thin to hold a label; the bars beside each pie give the count.
    return f"{share:.0f}%" if share >= 3 else ""


def plain(text: object) -> str:
    """``text`` to be drawn as it reads, never as mathtext or control codes.

    Header values and ledger reasons come from the files: matplotlib reads ``$...$`` as
    mathtext, and a ViewPosition of ``$\\undefinedcmd$`` made the whole report fail; an
    escaped ``\\$`` is a literal dollar sign in either mode. Control characters (a
    dataset converted by an older reader may hold them) are dropped.
    """
    return stripped(str(text)).replace("$", r"\$")


def present_classes(meta: pd.DataFrame) -> list[str]:
    counts = meta["label_state"].value_counts()
    return [c for c in CLASS_ORDER if counts.get(c, 0) > 0]


def age_text(row: pd.Series) -> str:
    """The age in a title, "58 y"; 90 and over are one group, "90+ y" (see fig_age)."""
    if row["age_status"] == "ok" and pd.notna(row["age"]):
        age = int(row["age"])
        return f"{AGE_TOP_CODE}+ y" if age >= AGE_TOP_CODE else f"{age} y"
    return f"age {row['age_status'] or 'missing'}"


def sex_of(value: object) -> str:
    return str(value) if value in ("M", "F", "O") else "unknown"


def view_of(value: object) -> str:
    return str(value) if isinstance(value, str) and value.strip() else "unknown"


def _counts_by_class(
    meta: pd.DataFrame, column: str, name_of: Callable[[object], str]
) -> pd.DataFrame | None:
    """Images per name of a ``column`` value (``name_of`` gives it; a row each) and per
    class (a column for each present class, in :data:`CLASS_ORDER`); None when there is
    no image."""
    classes = present_classes(meta)
    if not classes:
        return None
    names = meta[column].map(name_of)
    return pd.crosstab(names, meta["label_state"]).reindex(columns=classes).fillna(0)


def _label_bars(ax: Any, bars: Any, labels: list[str], **kw: Any) -> None:
    ax.bar_label(bars, labels=labels, padding=2, fontsize=9, **kw)


# --------------------------------------------------------------------------- figures
def fig_samples(pixels: Pixels, meta: pd.DataFrame, rows: list[int]) -> Figure | None:
    """A grid of the sampled images, titled with age, sex, view position and label."""
    if not rows:
        return None
    cols = min(4, len(rows))
    n_rows = math.ceil(len(rows) / cols)
    fig = new_figure(3.0 * cols, 3.45 * n_rows)
    axes = np.atleast_1d(fig.subplots(n_rows, cols)).ravel()
    for k, ax in enumerate(axes):
        if k >= len(rows):
            ax.remove()
            continue
        row = meta.iloc[rows[k]]
        ax.imshow(pixels.images[rows[k]], cmap="gray", vmin=0, vmax=255)
        mask = pixels.masks.get(rows[k])
        if row["label_state"] == PNEUMOTHORAX and mask is not None and mask.any():
            ax.contour(mask, levels=[0.5], colors=[CLASS_COLOURS[PNEUMOTHORAX]], linewidths=1.2)
        ax.set_axis_off()
        ax.set_title(
            f"image {k + 1} of the sample\n{age_text(row)} · {sex_of(row['sex'])} · "
            f"{plain(view_of(row['view_position']))}\n{row['label_state']}",
            fontsize=10,
            color=CLASS_COLOURS[row["label_state"]],
        )
    return fig


def fig_positive_examples(pixels: Pixels, meta: pd.DataFrame, rows: list[int]) -> Figure | None:
    """Three panels per positive image: mask overlay + region boxes, CLAHE, raw."""
    if not rows:
        return None
    fig = new_figure(11.0, 3.75 * len(rows))
    axes = np.atleast_2d(fig.subplots(len(rows), 3))
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    for k, (row, (ax_mask, ax_clahe, ax_raw)) in enumerate(zip(rows, axes, strict=True)):
        image, mask = pixels.images[row], pixels.masks[row]
        ax_mask.imshow(image, cmap="gray", vmin=0, vmax=255)
        overlay_mask(ax_mask, mask, CLASS_COLOURS[PNEUMOTHORAX], linewidth=1)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        for x, y, w, h, _area in stats[1:]:
            ax_mask.add_patch(
                Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=BOX_COLOUR, lw=1.5)
            )
        frac = meta.iloc[row]["mask_fraction"]
        ax_mask.set_title(
            f"positive {k + 1}: {n - 1} region{'s' if n != 2 else ''}, "
            f"{100 * float(frac):.2f}% of the image",
            fontsize=10,
        )
        ax_clahe.imshow(clahe.apply(image), cmap="gray", vmin=0, vmax=255)
        ax_clahe.set_title("CLAHE", fontsize=10)
        ax_raw.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax_raw.set_title("raw", fontsize=10)
        for ax in (ax_mask, ax_clahe, ax_raw):
            ax.set_axis_off()
    return fig


def fig_class_balance(meta: pd.DataFrame) -> Figure | None:
    classes = present_classes(meta)
    if not classes:
        return None
    counts = meta["label_state"].value_counts()
    values = [int(counts[c]) for c in classes]
    colours = [CLASS_COLOURS[c] for c in classes]
    fig = new_figure(11.0, 3.4)
    ax_bar, ax_pie = fig.subplots(1, 2, width_ratios=(1.6, 1))
    bars = ax_bar.barh(classes, values, color=colours)
    _label_bars(ax_bar, bars, [f"{v} ({pct(v, sum(values))})" for v in values])
    ax_bar.invert_yaxis()
    ax_bar.set_xlabel("images")
    ax_bar.set_xlim(0, max(values) * 1.25)
    _counts_axis(ax_bar, "x")
    ax_pie.pie(
        values,
        colors=colours,
        autopct=_pie_percent,
        startangle=90,
        counterclock=False,
        wedgeprops={"edgecolor": "white"},
        textprops={"fontsize": 10},
    )
    ax_pie.set_title("share of all images", fontsize=11)
    return fig


def fig_regions_per_image(meta: pd.DataFrame) -> Figure | None:
    pos = meta.loc[meta["label_state"] == PNEUMOTHORAX, "n_regions"].astype(int)
    if pos.empty:
        return None
    counts = pos.value_counts().sort_index()
    fig = new_figure(8.0, 3.4)
    ax = fig.subplots()
    bars = ax.bar(counts.index, counts.values, color=CLASS_COLOURS[PNEUMOTHORAX], width=0.7)
    _label_bars(ax, bars, [str(v) for v in counts.values])
    ax.set_xticks(range(1, int(counts.index.max()) + 1))
    ax.set_xlabel("annotated regions in the image")
    ax.set_ylabel("positive images")
    ax.set_ylim(0, counts.max() * 1.18)
    _counts_axis(ax)
    return fig


def fig_age(meta: pd.DataFrame) -> Figure | None:
    valid = meta.dropna(subset=["age"])
    classes = present_classes(valid)
    if not classes:
        return None
    # Ages of 90 and over are one group, stored as 90 (data.dicom.AGE_TOP_CODE); a dataset
    # converted before that may hold older ages: they join the group here too.
    capped = valid["age"].astype(float).clip(upper=AGE_TOP_CODE)
    ages = [capped[valid["label_state"] == c].to_numpy() for c in classes]
    colours = [CLASS_COLOURS[c] for c in classes]
    bins = np.arange(0, AGE_TOP_CODE + AGE_BAND + 1, AGE_BAND)  # the last band is "90+"
    ticks = [*range(0, AGE_TOP_CODE, 10), AGE_TOP_CODE + AGE_BAND / 2]
    tick_labels = [*map(str, range(0, AGE_TOP_CODE, 10)), f"{AGE_TOP_CODE}+"]
    fig = new_figure(11.0, 3.6)
    ax_count, ax_density = fig.subplots(1, 2)
    ax_count.hist(
        ages,
        bins=bins,
        stacked=True,
        color=colours,
        label=classes,
        edgecolor="white",
        linewidth=0.5,
    )
    ax_count.set_xlabel("age (years)")
    ax_count.set_xticks(ticks, tick_labels)
    ax_count.set_ylabel("images")
    ax_count.legend(frameon=False)
    shaped = [i for i, v in enumerate(ages) if len(v) >= MIN_SHAPE_N] or range(len(ages))
    for i in shaped:
        ax_density.hist(
            ages[i],
            bins=bins,
            weights=np.full(len(ages[i]), 100 / len(ages[i])),
            histtype="step",
            color=colours[i],
            linewidth=2,
            label=f"{classes[i]} (n={len(ages[i])})",
        )
    ax_density.set_xlabel("age (years)")
    ax_density.set_xticks(ticks, tick_labels)
    ax_density.set_ylabel(f"% of the class per {AGE_BAND} years")
    ax_density.legend(frameon=False)
    _counts_axis(ax_count)
    ax_density.spines[["top", "right"]].set_visible(False)
    return fig


def fig_sex(meta: pd.DataFrame) -> Figure | None:
    counts = _counts_by_class(meta, "sex", sex_of)
    if counts is None:
        return None
    order = [s for s in SEX_COLOURS if s in counts.index]
    classes = list(counts.columns)
    table = counts.T[order]
    fig = new_figure(12.0, 3.8)
    axes = fig.subplots(1, 1 + len(classes), width_ratios=(2.2, *[1] * len(classes)))
    ax_bar, pies = axes[0], axes[1:]
    share = table.div(table.sum(axis=1), axis=0) * 100
    left = np.zeros(len(classes))
    for sex in order:
        bars = ax_bar.barh(
            classes, share[sex], left=left, color=SEX_COLOURS[sex], label=sex, edgecolor="white"
        )
        labels = [
            str(int(n)) if p >= 8 else "" for n, p in zip(table[sex], share[sex], strict=True)
        ]
        ax_bar.bar_label(bars, labels=labels, label_type="center", fontsize=9)
        left += share[sex].to_numpy()
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 100)
    ax_bar.set_xlabel("% of the class")
    ax_bar.legend(ncols=len(order), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    for tick, cls in zip(ax_bar.get_yticklabels(), classes, strict=True):
        tick.set_color(CLASS_COLOURS[cls])
    for ax, cls in zip(pies, classes, strict=True):
        values = table.loc[cls]
        values = values[values > 0]
        ax.pie(
            values,
            colors=[SEX_COLOURS[s] for s in values.index],
            labels=list(values.index),
            autopct=_pie_percent,
            startangle=90,
            counterclock=False,
            wedgeprops={"edgecolor": "white"},
            textprops={"fontsize": 9},
        )
        ax.set_title(f"{cls}\n(n={int(values.sum())})", fontsize=10, color=CLASS_COLOURS[cls])
    return fig


def fig_view_position(meta: pd.DataFrame) -> Figure | None:
    counts = _counts_by_class(meta, "view_position", view_of)
    if counts is None:
        return None
    classes = list(counts.columns)
    table = counts.loc[counts.sum(axis=1).sort_values(ascending=False).index]
    fig = new_figure(11.0, 3.6)
    ax_count, ax_rate = fig.subplots(1, 2, width_ratios=(1.6, 1))
    x = np.arange(len(table))
    width = 0.8 / len(classes)
    for i, cls in enumerate(classes):
        bars = ax_count.bar(
            x + (i - (len(classes) - 1) / 2) * width,
            table[cls],
            width,
            color=CLASS_COLOURS[cls],
            label=cls,
        )
        _label_bars(ax_count, bars, [str(int(v)) for v in table[cls]])
    ax_count.set_xticks(x, [plain(v) for v in table.index])
    ax_count.set_ylabel("images")
    ax_count.set_ylim(0, table.to_numpy().max() * 1.18)
    ax_count.legend(frameon=False, ncols=len(classes), loc="lower center", bbox_to_anchor=(0.5, 1))
    pos = table.get(PNEUMOTHORAX, pd.Series(0, index=table.index))
    neg = table.get(NO_PNEUMOTHORAX, pd.Series(0, index=table.index))
    labelled = pos + neg
    rate = (100 * pos / labelled.where(labelled > 0)).fillna(0)
    bars = ax_rate.bar(x, rate, color=CLASS_COLOURS[PNEUMOTHORAX], width=0.6)
    _label_bars(
        ax_rate, bars, [f"{r:.1f}% of {int(n)}" for r, n in zip(rate, labelled, strict=True)]
    )
    ax_rate.set_xticks(x, [plain(v) for v in table.index])
    ax_rate.set_ylabel("% of labelled with pneumothorax")
    ax_rate.set_ylim(0, min(max(float(rate.max()), 1.0) * 1.25, 115))
    _counts_axis(ax_count)
    ax_rate.spines[["top", "right"]].set_visible(False)
    return fig


def fig_mask_area(meta: pd.DataFrame) -> Figure | None:
    frac = meta.loc[meta["label_state"] == PNEUMOTHORAX, "mask_fraction"].astype(float) * 100
    frac = frac[frac > 0].to_numpy()
    if len(frac) == 0:
        return None
    colour = CLASS_COLOURS[PNEUMOTHORAX]
    fig = new_figure(11.0, 3.6)
    ax_hist, ax_cdf = fig.subplots(1, 2)
    low, high = frac.min(), frac.max()
    bins = (
        np.geomspace(low * 0.9, high * 1.1, 25) if high > low else np.array([low * 0.9, high * 1.1])
    )
    ax_hist.hist(frac, bins=bins, color=colour, edgecolor="white", linewidth=0.5)
    ax_hist.axvline(
        np.median(frac),
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"median {np.median(frac):.2f}%",
    )
    _percent_log_axis(ax_hist, bins[0], bins[-1])
    ax_hist.set_xlabel("mask area (% of the image)")
    ax_hist.set_ylabel("positive images")
    ax_hist.legend(frameon=False)
    ordered = np.sort(frac)
    ax_cdf.step(
        ordered,
        np.arange(1, len(ordered) + 1) / len(ordered) * 100,
        where="post",
        color=colour,
        linewidth=2,
    )
    _percent_log_axis(ax_cdf, bins[0], bins[-1])
    ax_cdf.set_xlabel("mask area (% of the image)")
    ax_cdf.set_ylabel("% of positive images with area <= x")
    ax_cdf.set_ylim(0, 102)
    _counts_axis(ax_hist)
    ax_cdf.spines[["top", "right"]].set_visible(False)
    return fig


def fig_heatmap(pixels: Pixels) -> Figure | None:
    if pixels.n_positive == 0:
        return None
    heat = 100 * pixels.mask_sum / pixels.n_positive
    mean_image = pixels.image_sum / max(pixels.n_images, 1)
    fig = new_figure(11.0, 5.0)
    ax_heat, ax_mean = fig.subplots(1, 2)
    shown = ax_heat.imshow(heat, cmap="magma", vmin=0, vmax=max(float(heat.max()), 1e-6))
    fig.colorbar(shown, ax=ax_heat, label="% of positive images", shrink=0.9)
    ax_heat.set_title("mean of the positive masks", fontsize=11)
    ax_mean.imshow(mean_image, cmap="gray")
    # The same colours, opaque where regions are frequent and clear where there are none,
    # so the anatomy shows through (contour lines of a per-pixel mean are too ragged).
    # Opacity grows linearly: the map's dark low end would otherwise draw dark fringes.
    unit = heat / max(float(heat.max()), 1e-6)
    overlay = shown.cmap(unit)
    overlay[..., 3] = 0.9 * unit
    ax_mean.imshow(overlay)
    ax_mean.set_title("over the mean radiograph", fontsize=11)
    for ax in (ax_heat, ax_mean):
        ax.set_axis_off()
    return fig


def fig_errors(errors: pd.DataFrame | None) -> Figure | None:
    if errors is None or errors.empty:
        return None
    grouped = errors.groupby(["stage", "short"]).size().sort_values(ascending=False)
    shown = grouped.iloc[:MAX_ERROR_REASONS]
    labels = [plain(textwrap.shorten(f"{s}: {r}", 70, placeholder=" …")) for s, r in shown.index]
    colours = [STAGE_COLOURS.get(s, "#777777") for s, _ in shown.index]
    values = list(shown.to_numpy())
    if len(grouped) > len(shown):
        labels.append(f"{len(grouped) - len(shown)} other reasons")
        colours.append("#777777")
        values.append(int(grouped.iloc[MAX_ERROR_REASONS:].sum()))
    fig = new_figure(11.0, 1.2 + 0.38 * len(values))
    ax = fig.subplots()
    bars = ax.barh(range(len(values)), values, color=colours)
    ax.set_yticks(range(len(values)), labels, fontsize=9)
    ax.invert_yaxis()
    _label_bars(ax, bars, [str(int(v)) for v in values])
    ax.set_xlim(0, max(values) * 1.15)
    ax.set_xlabel("rows of errors.csv")
    _counts_axis(ax, "x")
    return fig


def fig_folds(meta: pd.DataFrame) -> Figure | None:
    classes = present_classes(meta)
    if not classes:
        return None
    table = pd.crosstab(meta["fold"], meta["label_state"]).reindex(columns=classes).fillna(0)
    patients = patient_keys(meta).groupby(meta["fold"]).nunique().reindex(table.index)
    folds = [str(int(f)) for f in table.index]
    fig = new_figure(11.0, 3.6)
    ax_images, ax_patients = fig.subplots(1, 2)
    bottom = np.zeros(len(table))
    tallest = float(table.sum(axis=1).max())
    for cls in classes:
        bars = ax_images.bar(folds, table[cls], bottom=bottom, color=CLASS_COLOURS[cls], label=cls)
        # A count only where the segment is tall enough to hold its digits.
        labels = [str(int(v)) if v >= 0.06 * tallest else "" for v in table[cls]]
        ax_images.bar_label(bars, labels=labels, label_type="center", fontsize=9, color="white")
        bottom += table[cls].to_numpy()
    ax_images.set_xlabel("fold")
    ax_images.set_ylabel("images")
    ax_images.legend(
        frameon=False, ncols=len(classes), loc="lower center", bbox_to_anchor=(0.5, 1.0)
    )
    bars = ax_patients.bar(folds, patients, color="#555555", width=0.6)
    _label_bars(ax_patients, bars, [str(int(v)) for v in patients])
    ax_patients.set_xlabel("fold")
    ax_patients.set_ylabel("patients")
    ax_patients.set_ylim(0, float(patients.max()) * 1.18)
    _counts_axis(ax_images)
    _counts_axis(ax_patients)
    return fig
