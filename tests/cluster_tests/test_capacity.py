"""The cost model behind cluster/README.md's capacity plan, checked against independent
counts: TensorFlow's own profiler for the FLOPs, hand-computed ASHA budgets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CAPACITY = Path(__file__).resolve().parents[2] / "cluster" / "capacity.py"


@pytest.fixture(scope="module")
def capacity():
    # cluster/ is not a package (it is not installed with pneumotune): load by path.
    spec = importlib.util.spec_from_file_location("pneumotune_capacity", CAPACITY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize(("img_size", "base_filters", "depth"), [(32, 4, 2), (64, 8, 3)])
def test_conv_flops_agree_with_tensorflows_profiler(capacity, img_size, base_filters, depth):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    from pneumotune.model.resunet import build_resunet

    model = build_resunet(img_size, base_filters, depth)
    forward = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, img_size, img_size, 1], tf.float32)
    )
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    graph = convert_variables_to_constants_v2(forward).graph
    profiled = tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops
    ours = 2 * capacity.model_cost(img_size, base_filters, depth).forward_macs
    # The profiler also counts bias adds, BatchNorm and residual adds (a few %), which the
    # cost model leaves out on purpose: it must be below, and close.
    assert ours <= profiled <= 1.05 * ours


def test_activation_count_of_a_tiny_model(capacity):
    cost = capacity.model_cost(16, 2, 1)
    # Hand count, per image, layer by layer (S=16, f0=2, f1=4; depth 1):
    s0, s1 = 16 * 16, 8 * 8
    stem = s0 * (2 + 2 + 2 + 2 + 2 + 2)  # conv1, bn1, relu1, conv2, shortcut conv, bn
    stem += s0 * 2  # add
    enc1 = s0 * 2 * 2 + s1 * 4 * 7  # bn1+relu1 (full res, 2 ch); conv1..add at half res
    bridge = s1 * 4 * 6  # bn, relu, conv, bn, relu, conv
    dec0 = s0 * 4 + s0 * 6  # upsample (4 ch), concat (4 + 2 ch)
    dec0 += s0 * 6 * 2 + s0 * 2 * 7  # bn1+relu1 on 6 ch; conv1, bn2, relu2, conv2, sc conv,
    # sc bn, add on 2 ch
    head = s0 * 1 * 2  # conv, sigmoid
    rescale = s0
    assert cost.activation_elements == rescale + stem + enc1 + bridge + dec0 + head


@pytest.mark.parametrize(
    ("num_samples", "max_t", "grace", "rf", "expected"),
    [
        (8, 4, 1, 2, 8 * 1 + 4 * 1 + 2 * 2),  # rungs 1, 2; the top quarter runs 3..4
        (9, 9, 1, 3, 9 * 1 + 3 * 2 + 1 * 6),  # rungs 1, 3; the top ninth runs 4..9
        (4, 5, 5, 2, 4 * 5),  # grace == max_t: no early stopping
    ],
)
def test_asha_budget(capacity, num_samples, max_t, grace, rf, expected):
    assert capacity.asha_trial_epochs(num_samples, max_t, grace, rf) == pytest.approx(expected)


def test_roofline_takes_the_slower_of_compute_and_memory(capacity):
    cost = capacity.model_cost(256, 16, 4)
    fp32, _, bandwidth, _ = capacity.GPUS["T4 (g4dn, n1+T4)"]
    ips = capacity.gpu_images_per_s(cost, "T4 (g4dn, n1+T4)", mixed=False)
    compute = fp32 * 1e12 * capacity.U_COMPUTE / (cost.train_gflop * 1e9)
    memory = (
        bandwidth
        * 1e9
        * capacity.U_MEMORY
        / (capacity.TRAFFIC_PASSES * 4 * cost.activation_elements)
    )
    assert ips == pytest.approx(min(compute, memory))
    # Mixed precision halves the bytes and raises the peak: never slower.
    assert capacity.gpu_images_per_s(cost, "T4 (g4dn, n1+T4)", mixed=True) >= ips
