"""Before a search starts: will its trials fit in the memory of the nodes that run them?

A trial killed by the OOM killer an hour into a search says nothing useful; a line
before the first trial does. The estimate per trial (host memory, in bytes):

* a trial process with TensorFlow, Keras and Ray loaded: :data:`TRIAL_BASE` (measured:
  0.48 GiB for a trial of a tiny model at 64-1024 px, ``python bench/scale.py``);
* on a CPU, a training step's activations: ``batch x activations per image x 4 bytes``,
  with the ResUNet's activations per image ``~26.9 x S² x filters x sum(0.5**l, l=0..depth)``
  (the layer shapes of ``model.resunet``; cluster/capacity.py counts them layer by layer,
  and the peak memory of a CPU step grows by that much per image, measured there);
* on a GPU those live in GPU memory; the host holds the CUDA runtime instead:
  :data:`GPU_HOST` (an assumption: no GPU has measured it yet);
* the input pipeline's batches in flight and one validation chunk (float32 copies).

The dataset is not in the estimate: trials map each node's copy of their size
(:mod:`pneumotune.data.node_cache`), which is page cache. It needs the node's disk, and
RAM only for speed, so it is a note, not a refusal, when it does not fit beside the trials.

Trials per node: as many as its CPUs and GPUs allow under ``resources`` (and at most
``max_concurrent``). The nodes are those alive now; on an autoscaling cluster with no
worker yet the check says so and lets the search start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pneumotune.data.node_cache import size_bytes
from pneumotune.errors import ConfigError
from pneumotune.search.config import ExperimentConfig

GIB = 2**30
TRIAL_BASE = int(0.5 * GIB)
GPU_HOST = int(2.5 * GIB)
ACTIVATIONS_PER_PIXEL_FILTER = 26.9
# Batches in flight in the input pipeline (tf.data prefetch / PyDataset threads ahead),
# each a float32 image + mask: a generous bound.
BATCHES_IN_FLIGHT = 16
VALIDATION_PIXELS = 128 * 128 * 128  # model.inference.PREDICT_PIXELS (not imported: no Keras)
# Share of a node's memory the trials may plan on: the rest is Ray's processes, the
# driver on the head, and the page cache of the node's copy.
USABLE = 0.9


def activation_bytes(img_size: int, base_filters: int, depth: int, mixed: bool = False) -> float:
    """Bytes a training step keeps per image for the backward pass."""
    levels = sum(0.5**level for level in range(depth + 1))
    elements = ACTIVATIONS_PER_PIXEL_FILTER * img_size**2 * base_filters * levels
    return elements * (2 if mixed else 4)


def trial_bytes(
    img_size: int, base_filters: int, depth: int, batch_size: int, on_gpu: bool, mixed: bool
) -> int:
    """Host memory of one trial (see the module docstring)."""
    pixels = img_size**2
    pipeline = BATCHES_IN_FLIGHT * batch_size * pixels * 8
    validation = 3 * 4 * max(VALIDATION_PIXELS, 2 * batch_size * pixels)
    step = GPU_HOST if on_gpu else batch_size * activation_bytes(img_size, base_filters, depth)
    return int(TRIAL_BASE + pipeline + validation + step)


def largest(exp: ExperimentConfig, name: str) -> Any:
    """The largest value ``name`` can take in the experiment (fixed, chosen or ranged)."""
    for spec in exp.space:
        if spec.name == name:
            if spec.choices is not None:
                return max(spec.choices)
            return spec.high if spec.high is not None else spec.resolved_default()
    return exp.param_values(name)[0]


@dataclass(frozen=True)
class Node:
    name: str
    memory: float  # bytes Ray may use for tasks and the object store on this node
    cpus: float
    gpus: float


def nodes_now() -> list[Node]:
    """The alive nodes of the Ray this process joined."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        memory = res.get("memory", 0.0) + res.get("object_store_memory", 0.0)
        out.append(
            Node(n.get("NodeManagerAddress", "?"), memory, res.get("CPU", 0), res.get("GPU", 0))
        )
    return out


def trials_on(node: Node, exp: ExperimentConfig) -> int:
    res = exp.resources
    fits = [math.floor(node.cpus / res.cpu + 1e-9)] if res.cpu > 0 else []
    if res.gpu > 0:
        fits.append(math.floor(node.gpus / res.gpu + 1e-9))
    return min([*fits, exp.max_concurrent]) if fits else exp.max_concurrent


def check_memory(exp: ExperimentConfig, nodes: list[Node], rows: int) -> list[str]:
    """Notes for the user; raises :class:`ConfigError` (one line, what to change) when the
    trials a node would run need more memory than it has."""
    if exp.resources.workers_per_trial > 1:
        return []  # Train workers: one worker per node slot, checked by Ray Train
    size, filters = int(largest(exp, "img_size")), int(largest(exp, "base_filters"))
    depth, batch = int(largest(exp, "depth")), int(largest(exp, "batch_size"))
    mixed = bool(exp.param_values("mixed_precision")[0])
    hosts = [n for n in nodes if trials_on(n, exp) > 0]
    if not hosts:
        return ["memory check skipped: no node that can run a trial is up yet (autoscaling)"]
    notes = []
    for node in hosts:
        k = trials_on(node, exp)
        one = trial_bytes(size, filters, depth, batch, exp.resources.gpu > 0, mixed)
        need = k * one
        if need > USABLE * node.memory:
            per_trial_fit = max(0, int(USABLE * node.memory // one))
            raise ConfigError(
                f"{k} trials at {size} px (batch {batch}, {filters} filters) need ~"
                f"{need / GIB:.1f} GiB on node {node.name}, which has {node.memory / GIB:.1f} GiB "
                f"for Ray: at most {per_trial_fit} fit; lower max_concurrent or raise "
                "resources.cpu/gpu so fewer trials share a node, or lower batch_size, "
                "base_filters or img_size (pass --skip-memory-check to start anyway)"
            )
        cache = size_bytes(rows, size)
        if need + cache > USABLE * node.memory:
            notes.append(
                f"node {node.name}: the {size}-px copy of the data ({cache / GIB:.1f} GiB) does "
                f"not fit in memory beside {k} trials: they will read it from the node's disk "
                "(slower epochs; see README 'Your own data')"
            )
    return notes
