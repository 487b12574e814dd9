"""A search whose dataset is larger than the memory its trial may use still trains.

The trial runs the real trainable in a cgroup v1 memory cgroup smaller than its size's
node copy (tests/search_tests/capped_trial.py): the copy is memory-mapped page cache, so
the kernel reclaims what the trial read earlier instead of killing it. Skipped where
cgroup v1 memory is not writable.
"""

from __future__ import annotations

import json

import pytest

from bench.scale import replicate
from pneumotune.data.node_cache import SharedDataset, ensure_copy
from pneumotune.search.config import parse_experiment
from pneumotune.search.tuner import plan_search, run_search
from tests.search_tests.capped_trial import make_capped_trial
from tests.search_tests.memory_hog import (
    cgroup_v1_unavailable,
    own_memory_cgroup,
    remove_hog_cgroups,
)

ROWS, TRAIN_ROWS, SIZE = 3328, 64, 256  # 436 MB of images and masks at 256 px
# What the trial's process allocates after it moved (its model, traced steps, batches):
# ~330 MB measured; the rest of the limit is all the page cache it may hold.
LIMIT_MB = 400


@pytest.mark.slow
def test_a_trial_capped_below_its_dataset_trains_and_validates_on_all_of_it(ray_local, tmp_path):
    why = cgroup_v1_unavailable()
    if why:
        pytest.skip(f"needs a writable cgroup v1 memory controller: {why}")
    from pneumotune.data.convert import ConvertConfig, convert
    from pneumotune.data.synth import SynthConfig, write_dataset

    write_dataset(tmp_path / "raw", SynthConfig(n_images=16, size=SIZE, seed=1), workers=2)
    convert(
        ConvertConfig(src=tmp_path / "raw", out=tmp_path / "small", sizes=(SIZE,)), progress=False
    )
    # Every row but TRAIN_ROWS validates: each epoch reads the whole copy.
    replicate(tmp_path / "small", tmp_path / "big", ROWS, val_rows=ROWS - TRAIN_ROWS)
    copy = ensure_copy(SharedDataset.of(tmp_path / "big"), SIZE)
    mapped = sum((copy / f).stat().st_size for f in ("images.npy", "masks.npy"))
    assert mapped > LIMIT_MB * 2**20

    exp = parse_experiment(
        {
            "name": "capped",
            "epochs": 1,
            "num_samples": 1,
            "max_concurrent": 1,
            "warm_trials": False,
            "fixed": {
                "img_size": SIZE,
                "base_filters": 1,
                "depth": 1,
                "batch_size": 4,
                "epoch_images": 8,
            },
            "space": {"lr": {"low": 1e-3, "high": 2e-3}},
        }
    )
    plan = plan_search(exp, tmp_path / "big", name="capped", storage=tmp_path / "results")
    log = tmp_path / "cgroup.json"
    parent = own_memory_cgroup()
    try:
        summary = run_search(plan, trainable=make_capped_trial(str(parent), LIMIT_MB, str(log)))
    finally:
        remove_hog_cgroups(parent)
    trial = summary.trials[0]
    assert trial.outcome == "completed", trial.outcome
    assert [row["epoch"] for row in trial.history] == [1]
    counters = json.loads(log.read_text())
    limit = counters["limit_in_bytes"]
    assert limit == LIMIT_MB * 2**20
    # The trial's memory reached the limit, and validation read every row of the copy:
    # the kernel reclaimed the pages read earlier (at the end a fraction stays cached).
    assert counters["max_usage_in_bytes"] > 0.95 * limit
    assert counters["cache"] < mapped / 2
