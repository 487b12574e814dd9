"""Keras' internals that pneumotune uses, each behind one name (see :mod:`pneumotune.compat`).

Written against Keras 3.15 (``TESTED``, pyproject.toml's pin); importing this module
warns once when another release is installed. ``tests/pneumotune_tests/test_compat.py``
has a canary per internal below. Importing this module does not import Keras.
"""

from __future__ import annotations

from typing import Any

from pneumotune.compat import check_version as _check_version

DISTRIBUTION = "keras"
TESTED = "~=3.15.0"  # pyproject.toml's pin (test_compat.py holds them equal)


def check_version() -> str:
    """Warn once per process when the installed Keras is outside :data:`TESTED`; returns
    the problem ("" if none)."""
    return _check_version(__name__, DISTRIBUTION, TESTED)


def set_keras_seed(value: int) -> None:
    """What ``keras.utils.set_random_seed(value)`` does to Keras' own state, and nothing
    else: the global seed (``keras.src.backend.common.global_state``'s
    ``keras.src.utils.rng_utils.GLOBAL_RANDOM_SEED``) set, the global ``SeedGenerator``
    (``keras.src.random.seed_generator.GLOBAL_SEED_GENERATOR``) dropped, to be made again
    from it.

    The public function also calls ``tf.random.set_seed``, which empties TensorFlow's
    cache of instantiated functions: a warm run's kept train step (model/warm.py) would be
    instantiated and optimised again (2.3 s at 128 px). Python's and NumPy's seeds are the
    caller's to set.
    """
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, value)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)


def optimizer_learning_rate(optimizer: Any) -> Any:
    """The learning rate an optimizer was given, unevaluated: the schedule object itself
    (``optimizer._learning_rate``; the public ``learning_rate`` evaluates a schedule at the
    current step). model/warm.py loads a warm run's rates into the compiled model's
    :class:`~pneumotune.model.schedules.StepTable` this way; without it a warm run would
    need a new optimizer, and a new trace of the train step."""
    return optimizer._learning_rate


def build_compiled_state(model: Any, data_batch: Any) -> None:
    """Build what ``fit`` builds from its first batch (the model, its compiled metrics and
    losses, the optimizer's variables) from ``data_batch``, an ``(x, y)`` batch:
    ``Trainer._symbolic_build(data_batch=...)``. model/multiworker.py does it in the
    strategy's scope with a local batch, because ``fit``'s own attempt reduces a
    distributed ``(x, y)`` tuple, which MultiWorkerMirroredStrategy cannot."""
    model._symbolic_build(data_batch=data_batch)


def _already_built(iterator: Any = None, data_batch: Any = None) -> None:
    """Replaces ``Trainer._maybe_symbolic_build`` once the compiled state is built."""


def skip_build_in_fit(model: Any) -> None:
    """Make ``fit`` skip its symbolic build on this model object (the TensorFlow trainer's
    ``_maybe_symbolic_build``, replaced on the instance by a no-op): see
    :func:`build_compiled_state`. Without it ``fit`` under MultiWorkerMirroredStrategy
    fails ("Attempt to convert a value (PerReplica ...)")."""
    model._maybe_symbolic_build = _already_built


check_version()
