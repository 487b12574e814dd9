"""A search driver whose trials Ray's memory monitor kills, as a process of its own: the
monitor's threshold is read when Ray starts, so this driver starts its own Ray with a
threshold a little above the memory the machine uses now, and its one trial (retried
once) holds more and more memory until the monitor kills it.

python -m tests.search_tests.oom_driver DATASET STORAGE
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HEADROOM_BYTES = 1200 * 2**20  # the trial may hold about this much before the kill
GROW_MB = 600  # what the trial holds more each epoch: killed in its second or third


def monitor_threshold(meminfo: str, headroom: int = HEADROOM_BYTES) -> float:
    """``RAY_memory_usage_threshold`` (a fraction of the node's memory) for a kill once
    ``headroom`` bytes more than now are in use (used: MemTotal - MemAvailable)."""
    kb = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            kb[key] = int(rest.split()[0]) * 1024
    total, available = kb["MemTotal"], kb["MemAvailable"]
    return (total - available + headroom) / total


def main(argv: list[str]) -> int:
    dataset, storage = Path(argv[0]), Path(argv[1])
    threshold = monitor_threshold(Path("/proc/meminfo").read_text())
    os.environ["RAY_memory_usage_threshold"] = f"{threshold:.4f}"  # noqa: SIM112 (Ray's name)
    os.environ["RAY_memory_monitor_refresh_ms"] = "100"  # noqa: SIM112
    import ray

    from pneumotune.search.tuner import plan_search, run_search
    from tests.search_tests.helpers import wiring_experiment
    from tests.search_tests.memory_hog import make_memory_hog

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    exp = wiring_experiment(num_samples=1, epochs=8, max_failures=1, asha={"grace_period": 8})
    plan = plan_search(exp, dataset, name="monitor", storage=storage)
    hog = make_memory_hog(None, grow_mb=GROW_MB, kill_epoch=None)
    summary = run_search(plan, trainable=hog)
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
