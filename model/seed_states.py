"""The dropout layers' random states, which a checkpoint must carry for an exact resume.

Keras keeps each dropout layer's random state in a ``SeedGenerator`` variable, ``[seed,
counter]``, whose counter steps once per training step. ``model.save`` leaves these out
(a layer saves its weights and optimizer slots, not its seed generators), so a run
resumed from the file would start every dropout layer's masks from a new layer's state:
the same epochs with other masks, so other losses and weights than the uninterrupted
run's. A search resumes a trial paused at a rung (promotion ASHA) or retried after a
failure, and its scores must be the ones the uninterrupted trial would report; the
checkpoint therefore stores these states (:func:`seed_states`) beside the model, and
``model.train.fit`` puts them back (:func:`set_seed_states`) after loading it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The name Keras gives a SeedGenerator's state variable (keras.random.SeedGenerator).
STATE_NAME = "seed_generator_state"


def seed_states(model: Any) -> list[list[int]]:
    """Every seed generator state of ``model``, in the model's own variable order."""
    return [np.asarray(v.numpy()).astype(np.int64).tolist() for v in _state_variables(model)]


def set_seed_states(model: Any, states: list[list[int]]) -> None:
    """Put back what :func:`seed_states` returned for a model of the same architecture."""
    variables = _state_variables(model)
    if len(states) != len(variables):
        raise ValueError(
            f"the checkpoint holds {len(states)} dropout random states, the model has "
            f"{len(variables)}: it was saved from another architecture"
        )
    for variable, state in zip(variables, states, strict=True):
        variable.assign(np.asarray(state, dtype=variable.dtype))


def _state_variables(model: Any) -> list[Any]:
    return [v for v in model.variables if v.name == STATE_NAME]
