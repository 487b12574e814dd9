"""The real trainable in a memory cgroup smaller than its dataset: the beyond-memory path.

The trial imports Keras first (the cgroup v1 charge of pages stays where they were made,
so the limit is about what the trial does after the move), drops its node copy's pages
from the page cache (written by the driver, they are charged to the driver's cgroup),
moves into a new cgroup of ``limit_mb`` and trains with
:func:`pneumotune.search.trainable.train_trial`. Every page of the copy it reads is then
charged to it, and the kernel must reclaim them to stay under the limit. It writes the
cgroup's counters to ``log`` when it ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.search_tests.memory_hog import enter_memory_cgroup


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_capped_trial(parent: str, limit_mb: int, log: str):
    def capped_trial(config: dict[str, Any], data: Any) -> None:
        import keras  # noqa: F401  (imported outside the limit)

        from pneumotune.data.node_cache import ensure_copy
        from pneumotune.search.trainable import train_trial

        folder = ensure_copy(data, int(config["img_size"]))
        for name in ("images.npy", "masks.npy"):
            drop_from_page_cache(folder / name)
        cgroup = enter_memory_cgroup(Path(parent), limit_mb)
        try:
            train_trial(config, data)
        finally:
            counters = {
                name: int((cgroup / f"memory.{name}").read_text())
                for name in ("max_usage_in_bytes", "failcnt", "limit_in_bytes")
            }
            for line in (cgroup / "memory.stat").read_text().splitlines():
                key, value = line.split()
                if key in ("rss", "cache", "mapped_file"):
                    counters[key] = int(value)
            Path(log).write_text(json.dumps(counters))

    return capped_trial
