"""Which Keras 3 backend runs: TensorFlow (the default), JAX or PyTorch.

Keras reads ``KERAS_BACKEND`` once, when it is first imported, so the choice is made
before that: :func:`select_backend` sets the variable (the ``--backend`` option of
``train``, ``search``, ``demo``, ``predict``, ``export``, ``report``) and refuses a backend
other than the one of a Keras already imported in the process. A search's trials get the
driver's backend as a parameter of the trainable (``search.trainable.train_trial``), which
selects it before importing Keras: a worker on another machine does not inherit the
driver's environment.

:func:`prepare_process` sets what a backend reads from the environment at start-up (JAX:
no pre-allocation of the whole GPU, a memory fraction per trial, the CPU thread count);
call it before Keras is imported.
"""

from __future__ import annotations

import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT = "tensorflow"
GPU_FRACTION_ENV = "PNEUMOTUNE_GPU_FRACTION"  # read by devices.list_gpus on PyTorch


def requested_backend() -> str:
    """The backend Keras will use (or uses): ``KERAS_BACKEND``, else TensorFlow."""
    if "keras" in sys.modules:
        import keras

        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND") or DEFAULT


def select_backend(name: str | None) -> str:
    """Make ``name`` Keras' backend (``None``: keep ``KERAS_BACKEND`` or the default).

    Raises :class:`pneumotune.errors.UsageError` for an unknown name, or when Keras was
    already imported with another backend in this process.
    """
    from pneumotune.errors import UsageError

    if name is None:
        return requested_backend()
    if name not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if "keras" in sys.modules and requested_backend() != name:
        raise UsageError(
            f"Keras is already running on {requested_backend()} in this process; set "
            f"KERAS_BACKEND={name} before starting Python to use {name}"
        )
    os.environ["KERAS_BACKEND"] = name
    return name


def prepare_process(cpus: float | None = None, gpu_fraction: float | None = None) -> None:
    """Environment a backend reads when it starts; call before Keras is imported.

    JAX pre-allocates 75% of a GPU at start-up unless told not to, so two trials could
    not share a card: pre-allocation is turned off, and ``gpu_fraction`` (a fractional
    ``gpu`` resource, e.g. 0.5) caps the trial's share. ``cpus`` bounds JAX's CPU
    threads (TensorFlow's and PyTorch's are set after import, :func:`devices.limit_threads`).
    Variables the user set are kept.
    """
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if gpu_fraction is not None and 0 < gpu_fraction < 1:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{gpu_fraction:.3f}")
        os.environ.setdefault(GPU_FRACTION_ENV, f"{gpu_fraction:.3f}")
    if cpus is not None and requested_backend() == "jax":
        n = max(1, int(cpus))
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in flags:
            extra = f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} "
            extra += f"intra_op_parallelism_threads={n}"
            os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()
