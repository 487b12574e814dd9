"""Where TensorFlow runs: GPU memory growth, the dtype policy, and the trial's CPU share.

Both must run before TensorFlow builds anything in the process.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf


def configure_devices(mixed_precision: bool = False) -> str | None:
    """Turn on memory growth on every GPU; return the dtype policy to build with.

    Memory growth lets two trials share one GPU (fractional ``gpu`` resources): without it
    the first TensorFlow process takes the whole card. It can only be set before the GPUs
    are initialised; when a GPU is already in use the setting stays as it was.

    Mixed precision: ``"mixed_float16"`` on a GPU (Keras then wraps the optimizer in a
    ``LossScaleOptimizer``). On a CPU-only machine it is refused with a ``ValueError``
    rather than switched to bfloat16: float16 has no fast CPU kernels, and bfloat16 helps
    only on CPUs with native support (AVX512-BF16 / AMX) and little even there (measured
    on a 2-core AVX512-BF16 VM, 128 px, 8 filters: 1.0-1.3x, within the noise), while it
    changes the numerics of a trial, so that the same config would mean different
    training on CPU and GPU nodes of one search.
    Returns ``None`` for the default float32 policy.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # RuntimeError: already initialised by an earlier model in this process; keep it.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    if not mixed_precision:
        return None
    if not gpus:
        raise ValueError(
            "mixed_precision=True needs a GPU (float16 on tensor cores); on a CPU it gains "
            "little or nothing and changes the numerics: set mixed_precision: false for CPU runs"
        )
    return "mixed_float16"


def limit_tf_threads(cpus: float) -> None:
    """Keep TensorFlow inside the trial's CPU share (two trials on two cores must not
    each start a pool as wide as the machine). Must run before TF builds anything."""
    n = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(min(n, 2))
    except RuntimeError:
        pass  # TF already initialised in this process (a reused worker): keep its pools
