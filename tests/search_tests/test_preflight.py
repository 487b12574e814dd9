"""The memory check before a search starts (search.preflight): table tests of the
estimate, and a real search refused before any trial starts."""

from __future__ import annotations

import pytest

from pneumotune.errors import ConfigError
from pneumotune.search.config import parse_experiment
from pneumotune.search.preflight import (
    GIB,
    Node,
    activation_bytes,
    check_memory,
    largest,
    trial_bytes,
    trials_on,
)
from pneumotune.search.tuner import plan_search, run_search


def experiment(**changes):
    raw = {
        "name": "preflight",
        "epochs": 2,
        "num_samples": 4,
        "max_concurrent": 4,
        "resources": {"cpu": 4, "gpu": 0.5},
        "fixed": {"depth": 5, "batch_size": 8, "mixed_precision": True},
        "space": {
            "img_size": [512, 1024],
            "base_filters": [16, 32],
            "lr": {"low": 1e-4, "high": 1e-3},
        },
        **changes,
    }
    return parse_experiment(raw)


@pytest.mark.parametrize(
    ("size", "filters", "depth", "counted"),
    [
        # Activations per image counted layer by layer on the built model
        # (cluster/capacity.py model_cost): the estimate is within 1% of them.
        (64, 8, 4, 1_697_792),
        (512, 16, 5, 221_904_896),
        (1024, 16, 5, 887_619_584),
    ],
)
def test_activation_estimate_matches_the_built_models_count(size, filters, depth, counted):
    assert activation_bytes(size, filters, depth) / 4 == pytest.approx(counted, rel=0.01)


def test_the_largest_value_of_each_parameter_is_planned_for():
    exp = experiment()
    assert largest(exp, "img_size") == 1024
    assert largest(exp, "base_filters") == 32
    assert largest(exp, "batch_size") == 8  # fixed
    assert largest(exp, "lr") == 1e-3  # the top of a range


@pytest.mark.parametrize(
    ("node", "trials"),
    [
        (Node("gpu", 32 * GIB, cpus=8, gpus=1), 2),  # siim.yaml: 2 per GPU, 4 CPUs each
        (Node("big", 64 * GIB, cpus=16, gpus=4), 4),  # capped by max_concurrent
        (Node("head", 64 * GIB, cpus=16, gpus=0), 0),  # no GPU: runs none
        (Node("small", 32 * GIB, cpus=2, gpus=1), 0),  # too few CPUs for one
    ],
)
def test_trials_per_node_follow_the_resources(node, trials):
    assert trials_on(node, experiment()) == trials


def test_a_siim_plan_fits_a_32_gib_gpu_node_and_notes_the_page_cache():
    notes = check_memory(experiment(), [Node("gpu-1", 32 * GIB, 8, 1)], rows=12_089)
    assert len(notes) == 1 and "1024-px copy" in notes[0] and "node's disk" in notes[0]


def test_a_plan_too_large_for_its_nodes_is_refused_with_what_to_change():
    cpu_plan = experiment(resources={"cpu": 1, "gpu": 0}, max_concurrent=8)
    with pytest.raises(
        ConfigError, match=r"8 trials at 1024 px .* at most \d+ fit; lower max_concurrent"
    ):
        check_memory(cpu_plan, [Node("laptop", 16 * GIB, 8, 0)], rows=100)


def test_no_node_for_a_trial_yet_skips_the_check():
    notes = check_memory(experiment(), [Node("head", 64 * GIB, 16, 0)], rows=100)
    assert notes and "skipped" in notes[0]


def test_trial_estimate_grows_with_batch_on_cpu_not_on_gpu():
    cpu = [trial_bytes(512, 16, 5, b, on_gpu=False, mixed=False) for b in (4, 8)]
    gpu = [trial_bytes(512, 16, 5, b, on_gpu=True, mixed=False) for b in (4, 8)]
    assert cpu[1] - cpu[0] > 4 * activation_bytes(512, 16, 5) * 0.99
    assert gpu[1] - gpu[0] < 0.25 * GIB  # the activations are the GPU's: batches in flight only


def test_a_real_search_that_cannot_fit_is_refused_before_any_trial(
    tiny_dataset, ray_local, tmp_path
):
    exp = parse_experiment(
        {
            "name": "too-big",
            "epochs": 1,
            "num_samples": 2,
            "max_concurrent": 2,
            "resources": {"cpu": 1, "gpu": 0},
            "fixed": {"img_size": 64, "depth": 4, "batch_size": 4096, "base_filters": 16},
            "space": {"lr": {"low": 1e-4, "high": 1e-3}},
        }
    )
    plan = plan_search(exp, tiny_dataset, name="too-big", storage=tmp_path)
    with pytest.raises(ConfigError, match=r"2 trials at 64 px .*batch 4096"):
        run_search(plan)
    assert not (tmp_path / "too-big").exists()  # nothing started, nothing written
