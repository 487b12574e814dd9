"""How much memory this process holds on its own, for each trial's epoch report.

A trial that the kernel's OOM killer (or Ray's memory monitor) ends gets no chance to
say anything: the last epoch it reported is all that is left of it. So each epoch
reports the process's private memory, and `pneumotune status` shows the last value
beside the "killed: out of memory" outcome.

Private memory is the sum of ``Private_Dirty`` in ``/proc/self/smaps_rollup``: pages
this process wrote and no other process maps (its heap, Keras' tensors, its copies of
batches). Unlike RSS it leaves out the shared libraries and the Ray object store's
shared arrays, which the OOM killer does not free by killing one trial, and it is what
grows when a batch or an image size is too large. On a system without ``/proc`` (macOS)
there is no value and the report goes without it.
"""

from __future__ import annotations

from pathlib import Path

# The key a trial's epoch report carries (result.json, progress.csv, search.json).
MEMORY_METRIC = "memory_mb"
SMAPS_ROLLUP = Path("/proc/self/smaps_rollup")
# Kernels before 4.14 have no rollup: the same lines per mapping, summed the same way.
SMAPS = Path("/proc/self/smaps")


def private_dirty_mb(smaps_text: str) -> float | None:
    """The sum of the ``Private_Dirty:`` lines of an smaps or smaps_rollup text, in MB
    (MiB: the kernel counts kB of 1024 bytes); None when there is no such line."""
    total_kb, seen = 0, False
    for line in smaps_text.splitlines():
        if line.startswith("Private_Dirty:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                total_kb += int(fields[1])
                seen = True
    return total_kb / 1024 if seen else None


def process_private_mb(rollup: Path = SMAPS_ROLLUP, smaps: Path = SMAPS) -> float | None:
    """This process's private memory in MB (see the module docstring); None where
    ``/proc`` does not tell."""
    for path in (rollup, smaps):
        try:
            text = path.read_text()
        except OSError:
            continue
        value = private_dirty_mb(text)
        if value is not None:
            return value
    return None


def memory_metrics() -> dict[str, float]:
    """``{MEMORY_METRIC: MB}`` for a trial's report, or ``{}`` where it cannot be read
    (a missing key rather than a None: Tune's loggers and ASHA expect numbers)."""
    value = process_private_mb()
    return {} if value is None else {MEMORY_METRIC: round(value, 1)}
