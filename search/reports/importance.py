"""Hyperparameter importance of a finished (or running) search, with Optuna's evaluator.

The trials of a Tune experiment are replayed into an in-memory Optuna study
(``optuna.trial.create_trial``: each finished trial's searched values, their
distributions, and its best score as the objective value), then
``optuna.importance.get_param_importances`` scores each parameter.

The evaluator is Optuna 5's default, PED-ANOVA
(:class:`optuna.importance.PedAnovaImportanceEvaluator`): it needs no extra package
(fANOVA needs scikit-learn, which pneumotune does not depend on), it works from a
handful of trials, and it handles conditional parameters (``restart_cycles`` only
exists for ``cosine_restarts`` trials) instead of dropping them. Its question is "how
much does this parameter's distribution among the best trials differ from its
distribution among all of them". With few trials the "best" share is widened so that
it holds at least :data:`MIN_TOP_TRIALS` trials.

Distributions come from the experiment YAML (``experiment_source`` in
``pneumotune.json``); when that file is gone, was never recorded, or no longer matches
the trials, they are inferred from the values the trials used, and
:attr:`Importance.notes` says so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumotune.search.config import ParamSpec
from pneumotune.search.results import SearchSummary, TrialRecord

MIN_FINISHED_TRIALS = 5  # fewer finished trials than this and no importance is computed
MIN_TOP_TRIALS = 2  # trials in PED-ANOVA's "top" group, at least
FINISHED = ("completed", "stopped by ASHA")
# An observed numeric range this wide (max / min) is treated as log-scaled when inferred.
LOG_SPAN = 20.0


@dataclass
class Importance:
    """What :func:`param_importances` found.

    ``values`` maps each evaluated parameter to its share of the importance (they sum
    to 1), highest first; empty when ``reason`` says why nothing was computed.
    ``used`` counts, for every searched parameter, the finished trials that sampled it.
    """

    values: dict[str, float]
    used: dict[str, int]
    n_finished: int
    reason: str = ""
    evaluator: str = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)"
    top_quantile: float = 0.0
    notes: list[str] = field(default_factory=list)


def finished_trials(summary: SearchSummary) -> list[TrialRecord]:
    """Trials that ended on their own (completed or stopped by ASHA) and have a score."""
    return [
        t
        for t in summary.trials
        if t.outcome in FINISHED and t.best(summary.metric, summary.mode)[0] is not None
    ]


def param_importances(summary: SearchSummary, specs: dict[str, ParamSpec]) -> Importance:
    """Importance of each searched parameter for reaching a top score in ``summary``.

    ``specs`` maps parameter names to the experiment's :class:`ParamSpec` (may be empty
    or partial: missing distributions are inferred from the trials' values). Each
    finished trial counts with its best score: an ASHA-stopped trial with the best it
    reached in the epochs it was given.
    """
    import optuna

    trials = finished_trials(summary)
    used = {p: sum(p in t.config for t in trials) for p in summary.searched}
    result = Importance({}, used, len(trials))
    if len(trials) < MIN_FINISHED_TRIALS:
        result.reason = (
            f"Importance needs at least {MIN_FINISHED_TRIALS} finished trials (completed or "
            f"stopped by ASHA); this search has {len(trials)}."
        )
        return result
    scores = [t.best(summary.metric, summary.mode)[0] for t in trials]
    if max(scores) - min(scores) <= 1e-12:  # type: ignore[operator]
        result.reason = (
            f"Every finished trial scored the same best {summary.metric} ({scores[0]:.4g}): "
            "no parameter can explain a difference that does not exist."
        )
        return result
    dists, result.notes = distributions(summary, trials, specs)
    names = [p for p in summary.searched if used.get(p) and p in dists]
    if not names:
        result.reason = "No searched parameter was sampled by a finished trial."
        return result

    # Quiet while building the replay ("A new study created in memory..."), then as before.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if summary.mode == "max" else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for trial, score in zip(trials, scores, strict=True):
        params = {p: _plain(trial.config[p]) for p in names if p in trial.config}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={p: dists[p] for p in params},
                value=float(score),  # type: ignore[arg-type]
            )
        )
    # The default 10% "top" holds one trial in a small search: widen it to a few trials.
    result.top_quantile = min(0.5, max(0.1, MIN_TOP_TRIALS / len(trials)))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=result.top_quantile)
    with warnings.catch_warnings():
        # "few trials in a regime" warnings: the page states the trial counts instead.
        warnings.simplefilter("ignore")
        values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=names)
    result.values = {k: float(v) for k, v in values.items()}
    return result


def distributions(
    summary: SearchSummary, trials: list[TrialRecord], specs: dict[str, ParamSpec]
) -> tuple[dict[str, Any], list[str]]:
    """An Optuna distribution per searched parameter, and notes on the inferred ones."""
    notes: list[str] = []
    out: dict[str, Any] = {}
    inferred: list[str] = []
    changed: list[str] = []
    for name in summary.searched:
        values = [_plain(t.config[name]) for t in trials if name in t.config]
        if not values:
            continue
        spec = specs.get(name)
        dist = spec_distribution(spec, values) if spec is not None else None
        if dist is None or not all(_contains(dist, v) for v in values):
            if spec is not None:
                changed.append(name)
            else:
                inferred.append(name)
            dist = inferred_distribution(values)
        out[name] = dist
    if inferred and len(inferred) == len(out):
        notes.append(
            "The experiment YAML was not available, so each parameter's range is the range "
            "of values the trials used (log scale guessed for ranges wider than "
            f"{LOG_SPAN:g}x)."
        )
    elif inferred:
        notes.append(
            f"No range in the experiment YAML for {', '.join(inferred)}: inferred from the "
            "values the trials used."
        )
    if changed:
        notes.append(
            f"The experiment YAML no longer matches the trials for {', '.join(changed)} "
            "(edited since the search?): their ranges are inferred from the values used."
        )
    return out, notes


def spec_distribution(spec: ParamSpec, observed: list[Any]) -> Any | None:
    """The Optuna distribution ``search.space.suggest`` sampled ``spec`` from.

    ``img_size: stored`` names the dataset's sizes, which the YAML does not list: the
    sizes the trials used stand in (``None`` for an unusable spec).
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if spec.choices is not None:
        choices = spec.choices
        if "stored" in choices:
            choices = tuple(sorted({*observed, *(c for c in choices if c != "stored")}))
        return CategoricalDistribution([_plain(c) for c in choices])
    if spec.low is None or spec.high is None:
        return None
    if spec.integer:
        step = int(spec.step or 1)
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=step)
    return FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=spec.step)


def inferred_distribution(values: list[Any]) -> Any:
    """A distribution covering ``values``: numeric ranges for numbers, else categories."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    distinct = sorted(set(values)) if numeric else sorted(set(values), key=str)
    # A handful of repeated numbers is a choice list (base_filters: 8, 16), not a range.
    if not numeric or (len(distinct) <= 3 and len(values) > len(distinct)):
        return CategoricalDistribution(distinct)
    low, high = min(values), max(values)
    log = low > 0 and high / low >= LOG_SPAN
    if all(isinstance(v, int) for v in values):
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


MAX_EXPERIMENT_BYTES = 1 << 20  # a YAML of a few dozen lines; never a dataset


def load_specs(plan: dict[str, Any]) -> tuple[dict[str, ParamSpec], str]:
    """The searched :class:`ParamSpec` s from the experiment YAML named in ``plan``.

    ``plan`` is ``pneumotune.json``. Returns ``({}, why)`` when the file is not there
    or cannot be read any more; ``why`` is empty on success.
    """
    from pneumotune.search.config import ConfigError, load_experiment

    source = plan.get("experiment_source")
    if not source:
        return {}, "the search recorded no experiment YAML"
    path = Path(str(source))
    # The path comes from the search folder, which may be someone else's: a file that
    # is no experiment is said to be one, and nothing of its text reaches the report.
    if not path.is_file() or path.stat().st_size > MAX_EXPERIMENT_BYTES:
        return {}, f"the experiment YAML {path.name} is not there any more"
    try:
        exp = load_experiment(path)
    except (ConfigError, UnicodeDecodeError, OSError):
        return {}, f"the experiment YAML {path.name} is no longer a valid experiment file"
    return {p.name: p for p in exp.space}, ""


def _contains(dist: Any, value: Any) -> bool:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return is_number and dist.low <= value <= dist.high


def _plain(value: Any) -> Any:
    """Numpy scalars and non-finite floats as Optuna accepts them."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
