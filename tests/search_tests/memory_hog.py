"""A trainable that the kernel's OOM killer really kills, for the out-of-memory tests.

The trial process moves itself into a new cgroup v1 memory cgroup (a child of the one
it runs in) with a small limit, then holds more memory at every epoch, reporting its
private memory (:func:`pneumotune.memory.memory_metrics`) as the real trainable does,
until the kernel kills it with SIGKILL, as it would a trial whose batch is too large.
Only the pages allocated after the move count against the limit (cgroup v1 does not
move the charge of existing pages), so the limit is about the hog's own allocations,
whatever the worker already held. A retried trial holds its epochs' memory again from
its checkpoint on, and is killed again in the same epoch.

Needs root and a writable cgroup v1 memory hierarchy: :func:`cgroup_v1_unavailable`
says why not, for the test to skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from pneumotune.memory import memory_metrics

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
PREFIX = "pneumotune-oom-"


def own_memory_cgroup(proc_cgroup: str | None = None) -> Path | None:
    """This process's cgroup v1 memory folder, from ``/proc/self/cgroup``; None without one."""
    text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return MEMORY_ROOT / path.strip().lstrip("/")
    return None


def cgroup_v1_unavailable() -> str | None:
    """Why this machine cannot run the hog (None: it can): makes and removes a probe."""
    parent = own_memory_cgroup()
    if parent is None or not (parent / "memory.limit_in_bytes").is_file():
        return "no cgroup v1 memory controller for this process (/sys/fs/cgroup/memory)"
    probe = parent / f"{PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir()
        (probe / "memory.limit_in_bytes").write_text(str(64 * 2**20))
    except OSError as exc:
        return f"cannot make a memory cgroup under {parent}: {exc}"
    finally:
        if probe.is_dir():
            probe.rmdir()
    return None


def remove_hog_cgroups(parent: Path) -> None:
    """Remove the (empty, once their process died) cgroups the hogs made under ``parent``."""
    for d in parent.glob(f"{PREFIX}*"):
        with contextlib.suppress(OSError):  # a process still in it: the kernel refuses
            d.rmdir()


def enter_memory_cgroup(parent: Path, limit_mb: int) -> Path:
    """Move this process (all its threads) into a new memory cgroup of ``limit_mb``."""
    cg = parent / f"{PREFIX}{os.getpid()}"
    cg.mkdir(exist_ok=True)
    (cg / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
    memsw = cg / "memory.memsw.limit_in_bytes"
    if memsw.is_file():  # with swap, no swapping out of the limit either
        memsw.write_text(str(limit_mb * 2**20))
    (cg / "cgroup.procs").write_text(str(os.getpid()))
    return cg


def make_memory_hog(
    parent: str | None,
    *,
    limit_mb: int = 256,
    grow_mb: int = 64,
    kill_epoch: int | None = 3,
    spare_lr: float | None = None,
):
    """A cheap trainable that holds ``grow_mb`` more MB each epoch inside a ``limit_mb``
    cgroup under ``parent``, and in ``kill_epoch`` four times the limit at once: killed
    there after reporting the epochs before it (a retry from a checkpoint too), whatever
    else the worker's Python, Ray and pyarrow allocate meanwhile. ``parent`` None: no
    cgroup, and only the growth (for Ray's memory monitor; ``kill_epoch`` None: grow
    until killed). A trial whose lr equals ``spare_lr`` trains normally (a survivor
    beside the killed)."""

    def memory_hog(config: dict[str, Any], data: Any) -> None:
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"]
        hog = spare_lr is None or config["lr"] != spare_lr
        if hog and parent is not None:
            enter_memory_cgroup(Path(parent), limit_mb)
        held: list[bytearray] = []
        for epoch in range(start + 1, config["epochs"] + 1):
            if hog and epoch == kill_epoch:
                held.append(bytearray(b"\x01") * (4 * limit_mb * 2**20))  # killed here
            while hog and len(held) < epoch:  # what epochs 1..epoch hold (a resumed one too)
                held.append(bytearray(b"\x01") * (grow_mb * 2**20))  # touched: resident
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                tune.report(
                    {"val_iou": 0.1 * epoch, **memory_metrics()},
                    checkpoint=tune.Checkpoint.from_directory(d),
                )

    return memory_hog
