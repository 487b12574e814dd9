"""How long a trial's tag actor takes from creation to ALIVE (issue 23).

    python bench/tag_start.py [--tags 4] [--busy 0]

Starts a local Ray (2 CPUs, no dashboard) and creates ``--tags`` tag actors one after
the other, as a trial runner does, twice: the tag as shipped
(:class:`pneumotune.search.watch.tag_actor.TrialTag`, whose module imports nothing), and
the same tag whose process first imports ``pneumotune.model.config`` (what the tag's
process imported when the class lived in ``trial_telemetry``: albumentations, OpenCV,
NumPy). Per tag: seconds from ``.remote()`` to the return of its first ``log`` call,
i.e. until it is ALIVE and has printed a line (Ray runs no method before the actor is
ALIVE). ``--busy N`` keeps N processes spinning meanwhile, for a loaded node.

Numbers only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

from pneumotune.search.watch.tag_actor import TrialTag


class ImportingTag(TrialTag):
    """The tag, but its process imports what the old tag's module did."""

    def __init__(self, label: str) -> None:
        import pneumotune.model.config  # noqa: F401

        super().__init__(label)


def _spin() -> None:
    while True:
        pass


def time_tags(ray, cls: type, n: int) -> list[float]:
    actor = ray.remote(num_cpus=0, max_restarts=0)(cls)
    seconds = []
    for i in range(n):
        t0 = time.perf_counter()
        tag = actor.remote(f"trial_{i:05d} bench")
        ray.get(tag.log.remote(f"trial_{i:05d} first line"))
        seconds.append(time.perf_counter() - t0)
        ray.kill(tag)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tags", type=int, default=4)
    p.add_argument("--busy", type=int, default=0)
    args = p.parse_args()
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, busy={args.busy}")
        for name, cls in (("TrialTag (tag_actor)", TrialTag), ("+ model.config", ImportingTag)):
            s = time_tags(ray, cls, args.tags)
            print(
                f"{name:22s} creation -> ALIVE + first line: median {statistics.median(s):5.1f} s"
                f"  max {max(s):5.1f} s  ({', '.join(f'{x:.1f}' for x in s)})"
            )
    finally:
        ray.shutdown()
        for s in spinners:
            s.terminate()


if __name__ == "__main__":
    main()
