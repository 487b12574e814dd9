"""The search report: one offline HTML page and its PNGs (``pneumotune report RESULTS_DIR``).

Reads what a search wrote (``pneumotune.json``, Tune's trial folders and checkpoints,
via :func:`search.results.summarise`), the experiment YAML when it is still there (for
the searched ranges), and, for the prediction examples, the dataset's validation fold.
Works on a running search too: it shows what exists so far. Figures are drawn by
:mod:`.plots`, importances computed by :mod:`.importance`, and the
page assembled by :mod:`pneumotune.reports.page` (the same page model as the EDA report).

Privacy: results hold no patient data, but failure messages could quote a file, and
the prediction examples come from the dataset. Images are numbered within the page,
never named; failure reasons have every image id and patient pseudonym of the dataset
replaced, and the page text is checked against them before it is written
(:mod:`pneumotune.reports.privacy`, the same guard as the EDA report's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumotune.reports import page, privacy
from pneumotune.reports.page import Section, Table, figure_section, plural
from pneumotune.search.config import ParamSpec
from pneumotune.search.failures import FAILURE_OUTCOMES, memory_advice
from pneumotune.search.reports.importance import Importance, load_specs, param_importances
from pneumotune.search.reports.plots import (
    PredictionSample,
    fig_best_so_far,
    fig_best_vs_tutorial,
    fig_curves,
    fig_importance,
    fig_parallel,
    fig_predictions,
)
from pneumotune.search.results import (
    PAUSED,
    SEARCH_ENDED,
    ResultsError,
    SearchSummary,
    TrialRecord,
    read_plan,
    summarise,
)
from pneumotune.search.watch.table import is_finished

REPORT_DIR = "report"  # default output folder inside the search directory
DEFAULT_SAMPLES = 6  # validation images in the predictions figure
OUTCOME_ORDER = (
    "completed",
    "stopped by ASHA",
    *FAILURE_OUTCOMES,
    SEARCH_ENDED,
    "running",
    PAUSED,
    "pending",
)


@dataclass(frozen=True)
class SearchReportResult(page.WrittenReport):
    """What :func:`report_search` wrote (the page, its PNGs and section keys, and:)."""

    trials: int
    running: bool
    seconds: float

    def describe(self) -> str:
        state = " (the search is still running: what exists so far)" if self.running else ""
        return (
            f"Wrote the search report ({self.trials} trials, {len(self.sections)} sections, "
            f"{len(self.pngs)} figures){state} to {self.html.parent} in {self.seconds:.1f} s.\n"
            f"{self.html}"
        )


def report_search(
    results_dir: Path,
    out_dir: Path | None = None,
    *,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
) -> SearchReportResult:
    """Write the report of the search in ``results_dir`` to ``out_dir``.

    ``out_dir`` defaults to ``<results_dir>/report/``. ``samples`` validation images
    (half positive when the fold has enough) are drawn with
    ``numpy.random.default_rng(seed)`` for the predictions figure. Raises
    ``search.results.ResultsError`` when ``results_dir`` is not a search directory.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    t0 = time.perf_counter()
    root = Path(results_dir)
    summary = summarise(root)
    plan = read_plan(root)
    specs, specs_missing = load_specs(plan)
    forbidden = dataset_identifiers(summary.data_dir)
    sections = [
        overview_section(summary, plan, forbidden),
        trials_section(summary),
        curves_section(summary),
        best_so_far_section(summary),
        parallel_section(summary, specs, specs_missing),
        importance_section(param_importances(summary, specs)),
        best_vs_tutorial_section(summary, plan),
        predictions_section(summary, seed, samples),
    ]
    running = not is_finished(summary)
    intro = _intro(summary, plan, running)
    privacy.check_no_identifiers(
        [*intro, *page.section_text(sections)], forbidden, "search.reports.report"
    )
    out = Path(out_dir) if out_dir is not None else root / REPORT_DIR
    written = page.write_report(out, f"Search report: {summary.name}", intro, sections)
    return SearchReportResult.extending(
        written, trials=len(summary.trials), running=running, seconds=time.perf_counter() - t0
    )


# --------------------------------------------------------------------------- privacy
def dataset_identifiers(data_dir: str | None) -> set[str]:
    """Every image id and patient pseudonym of the dataset (empty if it is not readable),
    as :func:`pneumotune.reports.privacy.identifiers` keeps them (6 characters or more)."""
    from pneumotune.data.dataset import DatasetError, read_meta

    if not data_dir or not Path(data_dir).is_dir():
        return set()
    try:
        meta = read_meta(Path(data_dir))
    except (DatasetError, OSError, ValueError):
        return set()
    return privacy.identifiers(meta["image_id"], meta["patient_id"])


# --------------------------------------------------------------------------- helpers
def fmt(value: Any) -> str:
    """A config value for a table cell: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _best_text(t: TrialRecord, summary: SearchSummary, short: bool = True) -> str:
    """``"0.4123 @3"`` in tables of many trials, ``"0.4123 at epoch 3"`` elsewhere."""
    value, epoch = t.best(summary.metric, summary.mode)
    if value is None:
        return "-"
    # A no-break space: the cell never wraps between the value and its epoch.
    return f"{value:.4f}\u00a0@{epoch}" if short else f"{value:.4f} at epoch {epoch}"


def _intro(summary: SearchSummary, plan: dict[str, Any], running: bool) -> list[str]:
    counts = summary.counts()
    lines = [
        f"{plural(len(summary.trials), 'trial')} of up to {summary.max_t} epochs, scored on "
        f"{summary.metric} ({'higher' if summary.mode == 'max' else 'lower'} is better) on "
        f"each trial's validation fold. Written {time.strftime('%Y-%m-%d %H:%M')} from the "
        f"search folder {summary.path.resolve().name}.",
    ]
    if running:
        to_start = max(0, int(plan.get("num_samples") or 0) - len(summary.trials))
        to_start += counts.get("pending", 0)
        # Promotion ASHA's paused trials wait at a rung and may resume.
        paused = f"{counts[PAUSED]} paused at a rung, " if counts.get(PAUSED) else ""
        lines.append(
            f"The search is still running ({counts.get('running', 0)} trials running, "
            f"{paused}{to_start} still to start): this page shows what exists so far; run "
            "`pneumotune report` again for a newer one."
        )
    lines.append("No patient identifiers: validation images are numbered within this page only.")
    return lines


# --------------------------------------------------------------------------- sections
def overview_section(summary: SearchSummary, plan: dict[str, Any], forbidden: set[str]) -> Section:
    counts = summary.counts()
    rows: list[tuple[str, object]] = [
        ("experiment", summary.name),
        ("metric", f"{summary.metric} ({'max' if summary.mode == 'max' else 'min'}imised)"),
        ("epochs per trial (ASHA's max_t)", summary.max_t),
        ("trials", len(summary.trials)),
    ]
    rows += [(f"trials {o}", counts[o]) for o in OUTCOME_ORDER if counts.get(o)]
    asked = int(plan.get("num_samples") or len(summary.trials))
    budget = asked * summary.max_t
    rows.append(
        (
            "trial-epochs used",
            f"{summary.trial_epochs} ({100 * summary.trial_epochs / budget:.0f}% of the "
            f"{budget} that {asked} trials x {summary.max_t} epochs take without early "
            "stopping)"
            if budget
            else summary.trial_epochs,
        )
    )
    best, tutorial = summary.best, summary.tutorial
    rows.append(
        (
            "best value",
            f"{_best_text(best, summary, False)} (trial {best.trial_id})" if best else "-",
        )
    )
    rows.append(
        (
            "tutorial's settings",
            f"{_best_text(tutorial, summary, False)} (trial {tutorial.trial_id}, "
            f"{tutorial.outcome})"
            if tutorial
            else "not run in this search",
        )
    )
    gain = summary.gain_over_tutorial()
    rows.append(
        ("gain over the tutorial", f"{gain:+.4f} {summary.metric}" if gain is not None else "-")
    )
    if summary.data_dir:
        rows.append(("dataset folder", Path(summary.data_dir).name))
    # All as text: one left-aligned column reads better than mixed number/text alignment.
    rows = [(k, str(v)) for k, v in rows]
    tables = [Table(("", "value"), rows, caption="the search at a glance")]
    failed = [t for t in summary.trials if t.failed]
    paragraphs = []
    if failed:
        paragraphs.append(
            f"{plural(len(failed), 'trial')} failed after its retries; the reason is the "
            "exception line of the trial's error file, or what Ray knows of a worker it "
            "killed (error.txt in its folder has the rest)."
        )
        memory = [t for t in failed if t.out_of_memory]
        if memory:
            paragraphs.append(
                f"{plural(len(memory), 'trial')} ran out of memory: "
                + "; ".join(
                    f"{t.trial_id} {t.memory_text() or 'reported no memory'}" for t in memory
                )
                + f". To fit, {memory_advice({})}."
            )
        tables.append(
            Table(
                ("trial", "attempts", "epochs reported", "reason"),
                [
                    (
                        t.trial_id,
                        t.num_failures,
                        t.epochs,
                        privacy.hide(t.error or "unknown", forbidden),
                    )
                    for t in failed
                ],
                caption="failed trials",
            )
        )
    else:
        paragraphs.append("No trial failed.")
    return Section("overview", "Overview", paragraphs, tables)


def trials_section(summary: SearchSummary) -> Section:
    params = [p for p in summary.searched if any(p in t.config for t in summary.trials)]
    best = summary.best
    rows = []
    for t in summary.trials:
        mark = " (best)" if t is best else (" (tutorial)" if t.is_tutorial else "")
        rows.append(
            (
                t.trial_id + mark,
                t.outcome,
                t.epochs,
                _best_text(t, summary),
                *(fmt(t.config.get(p)) if p in t.config else "n/a" for p in params),
            )
        )
    marked = [i for i, t in enumerate(summary.trials) if t is best]
    return Section(
        "trials",
        "Trials",
        [
            "Every trial in the order the searcher proposed it (the tutorial's settings "
            "first), with its searched values; n/a: a conditional parameter the trial did "
            "not use. The best trial's row is highlighted."
        ]
        if rows
        else ["No trial has started yet."],
        [
            Table(
                ("trial", "outcome", "epochs", f"best {summary.metric} @epoch", *params),
                rows,
                marked=marked,
            )
        ]
        if rows
        else [],
    )


def curves_section(summary: SearchSummary) -> Section:
    stopped = sum(t.outcome == "stopped by ASHA" for t in summary.trials)
    stops = (
        f"ASHA stopped {plural(stopped, 'trial')} early (x at the last epoch it ran)"
        if stopped
        else "ASHA stopped no trial early"
    )
    tutorial = " Black dashes: the tutorial's settings." if summary.tutorial else ""
    return figure_section(
        "curves",
        f"{summary.metric} per epoch",
        fig_curves(summary),
        "No trial has reported an epoch yet.",
        caption=f"Each trial's {summary.metric} after each epoch, coloured by outcome. "
        f"{stops}; failures end with X, running trials with o.{tutorial} Star: the best "
        "trial's best epoch.",
    )


def best_so_far_section(summary: SearchSummary) -> Section:
    tutorial = (
        " Dashed: the best of the trial with the tutorial's settings."
        if summary.tutorial is not None
        else ""
    )
    return figure_section(
        "best_so_far",
        "Best so far",
        fig_best_so_far(summary),
        "No trial has reported an epoch yet.",
        caption="The best validation score reached so far against the trial-epochs spent by "
        "all trials together (epochs in the order they finished, across concurrent "
        f"trials): how much compute the search needed to get where it is.{tutorial}",
    )


def parallel_section(
    summary: SearchSummary, specs: dict[str, ParamSpec], specs_missing: str
) -> Section:
    paragraphs = []
    if specs_missing:
        paragraphs.append(
            f"Axes span the values the trials used: {specs_missing}, so the searched ranges "
            "are not known."
        )
    return figure_section(
        "parallel",
        "Hyperparameters and scores",
        fig_parallel(summary, specs),
        "No searched parameter to show (nothing was searched, or no trial has started).",
        caption="Parallel coordinates: one line per trial through its value of each searched "
        "parameter (axis ends: the searched range; categorical values evenly spaced; "
        "'(log)' axes are log-scaled), ending at its best score; colour: the best score. "
        "Thick: the best trial; dashed: the tutorial's settings; grey dotted: no score "
        "(failed before its first epoch, or not started).",
        paragraphs=paragraphs,
    )


def importance_section(imp: Importance) -> Section:
    if imp.reason:
        return Section("importance", "Hyperparameter importance", [imp.reason])
    rows = []
    for name, used in imp.used.items():
        value = imp.values.get(name)
        rows.append(
            (name, f"{value:.3f}" if value is not None else "not evaluated", used)
            if used
            else (name, "not sampled by a finished trial", 0)
        )
    rows.sort(key=lambda r: -float(r[1]) if r[1][0].isdigit() else 1.0)
    paragraphs = [
        f"Optuna's importance evaluator, {imp.evaluator}, over the {imp.n_finished} finished "
        "trials (completed or stopped by ASHA; each with the best score it reached). It "
        f"asks how differently each parameter is distributed among the top "
        f"{100 * imp.top_quantile:.0f}% of trials than among all of them; conditional "
        "parameters are judged within the trials that used them. With few trials these "
        "shares are rough: read them as where to look, not as measurements.",
        *imp.notes,
    ]
    return figure_section(
        "importance",
        "Hyperparameter importance",
        fig_importance(imp.values),
        "",
        caption="Each searched parameter's share of the importance (the shares sum to 1).",
        paragraphs=paragraphs,
        tables=[Table(("parameter", "importance", "finished trials using it"), rows)],
    )


def best_vs_tutorial_section(summary: SearchSummary, plan: dict[str, Any]) -> Section:
    best, tutorial = summary.best, summary.tutorial
    paragraphs: list[str] = []
    tables: list[Table] = []
    if best is None:
        paragraphs.append("No trial has a score yet.")
    elif tutorial is None:
        paragraphs.append(
            "This search did not run the tutorial's settings (enqueue_tutorial: false), so "
            "there is nothing to compare the best trial with."
        )
    else:
        gain = summary.gain_over_tutorial()
        if best is tutorial:
            paragraphs.append("The tutorial's settings were the best trial of this search.")
        elif gain is not None:
            paragraphs.append(
                f"The best trial beats the tutorial's settings by {gain:+.4f} {summary.metric}."
            )
        names = [p for p in summary.searched if p in best.config or p in tutorial.config]
        rows: list[tuple[str, str, str, str]] = [
            ("outcome", tutorial.outcome, best.outcome, ""),
            ("epochs", str(tutorial.epochs), str(best.epochs), ""),
            (
                f"best {summary.metric}",
                _best_text(tutorial, summary, False),
                _best_text(best, summary, False),
                "",
            ),
        ]
        for name in names:
            a, b = tutorial.config.get(name), best.config.get(name)
            rows.append(
                (
                    name,
                    fmt(a) if name in tutorial.config else "n/a",
                    fmt(b) if name in best.config else "n/a",
                    "differs" if a != b else "",
                )
            )
        marked = [i for i, r in enumerate(rows) if r[3]]
        tables.append(
            Table(
                (
                    "",
                    f"tutorial (trial {tutorial.trial_id})",
                    f"best (trial {best.trial_id})",
                    "differs",
                ),
                rows,
                caption="searched settings side by side; differing settings are highlighted",
                marked=marked,
            )
        )
    notes = plan.get("tutorial_notes") or []
    if notes and tutorial is not None:
        paragraphs.append(
            "The tutorial's values were moved into this search's space where they were "
            "outside it: " + "; ".join(notes) + "."
        )
    return figure_section(
        "best_vs_tutorial",
        "Best trial vs the tutorial's settings",
        fig_best_vs_tutorial(summary),
        "No curve to draw yet.",
        caption=f"{summary.metric} per epoch (left) and the losses (right) of the two trials.",
        paragraphs=paragraphs,
        tables=tables,
    )


# --------------------------------------------------------------------------- predictions
@dataclass(frozen=True)
class Predictions:
    samples: list[PredictionSample]
    text: str  # what was predicted with, or why nothing was


def best_model_predictions(summary: SearchSummary, seed: int, samples: int) -> Predictions:
    """The best checkpoint's predictions on ``samples`` images of its validation fold
    (:func:`pneumotune.model.inference.sample_predictions`), or why there are none.

    Half the images (rounded up) are positive when the fold has that many; the rest
    negative. Binarised at the trial's ``threshold`` (what its metrics were scored with).
    Here: which checkpoint, loaded only after export's checks, and the figure's words.
    """
    from pneumotune.search.checkpoint import MODEL_FILE

    best = summary.best
    if best is None:
        return Predictions([], "No trial has a score yet, so there is no best model.")
    if samples == 0:
        return Predictions([], "No prediction example was asked for (samples=0).")
    checkpoint = best.best_checkpoint(summary.metric, summary.mode)
    if checkpoint is None:
        return Predictions([], f"The best trial {best.trial_id} has no checkpoint left on disk.")
    if not (checkpoint / MODEL_FILE).is_file():
        return Predictions(
            [],
            f"The best trial's best checkpoint ({checkpoint.name}) holds no {MODEL_FILE}: this "
            "search's trainable saved no Keras model, so there is nothing to predict with.",
        )
    data_dir = Path(summary.data_dir or "")
    if not summary.data_dir or not data_dir.is_dir():
        return Predictions(
            [], f"The search's dataset ({data_dir.name or 'not recorded'}) is not there any more."
        )
    from pneumotune.data.dataset import DatasetError, load_fold, read_manifest
    from pneumotune.model.inference import sample_predictions
    from pneumotune.search.checkpoint import load_checkpoint_model, trial_config
    from pneumotune.search.products.export_best import labelled_images

    # The folder may be someone else's: the checkpoint must lie in it and match its
    # trial (export's checks), before its config sizes anything read here.
    try:
        labelled = labelled_images(read_manifest(data_dir))
        model = load_checkpoint_model(summary.path, checkpoint, best.config, labelled)
        cfg = trial_config(best.config, checkpoint)
    except (ResultsError, DatasetError) as exc:
        return Predictions([], f"The best checkpoint cannot be shown: {exc}")
    size, fold, threshold = cfg.img_size, cfg.val_fold, cfg.threshold
    val = load_fold(data_dir, size, fold).rows()
    sampled = sample_predictions(model, val, threshold, seed, samples)
    out, counters = [], {True: 0, False: 0}
    for k, positive in enumerate(sampled.positive):
        is_pos = bool(positive)
        counters[is_pos] += 1
        area = 100 * float(sampled.truths[k].mean())
        title = (
            f"positive {counters[True]}: {area:.1f}% of the image"
            if is_pos
            else f"negative {counters[False]}"
        )
        out.append(
            PredictionSample(
                image=sampled.images[k],
                truth=sampled.truths[k],
                prediction=sampled.predictions[k],
                title=title,
                score_text=f"Dice {sampled.dice[k]:.2f}",
            )
        )
    epoch = next(
        (
            r.get("training_iteration")
            for r in best.history
            if r.get("checkpoint_dir_name") == checkpoint.name
        ),
        "?",
    )
    text = (
        f"The best trial ({best.trial_id}) at its best kept checkpoint (epoch {epoch}), on "
        f"{len(sampled.rows)} of the {len(val)} images of its validation fold {fold} "
        f"({int(val.positive.sum())} of them positive), at {size} px; pixels above {threshold:g} "
        "are the prediction (the threshold its metrics were scored at; `pneumotune export` "
        "tunes the post-processing further). Dice per image: an empty truth and an empty "
        "prediction score 1."
    )
    return Predictions(out, text)


def predictions_section(summary: SearchSummary, seed: int, samples: int) -> Section:
    pred = best_model_predictions(summary, seed, samples)
    fig = fig_predictions(pred.samples)
    return figure_section(
        "predictions",
        "The best model on validation images",
        fig,
        pred.text,
        caption="For each image: the image, the annotated truth (vermillion) and the "
        f"prediction (blue). Images drawn at random with seed {seed}, positives first.",
        paragraphs=[pred.text] if fig is not None else [],
    )
