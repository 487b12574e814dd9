"""One command for the day a GPU is lent: what one trial, and several side by side, get from it.

    python bench/gpu.py [--backend jax|torch|tensorflow] [--json PATH] [--smoke-test]
                        [--sizes 256:16,512:32] [--images 256] [--epochs 4] [--concurrency 2,4]
                        [--batch-size 16] [--threads N] [--compile-cache DIR]

It trains the project's ResUNet with the project's own ``pneumotune.model.train.fit`` on
synthetic images it makes itself (numpy only: no files, no network), prints four tables
and writes them to a JSON file (``--json``, default ``bench/out/gpu-<backend>.json``),
rewritten after every training run so that a run cut short keeps what it measured. Every
training run is a separate process (this script in ``--worker`` mode), so each one pays
its own start-up and compilation, as a search trial does, and its memory peak is its own.
Measured numbers only: nothing is asserted, and what "good" means below is a guide.

Time: the full run starts 8 + 2 + 4 training processes, each paying start-up and
compilation (tens of seconds on a GPU), and JAX's XLA-off runs go op by op: expect 5-10
minutes. Where one command may run less, split it: ``--sizes 256:16`` (figures 1-4 at
256 px), then ``--sizes 512:32 --concurrency ""`` (no figure 2), each with its ``--json``.

The figures
-----------
1. **One trial's training, images/s**, at 256 px with 16 base filters and 512 px with 32,
   float32 vs mixed precision (``mixed_bfloat16`` on compute capability >= 8, else
   ``mixed_float16``), XLA (``jit_compile``) on vs off. Augmentation is off here, so the
   number is what the device consumes, not what the input pipeline makes (figure 3).
   Images/s is the median over epochs 2.. (epoch 1 compiles; figure 4). Good: mixed
   precision at least 1.5x float32 on a tensor-core GPU; XLA on at least as fast as off
   (on JAX "off" runs op by op: expect several times slower). A convolution's work grows
   with pixels x filters^2, so 512/32 costs ~16x 256/16 per image: if its images/s is much
   more than 1/16 of 256/16's, one 256-px trial leaves the GPU idle (see figure 2).
2. **k trials sharing the device** (k = 2 and 4 processes, each capped at ~1/k of the GPU's
   memory by the project's ``prepare_process``, with 1/k of the CPUs), on the fastest
   setting of figure 1 at its first size: total images/s of all k, that total over one
   trial's (figure 1), and each trial's peak device memory (JAX ``peak_bytes_in_use``,
   PyTorch ``max_memory_allocated``, TensorFlow's ``get_memory_info`` peak; null on a
   CPU). The trials wait for each other after epoch 1, so their epochs 2.. overlap.
   Good: k trials well above 1x (say >= 1.3x at k = 2) mean one trial underuses the card:
   give the search fractional GPUs (1/k each); about 1x or less: one trial per GPU.
   k x the memory must fit the card with room to spare.
3. **The input pipeline's ceiling**: batches/s and images/s of the project's pipeline
   alone (``BatchSource`` + ``TrainBatches``, the tutorial's augmentation, no model) with
   1 thread and with N threads (``--threads``, default: all CPUs), per thread, next to the
   fastest training images/s of figure 1 at that size. Their ratio (pipeline / training)
   says whether the pipeline is the bottleneck: >= 2 is comfortable; below 1 a trial with
   augmentation is input-bound (the GPU waits): cheaper augmentation or more CPUs per
   trial. With k trials each has N/k threads: compare per-thread x N/k with figure 2's
   per-trial rate. (On TensorFlow a trial feeds the same batches through ``tf.data``;
   this figure measures the PyDataset on every backend, so that threads are counted.)
4. **First epoch vs steady epoch**: training seconds of epoch 1 over the median of epochs
   2.. (validation excluded), per case of figure 1. The excess is tracing, XLA compilation
   and autotuning, paid once per trial process: (ratio - 1) steady epochs of extra time
   per trial. Good: small next to a trial's epochs; a large ratio hurts most in a search
   that stops trials after 1-2 epochs (ASHA's first rungs). Beside it, "build s": fit's
   time before epoch 1 (building the model, where JAX compiles one small program per
   weight shape to initialise it, ``compile()``, the pipeline's start), also paid per trial.

``--smoke-test`` runs all four on a CPU in under a minute (32 px, 4 filters, depth 2, 16
images, 2 epochs, 2 concurrent trials; mixed precision is recorded as "skipped: no GPU",
since the project refuses it on a CPU). CI runs it on JAX with TensorFlow and Ray hidden.
To fit in the minute its runs share one JAX compilation cache (and so one CPU share,
since XLA's CPU flags are part of the cache's keys): its numbers, figure 4's above all,
mean nothing. ``--compile-cache DIR`` gives a full run such a cache; run it twice to see
what a cache shared by a search's trials would save them (figure 4 and "build s").

On a machine without network (e.g. a lent GPU machine: Python 3.12, JAX with CUDA and
PyTorch preinstalled, no TensorFlow, 64 MiB of packages per run)
---------------------------------------------------------------------------------------
``--backend jax`` (or ``torch``) imports only keras, numpy, albumentations and OpenCV (and
what they import) and the project's ``pneumotune.model`` modules: no TensorFlow, no Ray,
no pydicom. The project's source goes along as files, not installed: when ``pneumotune``
is not importable, this script maps the import names onto the repository's folders itself
(pyproject.toml's ``package-dir``: ``pneumotune`` is ``app/``, ``pneumotune.model`` is
``model/``, ...), as an editable install would, in its own process and in each worker.

albumentations is NOT optional: ``pneumotune.model.config`` (``TrainConfig``) imports
``pneumotune.model.augment``, which imports ``albumentations`` and ``cv2`` at module top
(model/augment.py), so nothing of the project's training code imports without them. The
script stops with a one-line message naming the missing module. Wheels to bring, for
CPython 3.12 manylinux x86-64, about 11 MB (where pip works: ``pip download --no-deps
--only-binary=:all: --python-version 3.12 --implementation cp --platform
manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d wheels NAME==VERSION ...``):

    keras==3.15.1 (2.4 MB)  namex==0.1.0  optree==0.20.0 (0.5 MB)
    albumentations==2.0.8 (0.4 MB)  albucore==0.0.24  simsimd==6.5.16 (0.6 MB)
    stringzilla==5.3.2 (4.2 MB)  pydantic==2.14.4 (0.5 MB)  pydantic-core==2.50.5 (2.3 MB)
    annotated-types==0.8.0  typing-inspection==0.4.5  typing-extensions==4.16.0

(pydantic 2.14 needs typing-extensions >= 4.16, newer than many images have.) keras'
other needs (absl-py, rich, h5py, ml-dtypes, numpy, packaging) and albumentations'
(scipy, PyYAML, opencv-python-headless) usually come with a JAX/PyTorch image; if OpenCV
does not, its wheel is ~61 MB (5.0.0.93) and does not fit beside the rest in 64 MiB.
There, from the repo's root:

    pip install --no-index --no-deps --target /tmp/site wheels/*.whl
    PYTHONPATH=/tmp/site:$PWD python bench/gpu.py --backend jax --json /some/out/gpu-jax.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BACKENDS = ("jax", "torch", "tensorflow")
# A worker prints its result on one line behind this marker: the backends print too.
MARKER = "GPU_BENCH_RESULT "
# Modules whose presence in a process is worth recording (CI checks TF and Ray stay out).
WATCHED = ("tensorflow", "torch", "jax", "ray", "albumentations", "cv2", "pydicom")
FRACTION_VARS = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "PNEUMOTUNE_GPU_FRACTION")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Plan:
    """What a run measures: the full run for a GPU, or the CPU smoke test."""

    models: tuple[tuple[int, int], ...] = ((256, 16), (512, 32))  # (img_size, base_filters)
    depth: int = 4
    images: int = 256  # training images per trial and epoch
    val_images: int = 16  # validation is not timed in images/s, only kept small
    epochs: int = 4  # epoch 1 compiles; the median of the others is the steady rate
    batch_size: int = 16
    concurrency: tuple[int, ...] = (2, 4)
    pipeline_batches: int = 40  # batches timed per row of figure 3
    threads: int = 0  # figure 3's N (0: all CPUs)
    worker_timeout: float = 300.0  # one worker, or one group of concurrent workers
    compile_cache: str | None = None  # a JAX compilation cache shared by the workers
    smoke: bool = False


SMOKE = Plan(
    models=((32, 4),),
    depth=2,
    images=16,
    val_images=8,  # = batch_size: validation reuses the training shapes (JAX eager)
    epochs=2,
    batch_size=8,
    concurrency=(2,),
    pipeline_batches=6,
    worker_timeout=120.0,
    smoke=True,
)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity: a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=BACKENDS, help="Keras backend (default: env/TF)")
    parser.add_argument("--json", type=Path, help="output (default bench/out/gpu-<backend>.json)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny CPU run, < 1 minute")
    parser.add_argument("--sizes", help="img_size:base_filters list (default 256:16,512:32)")
    parser.add_argument("--images", type=int, help="training images per trial (default 256)")
    parser.add_argument("--epochs", type=int, help="epochs per trial, >= 2 (default 4)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 16)")
    parser.add_argument("--concurrency", help="concurrent trials to try (default 2,4)")
    parser.add_argument("--threads", type=int, help="figure 3's N threads (default: all CPUs)")
    parser.add_argument("--compile-cache", help="JAX: a compilation cache folder for all runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one run's JSON spec
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    """The smoke or full plan, with the command line's overrides."""
    plan = SMOKE if args.smoke_test else Plan()
    changes: dict[str, Any] = {}
    if args.sizes:
        pairs = [item.split(":") for item in args.sizes.split(",")]
        changes["models"] = tuple((int(size), int(filters)) for size, filters in pairs)
    if args.concurrency is not None:  # "": no figure 2
        changes["concurrency"] = tuple(int(k) for k in args.concurrency.split(",") if k)
    for name in ("images", "epochs", "batch_size", "threads", "compile_cache"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    plan = replace(plan, **changes)
    if plan.epochs < 2:
        sys.exit("bench/gpu.py: --epochs must be >= 2 (epoch 1 compiles)")
    step = 2**plan.depth  # the ResUNet halves the image plan.depth times
    if any(size < 16 or size % step for size, _ in plan.models):
        sys.exit(f"bench/gpu.py: --sizes must be multiples of {step} and >= 16")
    return plan


# --------------------------------------------------------------------------- process set-up


class SourceTree:
    """A finder of the packages of pyproject.toml's ``package-dir`` in this repository's
    folders (``pneumotune`` -> ``app/``, ``pneumotune.model`` -> ``model/``, ...); their
    modules are then found in each package's ``__path__``."""

    def __init__(self, root: Path) -> None:
        import tomllib

        config = tomllib.loads((root / "pyproject.toml").read_text())
        dirs = config["tool"]["setuptools"]["package-dir"]
        self.packages = {name: root / folder for name, folder in dirs.items()}

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        folder = self.packages.get(name)
        if folder is None:
            return None
        init = folder / "__init__.py"
        return importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[str(folder)]
        )


def ensure_importable() -> None:
    """Map ``pneumotune`` onto this repository when it is not installed (a copied tree)."""
    if importlib.util.find_spec("pneumotune") is None:
        sys.meta_path.append(SourceTree(ROOT))


def setup_process(backend: str, cpus: float | None = None, fraction: float | None = None) -> None:
    """Everything that must happen before Keras is imported, then the imports' check.

    Keras reads ``KERAS_BACKEND`` once, at its first import; JAX reads its memory settings
    when it starts (``prepare_process``: no pre-allocation, this process' share).
    """
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ensure_importable()
    from pneumotune.model.backend import prepare_process

    if fraction is not None:
        for var in FRACTION_VARS:  # prepare_process keeps a user's value: this bench sets it
            os.environ.pop(var, None)
    prepare_process(cpus=cpus, gpu_fraction=fraction)
    require_imports(backend)


def require_imports(backend: str) -> None:
    """Import what the project's training code needs, or stop with one line saying what."""
    try:
        import albumentations  # noqa: F401
        import cv2  # noqa: F401
    except ImportError as error:
        sys.exit(
            f"bench/gpu.py: cannot import {error.name or error}: bring albumentations and "
            "opencv-python-headless (pneumotune.model.config imports pneumotune.model.augment, "
            "which imports both at module top); see `python bench/gpu.py --help`"
        )
    if backend == "tensorflow":
        from pneumotune.model.tf_quiet import import_tensorflow

        import_tensorflow()  # without its start-up notices
    try:
        import keras  # noqa: F401
    except ImportError as error:
        sys.exit(f"bench/gpu.py: cannot import keras on {backend}: {error}")


def loaded_modules() -> list[str]:
    return [name for name in WATCHED if sys.modules.get(name) is not None]


# --------------------------------------------------------------------------- data


def synth_arrays(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy images with bright discs, ~1 in 4 with a dark disc as its mask (0/1).

    numpy only (``pneumotune.data.synth`` needs pydicom and OpenCV): the speed of training
    does not depend on what the pixels show, only on their number.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        image = 60 + 80 * yy + rng.normal(0, 12, (size, size)).astype(np.float32)
        for _ in range(3):
            image += 70 * disc(xx, yy, rng)
        if rng.random() < 0.25:
            region = disc(xx, yy, rng)
            image -= 40 * region
            masks[i] = region
        images[i] = np.clip(image, 0, 255)
    return images, masks


def disc(xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
    return ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r).astype(np.float32)


# --------------------------------------------------------------------------- worker


def peak_memory() -> int | None:
    """This process' peak device memory in bytes on the active backend; None on a CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform == "gpu" else None
        return (stats or {}).get("peak_bytes_in_use")
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def wait_for_peers(folder: str, index: int, parties: int, timeout: float) -> bool:
    """A file barrier: concurrent trials start epoch 2 together, so their steady epochs
    overlap (their compilations take different times). False when a peer never came."""
    Path(folder, f"ready-{index}").touch()
    deadline = time.monotonic() + timeout
    while len(list(Path(folder).glob("ready-*"))) < parties:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def train_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one case with the project's ``fit``; per-epoch times, memory, dtype policy."""
    from pneumotune.model.augment import AugmentConfig
    from pneumotune.model.config import TrainConfig
    from pneumotune.model.devices import configure_devices, limit_threads
    from pneumotune.model.train import fit

    if spec.get("cpus"):
        limit_threads(spec["cpus"])  # TF and torch pools; JAX's were set before it started
    cfg = TrainConfig(
        img_size=spec["img_size"],
        base_filters=spec["base_filters"],
        depth=spec["depth"],
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        augment=AugmentConfig.none(),  # the device's rate, not the augmentation's
        seed=spec["index"],
        mixed_precision=spec["mixed_precision"],
        jit_compile=spec["jit"],
    )
    n, n_val = spec["images"], spec["val_images"]
    images, masks = synth_arrays(n + n_val, cfg.img_size, seed=spec["index"])
    epochs: list[dict[str, float]] = []
    synced = [True]
    t0 = time.perf_counter()
    setup = [0.0]

    def on_epoch_end(epoch: int, metrics: dict[str, float], model: Any) -> None:
        keys = ("train_seconds", "epoch_seconds", "images_per_s", "loss")
        epochs.append({"epoch": epoch, **{k: metrics[k] for k in keys}})
        if epoch == 1:  # fit's time before epoch 1: building the model, compile(), the pipeline
            setup[0] = time.perf_counter() - t0 - metrics["epoch_seconds"]
        # Epoch 2's clock starts after this returns: the wait is not counted.
        if epoch == 1 and spec.get("barrier"):
            synced[0] = wait_for_peers(
                spec["barrier"], spec["index"], spec["parties"], spec["barrier_timeout"]
            )

    fit(
        cfg,
        (images[:n], masks[:n]),
        (images[n:], masks[n:]),
        on_epoch_end=on_epoch_end,
        input_threads=spec.get("threads"),
    )
    return {
        "status": "ok",
        "policy": configure_devices(cfg.mixed_precision) or "float32",
        "peak_memory_bytes": peak_memory(),
        "synchronised": synced[0],
        "setup_s": setup[0],
        "wall_seconds": time.perf_counter() - t0,
        "epochs": epochs,
        "modules": loaded_modules(),
        **epoch_summary(epochs),
    }


def epoch_summary(epochs: list[dict[str, float]]) -> dict[str, float]:
    """Steady images/s (median of epochs 2..) and the first-epoch ratio (figure 4)."""
    later = epochs[1:] or epochs
    steady_s = statistics.median(e["train_seconds"] for e in later)
    return {
        "images_per_s": statistics.median(e["images_per_s"] for e in later),
        "first_epoch_s": epochs[0]["train_seconds"],
        "steady_epoch_s": steady_s,
        "first_vs_steady": epochs[0]["train_seconds"] / steady_s,
    }


def worker_main(backend: str, spec: dict[str, Any]) -> int:
    """Run one case; its result (or its error, in one line) behind :data:`MARKER`."""
    setup_process(backend, cpus=spec.get("cpus"), fraction=spec.get("gpu_fraction"))
    try:
        result = train_case(spec)
    except Exception as error:  # any failure is this case's result, not the whole run's
        traceback.print_exc()
        first = (str(error).strip().splitlines() or [""])[0]
        result = {"status": f"error: {type(error).__name__}: {first[:500]}"}
    print(MARKER + json.dumps(result), flush=True)
    return 0 if result["status"] == "ok" else 1


# --------------------------------------------------------------------------- driver: workers


def start_worker(backend: str, spec: dict[str, Any], logs: Path) -> dict[str, Any]:
    """This script in ``--worker`` mode; output to files (pipes could fill and block it)."""
    name = f"worker-{time.monotonic_ns()}"
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--backend", backend]
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([*cmd, "--worker", json.dumps(spec)], stdout=stdout, stderr=stderr)
    return {"proc": proc, "out": out, "err": err}


def finish_worker(handle: dict[str, Any], deadline: float) -> dict[str, Any]:
    """The worker's result line, or an ``error: ...`` status with its last stderr lines."""
    proc = handle["proc"]
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"status": "error: timed out"}
    for line in reversed(handle["out"].read_text(errors="replace").splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    lines = [x for x in handle["err"].read_text(errors="replace").splitlines() if x.strip()]
    # A traceback's own line ("ValueError: ...") says more than its last line.
    raised = [x for x in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Exit)\b", x)]
    said = " | ".join(dict.fromkeys(raised[-1:] + lines[-1:]))
    return {"status": f"error: exit {proc.returncode}: {said[-600:]}"}


def run_group(
    backend: str, specs: list[dict[str, Any]], plan: Plan, logs: Path
) -> list[dict[str, Any]]:
    """Start ``specs`` at once and wait for all of them (one spec: a plain run)."""
    handles = [start_worker(backend, spec, logs) for spec in specs]
    deadline = time.monotonic() + plan.worker_timeout
    return [finish_worker(handle, deadline) for handle in handles]


def base_spec(plan: Plan, size: int, filters: int) -> dict[str, Any]:
    return {
        "img_size": size,
        "base_filters": filters,
        "depth": plan.depth,
        "epochs": plan.epochs,
        "batch_size": plan.batch_size,
        "images": plan.images,
        "val_images": plan.val_images,
        "index": 0,
    }


# --------------------------------------------------------------------------- figures


def training_cases(plan: Plan, has_gpu: bool) -> list[dict[str, Any]]:
    """Figure 1's rows, in order: every size x precision x XLA (mixed: skipped on a CPU)."""
    rows = []
    for size, filters in plan.models:
        for mixed in (False, True):
            for jit in ("on", "off"):
                row = {"img_size": size, "base_filters": filters, "jit": jit}
                row["precision"] = "mixed" if mixed else "float32"
                row["status"] = "skipped: no GPU" if mixed and not has_gpu else "pending"
                rows.append(row)
    return rows


def figure_training(
    backend: str, plan: Plan, rows: list[dict[str, Any]], logs: Path, save: Callable[[], None]
) -> None:
    """Figure 1 (and 4's data): one worker per row of ``rows``, in turn, so that each has the
    device to itself; ``save()`` after each (a run cut short keeps the rows done).

    The smoke test gives each the CPU share of figure 2's trials: XLA's CPU flags are part
    of a JAX compilation cache's keys, so all its runs then share their compiled programs.
    """
    share = max(1, cpu_count() // max(plan.concurrency, default=1)) if plan.smoke else None
    for row in rows:
        if row["status"] != "pending":
            continue
        t0 = time.perf_counter()
        spec = {**case_spec(plan, row), "cpus": share, "threads": share}
        row.update(run_group(backend, [spec], plan, logs)[0])
        rate = f", {row['images_per_s']:.1f} images/s" if row["status"] == "ok" else ""
        print(f"  {case_name(row)}: {row['status']}{rate} ({elapsed(t0)})", flush=True)
        save()


def case_spec(plan: Plan, row: dict[str, Any]) -> dict[str, Any]:
    spec = base_spec(plan, row["img_size"], row["base_filters"])
    return {**spec, "mixed_precision": row["precision"] == "mixed", "jit": row["jit"]}


def elapsed(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f} s"


def figure_concurrency(
    backend: str,
    plan: Plan,
    fig: dict[str, Any],
    training: list[dict[str, Any]],
    logs: Path,
    save: Callable[[], None],
) -> None:
    """Figure 2 into ``fig``: k workers at once on the fastest figure-1 setting of the first
    size, a row per k, ``save()`` after each."""
    size = plan.models[0][0]
    ok = [r for r in training if r["status"] == "ok" and r["img_size"] == size]
    if not ok:
        fig["status"] = "skipped: no successful one-trial run at this size"
        return
    best = max(ok, key=lambda r: r["images_per_s"])
    one = {"trials": 1, "status": "ok", "total_images_per_s": best["images_per_s"]}
    one |= {"per_trial_images_per_s": [best["images_per_s"]], "vs_one_trial": 1.0}
    one["peak_memory_bytes"] = [best.get("peak_memory_bytes")]
    fig.update(status="ok", case=case_name(best), rows=[one])
    for k in plan.concurrency:
        t0 = time.perf_counter()
        fig["rows"].append(concurrent_trials(backend, plan, best, k, logs))
        row = fig["rows"][-1]
        rate = f", {row['total_images_per_s']:.1f} images/s" if "total_images_per_s" in row else ""
        print(f"  {k} trials: {row['status']}{rate} ({elapsed(t0)})", flush=True)
        save()


def concurrent_trials(
    backend: str, plan: Plan, best: dict[str, Any], k: int, logs: Path
) -> dict[str, Any]:
    """One row of figure 2: ``k`` copies of ``best``, each with 1/k of memory and CPUs."""
    barrier = tempfile.mkdtemp(prefix=f"barrier-{k}-", dir=logs)
    cpus = max(1, cpu_count() // k)
    spec = case_spec(plan, best)
    spec |= {"cpus": cpus, "threads": cpus, "gpu_fraction": round(0.95 / k, 3)}
    spec |= {"barrier": barrier, "parties": k, "barrier_timeout": plan.worker_timeout / 2}
    results = run_group(backend, [{**spec, "index": i} for i in range(k)], plan, logs)
    failed = [r["status"] for r in results if r["status"] != "ok"]
    if failed:
        return {"trials": k, "status": failed[0]}
    total = sum(r["images_per_s"] for r in results)
    return {
        "trials": k,
        "status": "ok" if all(r["synchronised"] for r in results) else "ok (not synchronised)",
        "total_images_per_s": total,
        "vs_one_trial": total / best["images_per_s"],
        "per_trial_images_per_s": [r["images_per_s"] for r in results],
        "peak_memory_bytes": [r["peak_memory_bytes"] for r in results],
        "setup_s": [r["setup_s"] for r in results],  # compiled side by side
        "first_epoch_s": [r["first_epoch_s"] for r in results],
        "gpu_fraction": spec["gpu_fraction"],
        "cpus_per_trial": cpus,
    }


def pipeline_rate(plan: Plan, size: int, threads: int) -> dict[str, float]:
    """Batches/s and images/s of the project's input pipeline alone, tutorial augmentation."""
    from pneumotune.model.augment import AugmentConfig
    from pneumotune.model.config import TrainConfig
    from pneumotune.model.pipeline import BatchSource, TrainBatches, steps_per_epoch
    from pneumotune.model.train import epoch_plan

    n = 4 * plan.batch_size
    steps = steps_per_epoch(n, plan.batch_size)
    cfg = TrainConfig(
        img_size=size,
        depth=plan.depth,
        epochs=math.ceil(plan.pipeline_batches / steps),
        batch_size=plan.batch_size,
        augment=AugmentConfig.tutorial(),
    )
    images, masks = synth_arrays(n, size, seed=1)
    source = BatchSource(cfg, images, masks, epoch_plan(cfg, masks.reshape(n, -1).any(axis=1)))
    batches = TrainBatches(source, threads)
    made = 0
    t0 = time.perf_counter()  # the pool's start-up counts: a trial pays it too
    try:
        for i in range(plan.pipeline_batches):
            made += len(batches[i][0])
    finally:
        batches.close()
    seconds = time.perf_counter() - t0
    return {
        "batches_per_s": plan.pipeline_batches / seconds,
        "images_per_s": made / seconds,
        "images_per_s_per_thread": made / seconds / threads,
    }


def figure_pipeline(plan: Plan, training: list[dict[str, Any]]) -> dict[str, Any]:
    """Figure 3: the pipeline's rate (1 and N threads) next to the fastest training rate."""
    n_threads = plan.threads or cpu_count()
    rows = []
    for size in dict.fromkeys(size for size, _ in plan.models):
        ok = [r["images_per_s"] for r in training if r["status"] == "ok" and r["img_size"] == size]
        consumed = max(ok) if ok else None
        for threads in dict.fromkeys((1, n_threads)):
            row = {"img_size": size, "threads": threads, **pipeline_rate(plan, size, threads)}
            row["training_images_per_s"] = consumed
            row["pipeline_vs_training"] = row["images_per_s"] / consumed if consumed else None
            rows.append(row)
    return {"status": "ok", "augment": "tutorial", "batch_size": plan.batch_size, "rows": rows}


def figure_first_epoch(training: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Figure 4, from figure 1's runs: epoch 1's training seconds over the steady ones."""
    keys = ("setup_s", "first_epoch_s", "steady_epoch_s", "first_vs_steady")
    return [
        {"case": case_name(r), **{k: r[k] for k in keys}} for r in training if r["status"] == "ok"
    ]


# --------------------------------------------------------------------------- tables


def case_name(row: dict[str, Any]) -> str:
    precision = row.get("policy", row["precision"])
    return f"{row['img_size']} px/{row['base_filters']} f, {precision}, xla {row['jit']}"


def gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def num(value: float | None, fmt: str = ".1f") -> str:
    return "n/a" if value is None else format(value, fmt)


def print_training(rows: list[dict[str, Any]]) -> None:
    print("\nFigure 1: one trial's training, augmentation off (images/s: median of epochs 2..)")
    print(f"{'size':>5} {'filters':>7}  {'precision':<15}{'xla':<5}{'images/s':>10}  peak memory")
    for r in rows:
        head = f"{r['img_size']:>5} {r['base_filters']:>7}  {r.get('policy', r['precision']):<15}"
        head += f"{r['jit']:<5}"
        if r["status"] != "ok":
            print(f"{head}{r['status']}")
            continue
        print(f"{head}{r['images_per_s']:>10.1f}  {gib(r['peak_memory_bytes'])}")


def print_concurrency(fig: dict[str, Any]) -> None:
    print(f"\nFigure 2: trials sharing the device ({fig.get('case', fig['status'])})")
    print(f"{'trials':>6}{'total images/s':>16}{'vs 1 trial':>12}  per trial: images/s, memory")
    for r in fig["rows"]:
        if not r["status"].startswith("ok"):
            print(f"{r['trials']:>6}  {r['status']}")
            continue
        each = ", ".join(
            f"{rate:.1f} ({gib(mem)})"
            for rate, mem in zip(r["per_trial_images_per_s"], r["peak_memory_bytes"], strict=True)
        )
        note = "" if r["status"] == "ok" else f"  [{r['status']}]"
        total = f"{r['total_images_per_s']:>16.1f}{r['vs_one_trial']:>12.2f}"
        print(f"{r['trials']:>6}{total}  {each}{note}")


def print_pipeline(fig: dict[str, Any]) -> None:
    print(f"\nFigure 3: input pipeline alone, tutorial augmentation, batch {fig['batch_size']}")
    print(
        f"{'size':>5}{'threads':>8}{'batches/s':>11}{'images/s':>10}{'per thread':>12}"
        f"{'training img/s':>16}{'pipeline/training':>19}"
    )
    for r in fig["rows"]:
        print(
            f"{r['img_size']:>5}{r['threads']:>8}{r['batches_per_s']:>11.1f}"
            f"{r['images_per_s']:>10.1f}{r['images_per_s_per_thread']:>12.1f}"
            f"{num(r['training_images_per_s']):>16}{num(r['pipeline_vs_training'], '.2f'):>19}"
        )


def print_first_epoch(rows: list[dict[str, Any]]) -> None:
    print("\nFigure 4: first epoch vs steady epoch (training seconds, validation excluded)")
    print(f"{'case':<40}{'build s':>8}{'epoch 1 s':>10}{'steady s':>10}{'ratio':>8}")
    for r in rows:
        print(
            f"{r['case']:<40}{r['setup_s']:>8.2f}{r['first_epoch_s']:>10.2f}"
            f"{r['steady_epoch_s']:>10.3f}{r['first_vs_steady']:>8.1f}"
        )


# --------------------------------------------------------------------------- driver


def describe(backend: str, plan: Plan) -> dict[str, Any]:
    """Versions, devices and settings: what a number in the JSON was measured on."""
    import keras

    from pneumotune.model.devices import list_gpus

    gpus = [{"name": g.name, "compute_capability": g.compute_capability} for g in list_gpus()]
    return {
        "backend": backend,
        "keras": keras.__version__,
        backend: getattr(sys.modules.get(backend), "__version__", None),
        "python": platform.python_version(),
        "cpus": cpu_count(),
        "gpus": gpus,
        "plan": asdict(plan),
        "modules": loaded_modules(),
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def failures(report: dict[str, Any]) -> list[str]:
    """Every ``error: ...`` status in the report (a smoke test must have none)."""
    rows = report.get("training", []) + report.get("concurrency", {}).get("rows", [])
    return [r["status"] for r in rows if r["status"].startswith("error")]


def share_compile_cache(folder: str) -> None:
    """Every worker started after this reads and writes one JAX compilation cache, of all
    programs however small: a later run with the same shapes skips their compilation."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def driver_main(backend: str, plan: Plan, out: Path) -> int:
    t0 = time.perf_counter()
    setup_process(backend)
    meta = describe(backend, plan)
    has_gpu = bool(meta["gpus"])
    print(
        f"pneumotune GPU benchmark on {backend} (keras {meta['keras']}), "
        f"{len(meta['gpus'])} GPU(s) {[g['name'] for g in meta['gpus']]}, {meta['cpus']} CPUs"
        f"{', smoke test' if plan.smoke else ''}",
        flush=True,
    )
    report: dict[str, Any] = {"meta": meta, "training": training_cases(plan, has_gpu)}
    report["concurrency"] = {"status": "not run", "rows": []}

    def save() -> None:
        report["first_epoch"] = figure_first_epoch(report["training"])
        write_json(report, out)

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        logs = Path(tmp)
        # The smoke test shares one (its runs compile the same small programs: ~3x faster
        # on a CPU); a full run only when asked, since figure 4 is then no trial's cost.
        cache = plan.compile_cache or (str(logs / "jax-cache") if plan.smoke else None)
        if cache and backend == "jax":
            share_compile_cache(cache)
            meta["jax_compilation_cache"] = "temporary" if plan.smoke else cache
        print("figure 1: one trial per setting", flush=True)
        figure_training(backend, plan, report["training"], logs, save)
        print("figure 2: concurrent trials", flush=True)
        figure_concurrency(backend, plan, report["concurrency"], report["training"], logs, save)
    print("figure 3: input pipeline", flush=True)
    t1 = time.perf_counter()
    report["input_pipeline"] = figure_pipeline(plan, report["training"])
    print(f"  done ({elapsed(t1)})", flush=True)
    report["meta"]["total_seconds"] = time.perf_counter() - t0
    save()
    print_training(report["training"])
    print_concurrency(report["concurrency"])
    print_pipeline(report["input_pipeline"])
    print_first_epoch(report["first_epoch"])
    print(f"\nwrote {out} in {report['meta']['total_seconds']:.1f} s")
    errors = failures(report)
    for error in errors:
        print(f"FAILED: {error}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before anything imports Keras: it reads the backend once, at its first import.
    backend = args.backend or os.environ.get("KERAS_BACKEND") or "tensorflow"
    os.environ["KERAS_BACKEND"] = backend
    if args.worker:
        return worker_main(backend, json.loads(args.worker))
    out = args.json or HERE / "out" / f"gpu-{backend}.json"
    return driver_main(backend, make_plan(args), out)


if __name__ == "__main__":
    sys.exit(main())
