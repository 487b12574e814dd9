"""Why a trial ended badly, in words a user can act on, and a search none of whose
trials got through.

Tune appends one block per failure to the trial's ``error.txt``: ``Failure # N
(occurred at DATE)``, then the exception's text. Three kinds of text mean that the trial
ran out of memory (Ray 2.60's wording, seen in tests/search_tests/test_out_of_memory.py):

* Ray's memory monitor killed the trial's worker (node memory above
  ``RAY_memory_usage_threshold``): ``1 worker(s) were killed due to the node running low
  on memory. Memory on the node (IP: ..., ID: ...) was 3.44GB used / 23.54GB limit ...
  Selected to kill: (Actor(...) ... pid=7664, actual memory used=0.61GB, ...)``. Certain.
* The kernel's OOM killer sent it SIGKILL (a container's or cgroup's limit, or the whole
  machine): Ray only sees the worker vanish, ``The actor is dead because its worker
  process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly
  exits with a connection error code 2. End of file. Some common causes include: (1) the
  process was killed by the OOM killer due to high memory usage, (2) ray stop --force was
  called, or (3) the worker crashed unexpectedly due to SIGSEGV ...``. Ray cannot tell
  these apart; a training process that dies without a Python error is nearly always the
  OOM killer, hence "likely", and the reason says how to check (the kernel log).
* The trial raised an out-of-memory error itself: Python's ``MemoryError``, TensorFlow's
  ``ResourceExhaustedError`` ("OOM when allocating tensor"), PyTorch's "CUDA out of
  memory", XLA's ``RESOURCE_EXHAUSTED`` (most often a GPU's memory).

Each gets an outcome of its own ("killed: out of memory", ...) and the same advice: what
to lower so that a trial fits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pneumotune.errors import PneumotuneError

FAILED = "failed"
KILLED_OOM = "killed: out of memory"  # Ray's memory monitor said so
KILLED_LIKELY_OOM = "killed: likely out of memory"  # SIGKILL, no Python error
FAILED_OOM = "failed: out of memory"  # the trial raised MemoryError / an allocator's OOM
MEMORY_OUTCOMES = (KILLED_OOM, KILLED_LIKELY_OOM, FAILED_OOM)
FAILURE_OUTCOMES = (FAILED, *MEMORY_OUTCOMES)

# Ray's memory monitor (raylet): the task's error, or an actor's death record.
_MONITOR_MARKERS = (
    "killed due to the node running low on memory",
    "Worker exit type: NODE_OUT_OF_MEMORY",
    "OOM kill reason:",
)
# A worker process that vanished: no Python traceback, no exit of its own.
_VANISHED_MARKERS = ("Worker unexpectedly exits", "Worker exits unexpectedly by a signal")
_OOM_KILLER_HINT = "killed by the OOM killer"
# Allocators' own out-of-memory errors, raised inside the trial.
_RAISED_MARKERS = (
    "MemoryError",  # Python's, and Ray's OutOfMemoryError on a nested task
    "ResourceExhaustedError",
    "OOM when allocating",
    "out of memory",  # CUDA / PyTorch
    "RESOURCE_EXHAUSTED",
)
# At most 9 digits: a longer count is not Tune's (and int() refuses past 4300 digits).
_HEADER = re.compile(r"^Failure # (\d{1,9}) \(occurred at ([^)]*)\)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Failure:
    """One block of a trial's ``error.txt``: the failure's number (Tune's count of the
    trial's failures so far), when, and the exception's text."""

    number: int
    when: str
    text: str


def parse_error_file(text: str) -> list[Failure]:
    """The failures of an ``error.txt``, oldest first; a text without Tune's headers is
    one failure numbered 0 (its count unknown)."""
    headers = list(_HEADER.finditer(text))
    if not headers:
        return [Failure(0, "", text.strip())] if text.strip() else []
    out = []
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        out.append(Failure(int(m.group(1)), m.group(2), text[m.end() : end].strip()))
    return out


def classify(text: str) -> str:
    """The outcome a failure's text means: one of :data:`FAILURE_OUTCOMES`."""
    if any(m in text for m in _MONITOR_MARKERS):
        return KILLED_OOM
    if any(m in text for m in _VANISHED_MARKERS) and _OOM_KILLER_HINT in text:
        return KILLED_LIKELY_OOM
    if any(m in text for m in _RAISED_MARKERS):
        return FAILED_OOM
    return FAILED


def reason(text: str) -> str:
    """One line on why the trial failed: the exception line of a traceback, or for a
    killed worker what Ray knows (how much it held, where to confirm an OOM kill)."""
    outcome = classify(text)
    if outcome == KILLED_OOM:
        held = re.search(r"actual memory used=([\d.]+\s*[KMGT]?B)", text)
        node = re.search(r"was ([\d.]+\s*[KMGT]?B) used / ([\d.]+\s*[KMGT]?B) limit", text)
        parts = ["Ray's memory monitor killed its worker"]
        if held:
            parts.append(f"holding {held.group(1)}")
        if node:
            parts.append(f"with the node at {node.group(1)} of {node.group(2)}")
        return " ".join(parts)
    if outcome == KILLED_LIKELY_OOM:
        pid, ip = _field(text, "pid"), _field(text, "ip")
        where = f" (pid {pid} on {ip})" if pid and ip else ""
        check = f"; the kernel log there (dmesg) says 'Killed process {pid}' if so" if pid else ""
        return (
            f"its worker process vanished without a Python error{where}, as it does when "
            f"the kernel's OOM killer ends it{check}"
        )
    dead = re.search(r"^(The actor is dead because[^.]*\.)", text, re.MULTILINE)
    if dead:
        return dead.group(1)[:300]
    return last_exception_line(text)


def _field(text: str, key: str) -> str | None:
    """A ``\\tkey: value`` line of Ray's ActorDiedError text."""
    m = re.search(rf"^\s*{key}: (\S+)\s*$", text, re.MULTILINE)
    return m.group(1) if m else None


def last_exception_line(text: str) -> str:
    """The exception line of a traceback: what a person reads first."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if (
            ":" in line
            and not line.startswith(("File ", "^", "~"))
            and line.split(":")[0].replace(".", "").replace("_", "").isalnum()
        ):
            return line[:300]
    return lines[-1][:300] if lines else "failed"


def memory_advice(config: dict[str, Any]) -> str:
    """What to change so that a trial fits in memory, with this trial's values: "lower
    batch_size or img_size (this trial: ...), or run fewer trials per node: ..."."""
    from pneumotune.text import escaped

    # The config may come from a results folder: any value, printed to a terminal.
    mine = [f"{k} {escaped(config[k], 20)}" for k in ("batch_size", "img_size") if k in config]
    values = f" (this trial: {', '.join(mine)})" if mine else ""
    return (
        f"lower batch_size or img_size{values}, or run fewer trials per node: more "
        "resources.cpu (or resources.gpu) per trial, or a lower max_concurrent"
    )


class SearchFailed(PneumotuneError, RuntimeError):
    """Every trial of a search failed: there is nothing to export."""

    exit_code = 1  # the input was valid; the run failed


def all_failed_message(outcomes: list[str], memory: list[float]) -> str:
    """The one line a search none of whose trials got through ends with.

    ``outcomes``: each trial's outcome (all in :data:`FAILURE_OUTCOMES`); ``memory``: the
    last known private memory of the trials that reported one, in MB.
    """
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o] = counts.get(o, 0) + 1
    kinds = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
    line = f"all {len(outcomes)} trials failed ({kinds}); nothing to export"
    if any(o in MEMORY_OUTCOMES for o in outcomes):
        held = f" (they held up to {max(memory):.0f} MB at their last report)" if memory else ""
        line += (
            f". Out of memory{held}: lower batch_size or img_size, or run fewer trials per "
            "node (more resources.cpu/gpu per trial, a lower max_concurrent)"
        )
    return line


def handle_memory_monitor_kills() -> None:
    """Make Tune treat a trial that Ray's memory monitor killed as a failed trial.

    Ray 2.60's memory monitor fails the killed actor's running task with
    ``ray.exceptions.OutOfMemoryError``, which is neither a ``RayActorError`` nor a
    ``RayTaskError``; Tune's actor manager has no branch for it and raises
    ``RuntimeError("Caught unexpected exception: ...")``, which ends the whole search with
    a traceback (every other trial lost, the table never printed). Here the error becomes
    the ``RayActorError`` it amounts to (the actor is dead), with Ray's text kept: Tune
    writes it to the trial's error.txt, retries the trial up to ``max_failures`` and goes
    on with the others. Patches this process's actor manager class once (the driver's:
    Tune runs there; :func:`pneumotune.compat.ray_internals.patch_actor_task_failed`);
    idempotent.
    """
    from ray.exceptions import OutOfMemoryError, RayActorError

    from pneumotune.compat import ray_internals

    def as_actor_error(exception: Exception) -> Exception:
        if isinstance(exception, OutOfMemoryError):
            return RayActorError(error_msg=str(exception))
        return exception

    ray_internals.patch_actor_task_failed(as_actor_error, "_pneumotune_oom")
