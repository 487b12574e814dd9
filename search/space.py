"""The search space: an Optuna define-by-run function built from the experiment config.

Define-by-run lets a parameter exist only when it means something: the number of
restart cycles is sampled only for ``cosine_restarts`` trials, so TPE does not
model noise. Testable without Ray through ``optuna.create_study().ask()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pneumotune.model.config import TrainConfig
from pneumotune.search.config import ExperimentConfig, ParamSpec


def base_values(exp: ExperimentConfig) -> dict[str, Any]:
    """What every trial shares: the fixed values, the epoch budget, fold and seed."""
    return {"epochs": exp.epochs, "val_fold": exp.val_fold, "seed": exp.seed, **exp.fixed}


class DefineByRun:
    """``space(trial) -> flat training values``; suggested values are recorded on ``trial``.

    A class rather than a closure: Tune pickles the searcher (with this space) into the
    experiment directory so that a search can resume. Parameters are suggested in the
    YAML's order, so a ``when`` parent comes first.
    """

    def __init__(self, exp: ExperimentConfig) -> None:
        self.specs = exp.space
        self.fixed = base_values(exp)

    def __call__(self, trial: Any) -> dict[str, Any]:
        values = dict(self.fixed)
        for spec in self.specs:
            if spec.active(values):
                values[spec.name] = suggest(trial, spec)
        # Returned constants are merged into the trial's config by OptunaSearch.
        return dict(self.fixed)


def make_space(exp: ExperimentConfig) -> Callable[[Any], dict[str, Any]]:
    return DefineByRun(exp)


def suggest(trial: Any, spec: ParamSpec) -> Any:
    if spec.choices is not None:
        return trial.suggest_categorical(spec.name, list(spec.choices))
    assert spec.low is not None and spec.high is not None
    if spec.integer:
        step = int(spec.step or 1)
        return trial.suggest_int(spec.name, int(spec.low), int(spec.high), step=step, log=spec.log)
    return trial.suggest_float(spec.name, spec.low, spec.high, step=spec.step, log=spec.log)


def tutorial_point(exp: ExperimentConfig) -> tuple[dict[str, Any], list[str]]:
    """The tutorial's settings as a point of this space, and notes on what had to move.

    A value outside the space moves to the nearest allowed one (256 px becomes the
    largest stored size when 256 is not stored), and each move is noted.
    """
    tutorial = TrainConfig.tutorial().to_flat()
    point: dict[str, Any] = {}
    notes: list[str] = []
    values = base_values(exp)
    for spec in exp.space:
        if not spec.active(values):
            continue
        wanted = tutorial.get(spec.name, spec.resolved_default())
        value = _nearest(spec, wanted)
        if value != wanted:
            had = "had none" if wanted is None else repr(wanted)
            notes.append(f"{spec.name}: tutorial {had} -> {value!r} (not in the space)")
        point[spec.name] = values[spec.name] = value
    return point, notes


def _nearest(spec: ParamSpec, wanted: Any) -> Any:
    if wanted is None and (spec.choices is None or None not in spec.choices):
        return spec.resolved_default()  # e.g. the tutorial had no positive-share schedule
    if spec.choices is not None:
        if wanted in spec.choices:
            return wanted
        numeric = [
            c for c in spec.choices if isinstance(c, int | float) and not isinstance(c, bool)
        ]
        if isinstance(wanted, int | float) and numeric:
            return min(numeric, key=lambda c: (abs(c - wanted), -c))
        return spec.resolved_default()
    assert spec.low is not None and spec.high is not None
    clipped = min(max(wanted, spec.low), spec.high)
    return round(clipped) if spec.integer else float(clipped)


def train_config(config: dict[str, Any]) -> TrainConfig:
    """A trial's flat config (what Tune passes to the trainable) -> TrainConfig."""
    return TrainConfig.from_flat(config)
