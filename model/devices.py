"""Where a trial's Keras runs: GPU memory, the dtype policy, and its CPU share, on the
TensorFlow, JAX and PyTorch backends.

Memory: two trials must be able to share one GPU (fractional ``gpu`` resources).
TensorFlow grows its memory instead of taking the card (set before its GPUs are
initialised); JAX's pre-allocation is turned off before it starts
(:func:`pneumotune.model.backend.prepare_process`); PyTorch allocates on demand, and a
fraction caps it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import keras

from pneumotune.model.backend import GPU_FRACTION_ENV


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int] | None  # None: the backend does not say


def list_gpus() -> list[Gpu]:
    """The GPUs the current Keras backend sees, made ready to share: TensorFlow's with memory
    growth on, PyTorch's capped to the trial's fraction (``backend.prepare_process``)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = []
        for gpu in tf.config.list_physical_devices("GPU"):
            # RuntimeError: already initialised by an earlier model in this process.
            with contextlib.suppress(RuntimeError):
                tf.config.experimental.set_memory_growth(gpu, True)
            details = tf.config.experimental.get_device_details(gpu)
            gpus.append(
                Gpu(details.get("device_name", gpu.name), details.get("compute_capability"))
            )
        return gpus
    if backend == "jax":
        import jax

        try:
            devices = jax.devices("gpu")
        except RuntimeError:  # no GPU platform in this jaxlib
            return []
        return [
            Gpu(d.device_kind, _capability(getattr(d, "compute_capability", None))) for d in devices
        ]
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return []
        fraction = os.environ.get(GPU_FRACTION_ENV)
        if fraction:  # backend.prepare_process: this trial's share of each card
            for i in range(torch.cuda.device_count()):
                torch.cuda.set_per_process_memory_fraction(float(fraction), i)
        return [
            Gpu(torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
            for i in range(torch.cuda.device_count())
        ]
    return []


def _capability(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    major, _, minor = str(text).partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() else None


def mixed_policy(gpus: list[Gpu]) -> str:
    """``mixed_bfloat16`` where every GPU has bfloat16 tensor cores (compute capability
    >= 8: Ampere, Hopper; as fast as float16 there, and no loss scaling), else
    ``mixed_float16``."""
    caps = [g.compute_capability for g in gpus]
    if caps and all(c is not None and c >= (8, 0) for c in caps):
        return "mixed_bfloat16"
    return "mixed_float16"


def configure_devices(mixed_precision: bool = False) -> str | None:
    """Prepare the GPUs (see the module); return the dtype policy to build with.

    Mixed precision needs a GPU: on a CPU-only machine it is refused with a ``ValueError``
    rather than switched to bfloat16: float16 has no fast CPU kernels, and bfloat16 helps
    only on CPUs with native support (AVX512-BF16 / AMX) and little even there (measured
    on a 2-core AVX512-BF16 VM, 128 px, 8 filters: 1.0-1.3x, within the noise), while it
    changes the numerics of a trial, so that the same config would mean different
    training on CPU and GPU nodes of one search.
    Returns ``None`` for the default float32 policy.
    """
    gpus = list_gpus()
    if not mixed_precision:
        return None
    if not gpus:
        raise ValueError(
            "mixed_precision=True needs a GPU (float16 on tensor cores); on a CPU it gains "
            "little or nothing and changes the numerics: set mixed_precision: false for CPU runs"
        )
    return mixed_policy(gpus)


def limit_threads(cpus: float) -> None:
    """Keep the backend's CPU threads inside the trial's CPU share (two trials on two cores
    must not each start a pool as wide as the machine). TensorFlow: before it builds
    anything; JAX: its flags are set by ``backend.prepare_process`` before it starts."""
    n = max(1, int(cpus))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(min(n, 2))
        except RuntimeError:
            pass  # TF already initialised in this process (a reused worker): keep its pools
    elif backend == "torch":
        import torch

        torch.set_num_threads(n)
