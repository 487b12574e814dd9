"""Learning-rate schedules by name, all serialisable inside a saved optimizer.

``make_schedule(name, base_lr, total_steps, warmup_steps, **params)`` is the one entry
point; :data:`SCHEDULES` maps each name to its builder (a plain dict, so the search
space and the config validator can list the names). Steps are optimizer steps
(batches), counted from 0 over the whole run, warm-up included:

* ``constant``: ``base_lr``.
* ``cosine(alpha=0.0)``: one cosine from ``base_lr`` to ``alpha * base_lr`` at
  ``total_steps`` (the tutorial's schedule).
* ``cosine_restarts(cycles=3, t_mul=1.0, m_mul=1.0, alpha=0.0)``: SGDR / snapshot
  ensembles: ``cycles`` cosines covering the run, cycle ``i`` lasting ``t_mul**i``
  times the first and restarting at ``m_mul**i * base_lr``.
* ``step(gamma=0.5, step_every=0.25)``: ``base_lr * gamma**k`` from ``k * step_every``
  of the post-warm-up steps on.
* ``one_cycle(pct_start=0.3, div_initial=25, div_final=1e4)``: linear from
  ``base_lr / div_initial`` up to ``base_lr`` over ``warmup_steps`` (or
  ``pct_start * total_steps``), then cosine down to ``base_lr / div_final`` at
  ``total_steps``.

Warm-up (``warmup_steps > 0``) is a linear ramp from 0 at step 0 to ``base_lr`` at
step ``warmup_steps``, then the named shape runs over the remaining
``total_steps - warmup_steps`` steps. ``cosine`` uses Keras' own ``CosineDecay``
warm-up; ``constant``, ``cosine_restarts`` and ``step`` are wrapped in
:class:`LinearWarmup`; ``one_cycle``'s warm-up is part of its shape (``warmup_steps``,
or ``pct_start * total_steps`` when ``warmup_steps`` is 0).

After ``total_steps`` every schedule holds its last value (``cosine_restarts`` keeps
cycling, as Keras' class does).

:class:`StepTable` holds any of them as a table of its rates, one per step, in a variable:
on TensorFlow the training uses it, so that a traced train step serves the next run's
schedule too (:mod:`model.warm`). Loading one from a saved model allocates and computes
``total_steps`` rates, a number the file states: it is checked first against
:data:`MAX_TABLE_STEPS`, or against the run the model belongs to when the loader knows it
(:func:`steps_at_most`), and a larger one is a :class:`ScheduleError`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import keras
import numpy as np
from keras import ops

from pneumotune.errors import PneumotuneError

__all__ = [
    "MAX_TABLE_STEPS",
    "SCHEDULES",
    "LinearWarmup",
    "OneCycle",
    "ScheduleError",
    "StepTable",
    "make_schedule",
    "schedule_params",
    "steps_at_most",
]

Schedule = keras.optimizers.schedules.LearningRateSchedule

# The most steps a saved StepTable may hold: 16.8M, a 64 MiB table (about 6 minutes to fill
# on one core). SIIM's 12k images at batch 1 for 100 epochs are 1.2M steps.
MAX_TABLE_STEPS = 2**24
# (limit, what it is) while a loader that knows the run is loading its model.
_step_limit: ContextVar[tuple[int, str] | None] = ContextVar("pneumotune_step_limit", default=None)


class ScheduleError(PneumotuneError, ValueError):
    """A saved learning-rate schedule that cannot be its run's (e.g. more steps than the
    run has): the model file is not what it claims."""


@contextmanager
def steps_at_most(limit: int, run: str) -> Iterator[None]:
    """While loading a saved model of a known run: a :class:`StepTable` in it may hold at
    most ``limit`` steps (``run`` says what the limit is, e.g. "10 epochs x 4 steps"), not
    just :data:`MAX_TABLE_STEPS`."""
    token = _step_limit.set((int(limit), run))
    try:
        yield
    finally:
        _step_limit.reset(token)


def _checked_total_steps(value: Any) -> int:
    """A saved table's ``total_steps``, before anything is allocated for it."""
    whole = isinstance(value, int) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )
    if isinstance(value, bool) or not whole:
        raise ScheduleError(f"a saved learning-rate table has total_steps {value!r}, not a count")
    steps = int(value)
    limit, run = _step_limit.get() or (MAX_TABLE_STEPS, "the most any run here takes")
    if not 1 <= steps <= limit:
        raise ScheduleError(
            f"a saved learning-rate table claims {steps} steps; its run has at most {limit} "
            f"({run}): the model file is not that run's"
        )
    return steps


@keras.saving.register_keras_serializable(package="pneumotune")
class LinearWarmup(Schedule):
    """Linear ramp from 0 (step 0) to ``warmup_target`` (step ``warmup_steps``), then
    ``after(step - warmup_steps)``, or the constant ``warmup_target`` when ``after`` is
    None."""

    def __init__(
        self,
        warmup_steps: int,
        warmup_target: float,
        after: Schedule | None = None,
        name: str = "LinearWarmup",
    ) -> None:
        super().__init__()
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1; got {warmup_steps!r}")
        self.warmup_steps = int(warmup_steps)
        self.warmup_target = float(warmup_target)
        self.after = after
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = ops.cast(self.warmup_target, "float32")
        ramp = warm * step / float(self.warmup_steps)
        if self.after is None:
            later = warm
        else:
            # Clamped so that the wrapped schedule never sees a negative step (ops.where
            # evaluates both branches; CosineDecayRestarts takes a log of the step).
            later = ops.cast(self.after(ops.maximum(step - self.warmup_steps, 0.0)), "float32")
        return ops.where(step < self.warmup_steps, ramp, later)

    def get_config(self) -> dict:
        return {
            "warmup_steps": self.warmup_steps,
            "warmup_target": self.warmup_target,
            "after": None
            if self.after is None
            else keras.saving.serialize_keras_object(self.after),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> LinearWarmup:
        config = dict(config)
        if config.get("after") is not None:
            config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="pneumotune")
class OneCycle(Schedule):
    """One cycle: linear from ``max_lr / div_initial`` (step 0) to ``max_lr`` (step
    ``warmup_steps``), then half a cosine to ``max_lr / div_final`` (step
    ``total_steps``), constant afterwards. Keras has no such class."""

    def __init__(
        self,
        max_lr: float,
        total_steps: int,
        warmup_steps: int,
        div_initial: float = 25.0,
        div_final: float = 1e4,
        name: str = "OneCycle",
    ) -> None:
        super().__init__()
        if not 0 < warmup_steps < total_steps:
            raise ValueError(
                f"one_cycle needs 0 < warmup_steps < total_steps; got warmup_steps={warmup_steps}"
                f", total_steps={total_steps}"
            )
        if div_initial < 1 or div_final < 1:
            raise ValueError(
                f"div_initial and div_final must be >= 1; got {div_initial!r}, {div_final!r}"
            )
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.div_initial = float(div_initial)
        self.div_final = float(div_final)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        start = self.max_lr / self.div_initial
        end = self.max_lr / self.div_final
        up = start + (self.max_lr - start) * step / float(self.warmup_steps)
        frac = ops.clip(
            (step - self.warmup_steps) / float(self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        down = end + (self.max_lr - end) * 0.5 * (1.0 + ops.cos(math.pi * frac))
        return ops.where(step < self.warmup_steps, up, down)

    def get_config(self) -> dict:
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "div_initial": self.div_initial,
            "div_final": self.div_final,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="pneumotune")
class StepTable(Schedule):
    """``schedule``'s rate at each step ``0..total_steps`` of a run, read from a variable
    (the rate at ``total_steps`` after it). TensorFlow only.

    A traced train step that reads its learning rate here, rather than computing it,
    serves any schedule of the same length: :meth:`load` writes the next run's rates into
    the same variable. The rates are the schedule's own, computed by TensorFlow in a
    graph as the train step would compute them (float32, bit for bit).
    """

    def __init__(
        self, schedule: Schedule | float, total_steps: int, name: str = "StepTable"
    ) -> None:
        super().__init__()
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1; got {total_steps!r}")
        self.total_steps = int(total_steps)
        self.name = name
        self.table = keras.Variable(
            np.zeros(self.total_steps + 1, np.float32), trainable=False, name="lr_table"
        )
        self.load(schedule)

    def load(self, schedule: Schedule | float) -> None:
        """Use ``schedule`` from now on (same ``total_steps``)."""
        self.schedule = schedule
        self.table.assign(_rates(schedule, self.total_steps + 1))

    def __call__(self, step):
        return ops.take(self.table, ops.minimum(ops.cast(step, "int32"), self.total_steps))

    def get_config(self) -> dict:
        schedule = self.schedule
        if isinstance(schedule, Schedule):
            schedule = keras.saving.serialize_keras_object(schedule)
        return {"schedule": schedule, "total_steps": self.total_steps, "name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> Schedule | float:
        # The table is allocated and filled from the file's total_steps: checked first.
        total_steps = _checked_total_steps(config.get("total_steps"))
        schedule = config["schedule"]
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        if keras.backend.backend() != "tensorflow":
            return schedule  # a checkpoint trained on TensorFlow, resumed on another backend
        return cls(schedule, total_steps, name=config.get("name", "StepTable"))


def _rates(schedule: Schedule | float, n: int) -> np.ndarray:
    """The rates at steps ``0..n-1``."""
    if not isinstance(schedule, Schedule):
        return np.full(n, schedule, np.float32)
    import tensorflow as tf

    # In a graph, with an int64 step like the optimizer's iterations: the same ops on the
    # same inputs as inside the train step (map_fn, because Keras' cosine warm-up is a cond).
    steps = tf.range(n, dtype=tf.int64)
    rates = tf.function(
        lambda s: tf.map_fn(
            lambda i: tf.cast(schedule(i), tf.float32), s, fn_output_signature=tf.float32
        )
    )(steps)
    return rates.numpy()


# --------------------------------------------------------------------------- builders
# Each builder takes (base_lr, total_steps, warmup_steps, **its params) with the params'
# defaults in its signature: make_schedule reads them from there to check user params.


def _wrap(after: Schedule | None, base_lr: float, warmup_steps: int) -> Schedule | float:
    if warmup_steps == 0:
        return base_lr if after is None else after
    return LinearWarmup(warmup_steps, base_lr, after)


def _constant(base_lr: float, total_steps: int, warmup_steps: int) -> Schedule | float:
    return _wrap(None, base_lr, warmup_steps)


def _cosine(base_lr: float, total_steps: int, warmup_steps: int, alpha: float = 0.0) -> Schedule:
    _check_fraction("alpha", alpha)
    decay_steps = total_steps - warmup_steps
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(base_lr, decay_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, alpha=alpha, warmup_target=base_lr, warmup_steps=warmup_steps
    )


def _cosine_restarts(
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    cycles: int = 3,
    t_mul: float = 1.0,
    m_mul: float = 1.0,
    alpha: float = 0.0,
) -> Schedule:
    if int(cycles) != cycles or cycles < 1:
        raise ValueError(f"cycles must be an integer >= 1; got {cycles!r}")
    if t_mul <= 0 or m_mul <= 0:
        raise ValueError(f"t_mul and m_mul must be > 0; got t_mul={t_mul!r}, m_mul={m_mul!r}")
    _check_fraction("alpha", alpha)
    span = total_steps - warmup_steps
    # The cycles (lengths 1, t_mul, t_mul**2, ... times the first) cover the run; rounded
    # up, because rounded down the last cycle would end early and the final steps would
    # restart at a high learning rate.
    periods = cycles if t_mul == 1 else (t_mul**cycles - 1) / (t_mul - 1)
    first = max(1, math.ceil(span / periods - 1e-9))
    after = keras.optimizers.schedules.CosineDecayRestarts(
        base_lr, first, t_mul=float(t_mul), m_mul=float(m_mul), alpha=float(alpha)
    )
    return _wrap(after, base_lr, warmup_steps)


def _step(
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    gamma: float = 0.5,
    step_every: float = 0.25,
) -> Schedule:
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1]; got {gamma!r}")
    if not 0 < step_every <= 1:
        raise ValueError(f"step_every is a fraction of training in (0, 1]; got {step_every!r}")
    span = total_steps - warmup_steps
    # Drops at k * step_every of the span for every k with k * step_every < 1 (the
    # tolerance keeps 0.25 * 4 from counting as < 1); rounding on tiny spans can merge
    # two drops or put one at step 0, so keep distinct steps strictly inside the span.
    fractions = [k * step_every for k in range(1, math.ceil(1 / step_every) + 1)]
    boundaries = sorted({round(f * span) for f in fractions if f < 1 - 1e-9} - {0})
    boundaries = [b for b in boundaries if b < span]
    if not boundaries:  # step_every covers the whole run: no drop, a constant
        return _wrap(None, base_lr, warmup_steps)
    values = [base_lr * gamma**k for k in range(len(boundaries) + 1)]
    # PiecewiseConstantDecay switches *after* a boundary (step <= b keeps the old
    # value); shift by one so that the drop happens at step b itself.
    after = keras.optimizers.schedules.PiecewiseConstantDecay([b - 1 for b in boundaries], values)
    return _wrap(after, base_lr, warmup_steps)


def _one_cycle(
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    pct_start: float | None = None,
    div_initial: float = 25.0,
    div_final: float = 1e4,
) -> Schedule:
    # The rise is the warm-up: give its length either in steps or as a fraction.
    if warmup_steps and pct_start is not None:
        raise ValueError(
            "one_cycle takes warmup_steps or pct_start, not both; "
            f"got warmup_steps={warmup_steps}, pct_start={pct_start}"
        )
    if pct_start is None:
        pct_start = 0.3
    if not 0 < pct_start < 1:
        raise ValueError(f"pct_start must be in (0, 1); got {pct_start!r}")
    up = warmup_steps or min(total_steps - 1, max(1, round(pct_start * total_steps)))
    return OneCycle(base_lr, total_steps, up, div_initial=div_initial, div_final=div_final)


def _check_fraction(what: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1]; got {value!r}")


SCHEDULES: dict[str, Callable[..., Schedule | float]] = {
    "constant": _constant,
    "cosine": _cosine,
    "cosine_restarts": _cosine_restarts,
    "step": _step,
    "one_cycle": _one_cycle,
}


def schedule_params(name: str) -> dict[str, Any]:
    """The extra parameters a schedule accepts, with their defaults."""
    _check_name(name)
    sig = inspect.signature(SCHEDULES[name])
    return {k: p.default for k, p in list(sig.parameters.items())[3:]}


def _check_name(name: str) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")


def make_schedule(
    name: str,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    **params: Any,
) -> Schedule | float:
    """Build the learning rate for an optimizer (``keras.optimizers.Adam(learning_rate=...)``).

    Args:
        name: one of :data:`SCHEDULES` (see the module docstring for shapes and params).
        base_lr: the peak learning rate, > 0.
        total_steps: optimizer steps in the whole run (epochs x steps per epoch), >= 1.
        warmup_steps: linear warm-up steps included in ``total_steps``, 0 <= w < total.
        **params: the schedule's own parameters; unknown ones raise ``ValueError``.

    Returns:
        A float for ``constant`` without warm-up, else a ``LearningRateSchedule``.
    """
    _check_name(name)
    allowed = schedule_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for schedule {name!r}; "
            f"it accepts {sorted(allowed) or 'none'}"
        )
    if not (math.isfinite(base_lr) and base_lr > 0):
        raise ValueError(f"base_lr must be a finite number > 0; got {base_lr!r}")
    if int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1; got {total_steps!r}")
    if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be an integer in [0, total_steps); got {warmup_steps!r} "
            f"with total_steps={total_steps}"
        )
    return SCHEDULES[name](float(base_lr), int(total_steps), int(warmup_steps), **params)
