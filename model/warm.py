"""Warm starts: the next run of an architecture in this process reuses its traced train step.

On TensorFlow, tracing the train step is most of what a trial's first epoch costs beyond a
steady one (``bench/startup.py profile``: ~4 s at 128 px against 0.1 s a step). A trial
process that Ray Tune reuses for the next trial keeps its compiled models here, one per
:func:`graph_key` (what the traced step depends on: image size, filters, depth, dropout,
batch size, steps in the run, precision, XLA, weight decay). The next run with the same
key gets, in the same model object:

* its own fresh weights: built under its seed exactly as a cold run builds them, then
  copied in (every variable: weights, batch-norm statistics, dropout seed states);
* the optimizer's state as a new optimizer has it (step 0, zero moments);
* its learning rates, written into the optimizer's :class:`~model.schedules.StepTable`,
  and its loss weights, written into the :class:`~model.losses.ComboLoss` variables:
  the traced step reads both from variables (see :func:`model.train.compile_model`).

So a warm run trains exactly like a cold run of its config, without the tracing
(tests/model_tests/test_warm.py compares them bit for bit). Only TensorFlow keeps a
traced step in the model; other backends build a new model every run.

A warm model is the *same object* the previous run returned: a caller that still needs
that run's model must not train another run of the same key warm in this process
(:func:`model.train.fit` warms only when asked; the search's trials ask).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import keras
import numpy as np

from pneumotune.compat import keras_internals
from pneumotune.model.config import TrainConfig
from pneumotune.model.schedules import StepTable

# Compiled models by key, least recently used first. Two: a search's trials mostly share
# one or two architectures at a time, and each kept model holds its weights and slots.
MAX_MODELS = 2
_models: OrderedDict[tuple, tuple[keras.Model, list[np.ndarray]]] = OrderedDict()


def supported() -> bool:
    """Whether this process' Keras backend keeps a traced train step in the model."""
    return keras.backend.backend() == "tensorflow"


def graph_key(cfg: TrainConfig, n_train: int) -> tuple[Any, ...]:
    """What a traced train step of ``cfg`` depends on; learning rates and loss weights are
    read from variables, so neither is part of it."""
    return (
        keras.backend.backend(),
        cfg.img_size,
        cfg.base_filters,
        cfg.depth,
        cfg.dropout,
        cfg.batch_size,
        n_train,  # with epochs and batch size: the length of the rate table
        cfg.epochs,
        cfg.weight_decay,  # AdamW's decay is a constant of the step
        cfg.mixed_precision,
        cfg.jit_compile,
    )


def compiled_model(cfg: TrainConfig, n_train: int) -> keras.Model:
    """A compiled model for a new run of ``cfg`` on ``n_train`` images, set up as
    :func:`model.train.compile_model` sets up a new one: the kept model of its key, reset
    for this run, or else a new one, kept for the next run.

    Call after :func:`seed`, as a cold run builds after seeding.
    """
    from pneumotune.model.pipeline import steps_per_epoch
    from pneumotune.model.train import build_model, compile_model, schedule_for

    key = graph_key(cfg, n_train)
    fresh = build_model(cfg)  # the weights a cold run starts from, whatever happens next
    kept = _models.get(key)
    if kept is None:
        model = compile_model(fresh, cfg, n_train)
        _models[key] = (model, [np.array(v.numpy()) for v in model.optimizer.variables])
        while len(_models) > MAX_MODELS:
            _models.popitem(last=False)
        return model
    _models.move_to_end(key)
    model, optimizer_start = kept
    for mine, new in zip(model.variables, fresh.variables, strict=True):
        mine.assign(new.value)
    for var, start in zip(model.optimizer.variables, optimizer_start, strict=True):
        var.assign(start)
    _rate_table(model).load(schedule_for(cfg, steps_per_epoch(n_train, cfg.batch_size)))
    model.loss.set_weights(cfg.loss_bce, cfg.loss_dice, cfg.loss_focal)
    return model


def seed(value: int) -> None:
    """Seed a run as ``keras.utils.set_random_seed`` does, except TensorFlow's global seed.

    ``tf.random.set_seed`` empties TensorFlow's cache of instantiated functions, and a
    kept train step would then be instantiated and optimised by Grappler again: 2.3 s of
    a warm run's first step at 128 px. Nothing a run does draws from TensorFlow's global
    seed (Keras' random ops are stateless, seeded from Python's ``random``; augmentation
    seeds numpy per batch), so the run draws the same numbers as a cold one
    (tests/model_tests/test_warm.py).
    """
    import random

    # What keras.utils.set_random_seed sets (Keras 3.15), TensorFlow's seed left out.
    keras_internals.set_keras_seed(value)
    random.seed(value)
    np.random.seed(value)


def _rate_table(model: keras.Model) -> StepTable:
    # The optimizer's schedule itself (``learning_rate`` evaluates it); a loss-scale
    # optimizer wraps the one that has it.
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    table = keras_internals.optimizer_learning_rate(optimizer)
    assert isinstance(table, StepTable), f"compile_model gives a StepTable, not {table!r}"
    return table


def clear() -> None:
    """Forget every kept model (tests; a process that needs the memory back)."""
    _models.clear()
