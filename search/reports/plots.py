"""The search report's figures: a :class:`search.results.SearchSummary` in, figures out.

Pure functions: no file is read here (the predictions figure takes arrays). Each
``fig_*`` returns a ``matplotlib.figure.Figure`` built with
:func:`pneumotune.reports.figures.new_figure`, or ``None`` when there is nothing to draw,
so that the page says so in text instead of showing an empty axis. Trial outcomes have
one colour each in every figure (:data:`OUTCOME_COLOURS`, Okabe-Ito); the tutorial's
trial is always black and dashed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pneumotune.reports.figures import CLASS_COLOURS, PNEUMOTHORAX, new_figure, overlay_mask
from pneumotune.search.config import ParamSpec
from pneumotune.search.results import SearchSummary, TrialRecord

OUTCOME_COLOURS: dict[str, str] = {
    "completed": "#0072B2",  # blue
    "stopped by ASHA": "#E69F00",  # orange
    "failed": "#D55E00",  # vermillion
    "running": "#009E73",  # green
    "paused": "#56B4E9",  # sky blue: promotion ASHA's, waiting at a rung
    "pending": "#999999",  # grey
}
OUTCOME_MARKERS: dict[str, str] = {
    "stopped by ASHA": "x",
    "failed": "X",
    "running": "o",
    "paused": "o",
}
TUTORIAL_COLOUR = "#000000"
BEST_COLOUR = "#CC79A7"  # reddish purple: the best trial's star and line
PREDICTION_COLOUR = "#0072B2"
TRUTH_COLOUR = CLASS_COLOURS[PNEUMOTHORAX]
ABSENT = -0.14  # parallel-coordinates position of a parameter a trial did not sample
# Axis labels stay readable where trial lines cross them.
_LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.6}


def _frame(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.25, linewidth=0.6)


def _epochs_axis(ax: Any, max_t: int) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.8, max(max_t, 2) + 0.2)


def metric_series(t: TrialRecord, key: str) -> tuple[list[int], list[float]]:
    """Epochs (1-based) and finite values of ``key`` in ``t``'s history."""
    xs, ys = [], []
    for i, row in enumerate(t.history):
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            xs.append(int(row.get("training_iteration", i + 1)))
            ys.append(float(value))
    return xs, ys


def _trial_line(
    t: TrialRecord, best: TrialRecord | None, widths: tuple[float, float], alpha: float
) -> dict[str, Any]:
    """The style of ``t``'s line, the same rule in every plot so that a reader finds the
    tutorial's trial and the best one alike in each: the tutorial dashed, both drawn
    thick (``widths``: thin, thick), opaque and over the others, which are ``alpha``."""
    emphasis = t.is_tutorial or t is best
    return {
        "linestyle": "--" if t.is_tutorial else "-",
        "linewidth": widths[1] if emphasis else widths[0],
        "alpha": 1.0 if emphasis else alpha,
        "zorder": 3 if emphasis else 2,
    }


# --------------------------------------------------------------------------- per-epoch curves
def fig_curves(summary: SearchSummary) -> Figure | None:
    """The metric per epoch of every trial, coloured by outcome, with its end marked.

    An ASHA stop is an ``x`` at the last epoch the trial ran, a failure an ``X``, a
    running trial an open circle; the tutorial's trial is black and dashed, the best
    trial's best epoch a star.
    """
    series = [(t, *metric_series(t, summary.metric)) for t in summary.trials]
    series = [(t, xs, ys) for t, xs, ys in series if xs]
    if not series:
        return None
    best = summary.best
    fig = new_figure(11.0, 4.6)
    ax = fig.subplots()
    # Ordinary trials first, so that the tutorial and the best trial are drawn on top.
    series.sort(key=lambda s: (s[0].is_tutorial, s[0] is best))
    for t, xs, ys in series:
        colour = TUTORIAL_COLOUR if t.is_tutorial else OUTCOME_COLOURS.get(_kind(t), "#999999")
        style = _trial_line(t, best, widths=(1.2, 2.4), alpha=0.75)
        ax.plot(xs, ys, color=colour, marker=".", markersize=5, **style)
        marker = OUTCOME_MARKERS.get(_kind(t))
        if marker:
            ax.plot(
                xs[-1],
                ys[-1],
                marker=marker,
                markersize=9 if marker != "o" else 7,
                markerfacecolor="none" if marker == "o" else OUTCOME_COLOURS[_kind(t)],
                markeredgecolor=OUTCOME_COLOURS[_kind(t)],
                markeredgewidth=2,
                linestyle="none",
                zorder=4,
            )
    if best is not None:
        value, epoch = best.best(summary.metric, summary.mode)
        ax.plot(
            epoch,
            value,
            marker="*",
            markersize=17,
            color=BEST_COLOUR,
            zorder=5,
            markeredgecolor="white",
            linestyle="none",
        )
    _epochs_axis(ax, summary.max_t)
    ax.set_ylabel(f"{summary.metric} (validation)")
    _frame(ax)
    ax.legend(
        handles=_outcome_legend(summary),
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize=9,
    )
    return fig


def _kind(t: TrialRecord) -> str:
    """The outcome a trial is drawn as: every failure ("killed: out of memory" too) is
    "failed" (its own outcome is in the tables)."""
    return "failed" if t.failed else t.outcome


def _legend_key(label: str, colour: str, **style: Any) -> Line2D:
    """A legend entry drawn like the plot's lines but holding no data: the legend lists
    every outcome once, not every trial's line."""
    return Line2D([], [], color=colour, label=label, **style)


def _outcome_legend(summary: SearchSummary) -> list[Line2D]:
    present = {_kind(t) for t in summary.trials if t.history}
    handles = []
    for outcome, colour in OUTCOME_COLOURS.items():
        if outcome not in present:
            continue
        marker = OUTCOME_MARKERS.get(outcome, ".")
        label = {
            "stopped by ASHA": "stopped by ASHA (x: last epoch run)",
            "failed": "failed (X: last epoch reported)",
            "running": "running (o: latest epoch)",
            "paused": "paused at a rung (o: latest epoch)",
        }.get(outcome, outcome)
        fill = "none" if marker == "o" else colour
        handles.append(_legend_key(label, colour, marker=marker, markerfacecolor=fill))
    if summary.tutorial is not None:
        handles.append(
            _legend_key("the tutorial's settings", TUTORIAL_COLOUR, linestyle="--", linewidth=2.4)
        )
    if summary.best is not None:
        handles.append(
            _legend_key(
                "best trial's best epoch", BEST_COLOUR, marker="*", markersize=13, linestyle="none"
            )
        )
    return handles


# --------------------------------------------------------------------------- best so far
@dataclass(frozen=True)
class EpochEvent:
    """One reported epoch of one trial, in the order the epochs finished."""

    trial: TrialRecord
    epoch: int
    value: float
    finished_at: float  # seconds (epoch time), for ordering only


def epoch_events(summary: SearchSummary) -> list[EpochEvent]:
    """Every scored epoch of every trial, ordered by when it was reported.

    Tune's ``timestamp`` has one-second resolution; the trial's start (its first row's
    timestamp minus its ``time_total_s``) plus ``time_total_s`` orders epochs of
    concurrent trials within that second.
    """
    events = []
    for order, t in enumerate(summary.trials):
        rows = [r for r in t.history if isinstance(r.get(summary.metric), int | float)]
        if not rows:
            continue
        first = rows[0]
        start = float(first.get("timestamp", 0)) - float(first.get("time_total_s", 0.0))
        for i, row in enumerate(rows):
            value = float(row[summary.metric])
            if not math.isfinite(value):
                continue
            total = row.get("time_total_s")
            at = start + float(total) if total is not None else float(row.get("timestamp", 0))
            # Ties (no timing at all) keep trial order, then epoch order.
            events.append(
                (at, order, i, EpochEvent(t, int(row.get("training_iteration", i + 1)), value, at))
            )
    events.sort(key=lambda e: e[:3])
    return [e[3] for e in events]


def fig_best_so_far(summary: SearchSummary) -> Figure | None:
    """Best metric so far against trial-epochs spent, with the tutorial's best as a line."""
    events = epoch_events(summary)
    if not events:
        return None
    sign = 1.0 if summary.mode == "max" else -1.0
    xs = np.arange(1, len(events) + 1)
    values = np.array([e.value for e in events])
    best = np.maximum.accumulate(sign * values) * sign
    fig = new_figure(11.0, 4.2)
    ax = fig.subplots()
    colours = [OUTCOME_COLOURS.get(_kind(e.trial), "#999999") for e in events]
    ax.scatter(
        xs,
        values,
        s=24,
        c=colours,
        alpha=0.8,
        linewidths=0,
        zorder=2,
        label="each epoch's value (colour: its trial's outcome)",
    )
    ax.step(xs, best, where="post", color=BEST_COLOUR, linewidth=2.4, zorder=3, label="best so far")
    improved = np.flatnonzero(np.r_[True, best[1:] != best[:-1]])
    ax.plot(xs[improved], best[improved], "o", color=BEST_COLOUR, markersize=5, zorder=4)
    tutorial = summary.tutorial
    if tutorial is not None:
        value = tutorial.best(summary.metric, summary.mode)[0]
        if value is not None:
            ax.axhline(
                value,
                color=TUTORIAL_COLOUR,
                linestyle="--",
                linewidth=1.4,
                label=f"the tutorial's best ({value:.4f})",
            )
    ax.set_xlabel("trial-epochs spent (all trials, in the order the epochs finished)")
    ax.set_ylabel(f"{summary.metric} (validation)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, len(events) + 0.5)
    _frame(ax)
    ax.legend(frameon=False, fontsize=9, loc="best")
    return fig


# --------------------------------------------------------------------------- parallel coords
@dataclass(frozen=True)
class ParamAxis:
    """One vertical axis: where a value sits in [0, 1] and the ticks to label."""

    name: str
    kind: str  # categorical | linear | log
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 1.0

    def position(self, value: Any) -> float:
        if self.kind == "categorical":
            if value not in self.choices:
                return math.nan
            k = len(self.choices)
            return 0.5 if k == 1 else self.choices.index(value) / (k - 1)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return math.nan
        if self.kind == "log":
            lo, hi, v = math.log10(self.low), math.log10(self.high), math.log10(max(value, 1e-300))
        else:
            lo, hi, v = self.low, self.high, float(value)
        return 0.5 if hi == lo else (v - lo) / (hi - lo)

    def ticks(self) -> list[tuple[float, str]]:
        if self.kind == "categorical":
            return [(self.position(c), str(c)) for c in self.choices]
        if self.kind == "log":
            mid = math.sqrt(self.low * self.high)
        else:
            mid = (self.low + self.high) / 2
        values = [self.low, mid, self.high] if self.high != self.low else [self.low]
        return [(self.position(v), f"{v:.3g}") for v in values]


def param_axis(name: str, values: list[Any], spec: ParamSpec | None) -> ParamAxis:
    """The axis of ``name``: the spec's range or choices, else the range of ``values``."""
    numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if spec is not None and spec.choices is not None:
        # "stored" (img_size) stands for the dataset's sizes: the values used show them.
        choices = [c for c in spec.choices if c != "stored"]
        extra = [v for v in dict.fromkeys(values) if v not in choices]
        return ParamAxis(name, "categorical", tuple(_sorted_values([*choices, *extra])))
    if spec is not None and spec.low is not None and spec.high is not None:
        low = min([float(spec.low), *numeric])
        high = max([float(spec.high), *numeric])
        return ParamAxis(name, "log" if spec.log else "linear", low=low, high=high)
    distinct = _sorted_values(list(dict.fromkeys(values)))
    if len(numeric) != len(values) or (len(distinct) <= 3 and len(values) > len(distinct)):
        return ParamAxis(name, "categorical", tuple(distinct))
    low, high = min(numeric), max(numeric)
    log = low > 0 and high / low >= 20
    return ParamAxis(name, "log" if log else "linear", low=float(low), high=float(high))


def _sorted_values(values: list[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def fig_parallel(summary: SearchSummary, specs: dict[str, ParamSpec]) -> Figure | None:
    """Parallel coordinates of the searched parameters, one line per trial, coloured by score.

    Categorical parameters sit at evenly spaced positions, log-ranged ones on a log
    scale; a trial that did not sample a conditional parameter passes through "n/a"
    below that axis. Trials without a score are grey dotted lines.
    """
    params = [p for p in summary.searched if any(p in t.config for t in summary.trials)]
    if not params or not summary.trials:
        return None
    axes = [
        param_axis(p, [t.config[p] for t in summary.trials if p in t.config], specs.get(p))
        for p in params
    ]
    scores = {id(t): t.best(summary.metric, summary.mode)[0] for t in summary.trials}
    scored = [s for s in scores.values() if s is not None]
    low, high = (min(scored), max(scored)) if scored else (0.0, 1.0)
    if high == low:
        low, high = low - 0.5, high + 0.5
    norm = Normalize(low, high)
    cmap = colormaps["viridis" if summary.mode == "max" else "viridis_r"]
    n = len(axes) + 1  # the last axis is the score
    # Capped width: a page shows the PNG at ~12 inches; wider would only shrink the labels.
    fig = new_figure(min(13.0, max(9.0, 0.8 * n + 2.5)), 5.2)
    ax = fig.subplots()
    best = summary.best
    order = sorted(summary.trials, key=lambda t: (t is best, t.is_tutorial))
    for t in order:
        ys = [a.position(t.config[a.name]) if a.name in t.config else ABSENT for a in axes]
        score = scores[id(t)]
        ys.append(norm(score) if score is not None else math.nan)
        if score is None:
            ax.plot(range(n - 1), ys[:-1], color="#999999", linestyle=":", linewidth=1.2)
            continue
        style = _trial_line(t, best, widths=(1.4, 3.0), alpha=0.8)
        ax.plot(range(n), ys, color=cmap(norm(score)), marker="o", markersize=3, **style)
    for i, a in enumerate(axes):
        ax.axvline(i, color="#555555", linewidth=0.8, zorder=1)
        for pos, label in a.ticks():
            ax.text(i + 0.04, pos, label, fontsize=8, va="center", color="#333333", bbox=_LABEL_BOX)
        if any(a.name not in t.config for t in summary.trials):
            ax.text(i + 0.04, ABSENT, "n/a", fontsize=8, va="center", color="#777777")
    ax.axvline(n - 1, color="#555555", linewidth=0.8, zorder=1)
    for v in np.linspace(low, high, 3) if scored else []:
        ax.text(
            n - 1 + 0.04,
            norm(v),
            f"{v:.3g}",
            fontsize=8,
            va="center",
            color="#333333",
            bbox=_LABEL_BOX,
        )
    names = [f"{a.name}\n(log)" if a.kind == "log" else a.name for a in axes]
    ax.set_xticks(
        range(n),
        [*names, f"best\n{summary.metric}"],
        rotation=35,
        ha="right",
        rotation_mode="anchor",
        fontsize=9,
    )
    ax.set_xlim(-0.15, n - 1 + 0.45)
    ax.set_ylim(ABSENT - 0.08, 1.06)
    ax.set_yticks([])
    ax.spines[["top", "right", "left", "bottom"]].set_visible(False)
    fig.colorbar(
        ScalarMappable(norm, cmap),
        ax=ax,
        label=f"trial's best {summary.metric}",
        fraction=0.025,
        pad=0.01,
    )
    return fig


# --------------------------------------------------------------------------- importance
def fig_importance(values: dict[str, float]) -> Figure | None:
    """Horizontal bars of each parameter's share of the importance, largest on top."""
    if not values:
        return None
    names = sorted(values, key=values.get)  # type: ignore[arg-type]
    fig = new_figure(9.0, 0.9 + 0.38 * len(names))
    ax = fig.subplots()
    bars = ax.barh(names, [values[n] for n in names], color="#0072B2")
    ax.bar_label(bars, labels=[f"{values[n]:.3f}" for n in names], padding=3, fontsize=9)
    ax.set_xlabel("share of the importance (sums to 1)")
    ax.set_xlim(0, max(max(values.values()) * 1.18, 0.05))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# --------------------------------------------------------------------------- best vs tutorial
def fig_best_vs_tutorial(summary: SearchSummary) -> Figure | None:
    """The best trial's and the tutorial trial's curves: the metric, and the losses."""
    pairs = [
        (t, label)
        for t, label in ((summary.tutorial, "tutorial's settings"), (summary.best, "best trial"))
        if t is not None
    ]
    if len(pairs) == 2 and pairs[0][0] is pairs[1][0]:
        pairs = [(pairs[0][0], "tutorial's settings = best trial")]
    pairs = [(t, label) for t, label in pairs if metric_series(t, summary.metric)[0]]
    if not pairs:
        return None
    has_loss = any(metric_series(t, key)[0] for t, _ in pairs for key in ("loss", "val_loss"))
    fig = new_figure(11.0 if has_loss else 7.5, 3.8)
    axes = fig.subplots(1, 2) if has_loss else [fig.subplots()]
    for t, label in pairs:
        colour = TUTORIAL_COLOUR if t.is_tutorial else BEST_COLOUR
        xs, ys = metric_series(t, summary.metric)
        axes[0].plot(
            xs,
            ys,
            marker="o",
            color=colour,
            linewidth=2,
            linestyle="--" if t.is_tutorial else "-",
            label=f"{label} (trial {t.trial_id}, {t.outcome})",
        )
        if has_loss:
            for key, style in (("loss", ":"), ("val_loss", "-")):
                lx, ly = metric_series(t, key)
                if lx:
                    axes[1].plot(
                        lx, ly, marker=".", color=colour, linestyle=style, label=f"{label}: {key}"
                    )
    axes[0].set_ylabel(f"{summary.metric} (validation)")
    axes[0].legend(frameon=False, fontsize=9)
    if has_loss:
        axes[1].set_ylabel("loss (dotted: training, solid: validation)")
        axes[1].legend(frameon=False, fontsize=8)
    for ax in axes:
        _epochs_axis(ax, summary.max_t)
        _frame(ax)
    return fig


# --------------------------------------------------------------------------- predictions
@dataclass(frozen=True)
class PredictionSample:
    """One validation image, its truth and the model's binarised prediction (``(S, S)``)."""

    image: np.ndarray  # uint8
    truth: np.ndarray  # 0/1
    prediction: np.ndarray  # 0/1
    title: str
    score_text: str


def _overlay(ax: Any, image: np.ndarray, mask: np.ndarray, colour: str) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    overlay_mask(ax, mask, colour, linewidth=1.2, interpolation="nearest")


def fig_predictions(samples: Sequence[PredictionSample], per_row: int = 2) -> Figure | None:
    """Image, truth overlay and prediction overlay for each sample, ``per_row`` samples a row."""
    if not samples:
        return None
    per_row = max(1, min(per_row, len(samples)))
    rows = math.ceil(len(samples) / per_row)
    # A narrow empty column between samples, so that each triple reads as one.
    ratios = [1.0, 1.0, 1.0, *([0.12, 1.0, 1.0, 1.0] * (per_row - 1))]
    fig = new_figure(2.45 * 3 * per_row + 0.3 * (per_row - 1), 2.75 * rows)
    grid = np.atleast_2d(fig.subplots(rows, len(ratios), width_ratios=ratios))
    for spacer in range(3, len(ratios), 4):
        for ax in grid[:, spacer]:
            ax.remove()
    axes = np.delete(grid, list(range(3, len(ratios), 4)), axis=1)
    for k in range(rows * per_row):
        row, col = divmod(k, per_row)
        panel = axes[row, 3 * col : 3 * col + 3]
        if k >= len(samples):
            for ax in panel:
                ax.remove()
            continue
        s = samples[k]
        panel[0].imshow(s.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        panel[0].set_title(s.title, fontsize=9)
        _overlay(panel[1], s.image, s.truth, TRUTH_COLOUR)
        panel[1].set_title(
            "truth" + ("" if s.truth.any() else " (empty)"), fontsize=9, color=TRUTH_COLOUR
        )
        _overlay(panel[2], s.image, s.prediction, PREDICTION_COLOUR)
        empty = "" if s.prediction.any() else " (empty)"
        panel[2].set_title(
            f"prediction{empty}\n{s.score_text}", fontsize=9, color=PREDICTION_COLOUR
        )
        for ax in panel:
            ax.set_axis_off()
    return fig
