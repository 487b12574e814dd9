"""Import TensorFlow without its start-up notices on the terminal.

On a CPU machine, importing TensorFlow and listing its GPUs writes lines such as
``I0000 ... oneDNN custom operations are on``, ``Could not find cuda drivers`` and
``E0000 ... failed call to cuInit: INTERNAL: CUDA error`` straight to file descriptor 2
(from C++, before its logging is configured, so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide
them). A newcomer reads them as a failure. :func:`import_tensorflow` captures that
descriptor while TensorFlow starts and passes on every line except these notices.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# Start-up notices only: anything else TensorFlow writes while starting is passed on.
NOTICES = re.compile(
    r"oneDNN custom operations are on"
    r"|Could not find cuda drivers"
    r"|failed call to cuInit"
    r"|All log messages before absl::InitializeLog\(\) is called"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
    r"|TF-TRT Warning: Could not find TensorRT"
)


def import_tensorflow() -> None:
    """Import TensorFlow (and find its GPUs) once, its start-up notices filtered out."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the cuInit line comes from here
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    kept = [line for line in text.splitlines() if line.strip() and not NOTICES.search(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
