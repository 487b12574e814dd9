"""A search driver run as its own process, so a test can SIGKILL it and resume.

python -m tests.search_tests.kill_driver DATASET STORAGE ATTEMPT_LOG [--resume]
"""

from __future__ import annotations

import sys
from pathlib import Path

import ray

from pneumotune.search.tuner import plan_search, run_search
from tests.search_tests.cheap import make_cheap_trial
from tests.search_tests.helpers import wiring_experiment


def main(argv: list[str]) -> int:
    dataset, storage, log = Path(argv[0]), Path(argv[1]), argv[2]
    resume = "--resume" in argv
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    exp = wiring_experiment(num_samples=6, epochs=4, asha={"grace_period": 4})
    plan = plan_search(exp, dataset, name="killed", storage=storage)
    summary = run_search(
        plan, resume=resume, trainable=make_cheap_trial(epoch_seconds=1.0, attempt_log=log)
    )
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
