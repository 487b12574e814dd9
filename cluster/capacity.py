"""Capacity numbers for cluster/README.md: what the ResUNet costs per image, measured on
this machine's CPU where possible and extrapolated to GPUs where not.

Needs pneumotune installed (``pip install -e .``): it imports ``pneumotune.model`` (the
ResUNet, the augmentation) and ``pneumotune.search.config`` (the experiments). From the
repository root::

    python cluster/capacity.py              # the whole table (~10-20 min on 2 cores)
    python cluster/capacity.py --quick      # analytic numbers only (seconds)

What is computed, and how:

* **Analytic, exact for the model as built** (``model.resunet.build_resunet``): for every
  layer the output shape, so the activation elements per image (the sum over layers of
  their outputs: what a training step keeps for the backward pass, to within the few
  outputs TensorFlow can drop or fuse), and for every ``Conv2D`` its multiply-adds
  (``H_out * W_out * k_h * k_w * C_in * C_out``). Forward FLOPs = 2 x MACs; a training
  step ~ 3 x forward (forward, gradient w.r.t. inputs, gradient w.r.t. weights).
  BatchNorm / ReLU / Add / UpSampling FLOPs are left out (< 2% of the convolutions),
  but their activations are counted: they cost memory and bandwidth, not arithmetic.
* **Measured on this CPU**: training images/s of ``keras.Model.fit`` on random data
  (the model, Adam, binary cross-entropy; no augmentation, no validation), and the
  peak-RSS growth per extra image in the batch (fresh process per batch size), which
  checks the activation estimate against what TensorFlow really holds. Also the
  albumentations cost per image of the tutorial augmentation (one core), which says how
  many vCPUs a GPU needs so that the input pipeline keeps up.
* **Extrapolated to GPUs** (no GPU here): a roofline per image,
  ``t = max(train_flops / (peak_flops * U_COMPUTE), traffic_bytes / (bandwidth * U_MEMORY))``
  with ``traffic_bytes = TRAFFIC_PASSES * activation_elements * bytes_per_element``,
  for float32 (FP32 peak, 4 bytes) and mixed float16 (FP16 tensor-core peak, 2 bytes).
  Every extrapolated number is printed with an ``~`` and labelled so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Assumptions of the GPU extrapolation (stated in the README next to the numbers).
U_COMPUTE = 0.40  # share of peak FLOP/s a cuDNN conv net of this width sustains
U_MEMORY = 0.60  # share of peak DRAM bandwidth the elementwise layers sustain
TRAFFIC_PASSES = 4  # activation reads+writes per training step: fwd write, fwd read,
# bwd read, gradient write (the gradients of the activations are as large as they are)
TRAIN_OVER_FORWARD = 3.0
EVAL_OVER_TRAIN = 1.0 / 3.0  # validation is a forward pass only

# Datasheet numbers (dense, no sparsity): float32 TFLOP/s as TensorFlow runs it, FP16
# tensor-core TFLOP/s, DRAM GB/s, usable GiB. TensorFlow runs float32 convolutions as TF32
# on Ampere and newer by default, so their float32 column is the TF32 tensor-core peak;
# the T4 (Turing) has no TF32 and gets its plain FP32 peak.
GPUS: dict[str, tuple[float, float, float, float]] = {
    "T4 (g4dn, n1+T4)": (8.1, 65.0, 320.0, 15.0),
    "A10G (g5)": (62.5, 125.0, 600.0, 22.0),  # A10 datasheet; AWS's A10G is clocked alike
    "L4 (g2)": (60.0, 121.0, 300.0, 22.0),
    "A100 40GB (p4d, a2)": (156.0, 312.0, 1555.0, 39.0),
}

# SIIM-ACR stage 2 train: ~12,000 labelled images; one of five folds validates.
SIIM_LABELLED = 12_000
SIIM_VAL_SHARE = 0.2


@dataclass(frozen=True)
class ModelCost:
    img_size: int
    base_filters: int
    depth: int
    params: int
    activation_elements: int  # per image, summed over every layer output
    forward_macs: int  # per image, Conv2D only

    @property
    def train_gflop(self) -> float:
        return TRAIN_OVER_FORWARD * 2 * self.forward_macs / 1e9

    def activation_mib(self, bytes_per_element: int = 4) -> float:
        return self.activation_elements * bytes_per_element / 2**20


def model_cost(img_size: int, base_filters: int, depth: int = 4) -> ModelCost:
    """Count activations and conv MACs of ``build_resunet`` from its layer shapes."""
    import keras
    import numpy as np

    from pneumotune.model.resunet import build_resunet

    model = build_resunet(img_size, base_filters, depth)
    activations = macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        elements = int(np.prod(layer.output.shape[1:]))
        activations += elements
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, _ = layer.kernel.shape
            macs += elements * kh * kw * c_in  # elements = H_out * W_out * C_out
    cost = ModelCost(img_size, base_filters, depth, model.count_params(), activations, macs)
    keras.backend.clear_session()
    return cost


# ----------------------------------------------------------------------- measurements
def measure_fit(img_size: int, base_filters: int, batch: int, steps: int) -> float:
    """Training images/s of ``keras.Model.fit`` on random data (after a warm-up epoch)."""
    import keras
    import numpy as np

    from pneumotune.model.resunet import build_resunet

    rng = np.random.default_rng(0)
    n = batch * steps
    x = rng.integers(0, 256, (n, img_size, img_size, 1)).astype("float32")
    y = (rng.random((n, img_size, img_size, 1)) < 0.05).astype("float32")
    model = build_resunet(img_size, base_filters, 4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    # Warm-up: graph tracing and oneDNN kernel selection happen in the first steps.
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return n / (time.perf_counter() - start)


def _peak_rss_child(img_size: int, base_filters: int, batch: int) -> None:
    """In a fresh process: two training steps at ``batch``; print the peak RSS in bytes."""
    import keras
    import numpy as np

    from pneumotune.model.resunet import build_resunet

    x = np.full((batch, img_size, img_size, 1), 128.0, "float32")
    y = np.zeros((batch, img_size, img_size, 1), "float32")
    model = build_resunet(img_size, base_filters, 4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    for _ in range(2):
        model.train_on_batch(x, y)
    # VmHWM, not getrusage's ru_maxrss: the latter survives fork + exec on Linux, so a
    # child of a big parent would report the parent's peak.
    status = Path("/proc/self/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"peak_rss": kib * 1024}))


def measure_activation_slope(img_size: int, base_filters: int, batches=(2, 10)) -> float:
    """MiB of peak RSS per extra image in the batch: the activations TF really keeps."""
    peaks = []
    for batch in batches:
        out = subprocess.run(
            [sys.executable, __file__, "--_peak-rss", f"{img_size},{base_filters},{batch}"],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"])
    return (peaks[1] - peaks[0]) / (batches[1] - batches[0]) / 2**20


def measure_augment(img_size: int, n: int = 64) -> float:
    """Milliseconds per image of the tutorial augmentation on one core."""
    import cv2
    import numpy as np

    from pneumotune.model.augment import AugmentConfig, augment_batch, build_augment

    cv2.setNumThreads(1)  # one tf.data thread = one core
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, img_size, img_size), dtype=np.uint8)
    masks = (rng.random((n, img_size, img_size)) < 0.05).astype(np.uint8)
    pipeline = build_augment(AugmentConfig.tutorial(), img_size, seed=0)
    augment_batch(pipeline, images[:4], masks[:4])
    start = time.perf_counter()
    augment_batch(pipeline, images, masks)
    return (time.perf_counter() - start) / n * 1e3


# ----------------------------------------------------------------------- extrapolation
def gpu_images_per_s(cost: ModelCost, gpu: str, mixed: bool) -> float:
    """Extrapolated training images/s on one GPU (roofline, see the module docstring)."""
    fp32, fp16, bandwidth, _ = GPUS[gpu]
    peak = (fp16 if mixed else fp32) * 1e12
    traffic = TRAFFIC_PASSES * cost.activation_elements * (2 if mixed else 4)
    seconds = max(
        cost.train_gflop * 1e9 / (peak * U_COMPUTE), traffic / (bandwidth * 1e9 * U_MEMORY)
    )
    return 1.0 / seconds


def trial_epochs_per_hour(images_per_s: float, labelled: int = SIIM_LABELLED) -> float:
    """One trial-epoch = train on 4/5 of the labelled images + validate on 1/5."""
    train = labelled * (1 - SIIM_VAL_SHARE)
    val = labelled * SIIM_VAL_SHARE
    return 3600.0 / ((train + val * EVAL_OVER_TRAIN) / images_per_s)


def max_batch(cost: ModelCost, gpu: str, mixed: bool, measured_factor: float = 1.0) -> int:
    """Largest batch whose activations (x ``measured_factor``) fit in 80% of the GPU's
    memory after the weights, their gradients and Adam's two moments (4 x params x 4 B)."""
    memory = GPUS[gpu][3] * 2**30 * 0.8 - 16 * cost.params
    per_image = cost.activation_elements * (2 if mixed else 4) * measured_factor
    return max(0, int(memory // per_image))


def asha_trial_epochs(num_samples: int, max_t: int, grace: int, reduction_factor: float) -> float:
    """Expected trial-epochs of an ASHA search: every trial runs to the first rung, a
    1/reduction_factor share of those continues to the next rung, and so on."""
    rungs = []
    milestone = grace
    while milestone < max_t:
        rungs.append(milestone)
        milestone = round(milestone * reduction_factor)
    total, previous, share = 0.0, 0, 1.0
    for rung in [*rungs, max_t]:
        total += num_samples * share * (rung - previous)
        previous, share = rung, share / reduction_factor
    return total


def search_budget(name: str, sizes: tuple[int, ...], factor: float = 1.0) -> dict | None:
    """Print and return what the experiment costs on each GPU type (EXTRAPOLATED): its
    ASHA budget in trial-epochs, GPU-hours at each (img_size, base_filters) of its space
    at its depth / batch / precision, and whether one trial's activations fit in its
    share of the card (``resources.gpu``)."""
    from pneumotune.search.config import STORED, ConfigError, load_experiment

    try:
        exp = load_experiment(name)
    except ConfigError as exc:
        print(f"\nNo search budget: {exc}")
        return None
    values = exp.default_values()
    space_sizes = exp.param_values("img_size")
    if space_sizes != [STORED]:
        sizes = tuple(int(v) for v in space_sizes)
    filters = [int(f) for f in exp.param_values("base_filters")]
    depth, batch = int(values["depth"]), int(values["batch_size"])
    mixed = bool(values.get("mixed_precision", False))
    share = exp.resources.gpu or 1.0
    epochs = asha_trial_epochs(
        exp.num_samples, exp.epochs, exp.asha.grace_period, exp.asha.reduction_factor
    )
    store_gb = sum(2 * s * s * SIIM_LABELLED for s in sizes) / 1e9
    print(
        f"\nSearch budget of {exp.name!r} at {list(sizes)} px: {exp.num_samples} trials, max "
        f"{exp.epochs} epochs, ASHA grace {exp.asha.grace_period} / reduction "
        f"{exp.asha.reduction_factor:g} -> ~{epochs:.0f} trial-epochs (vs "
        f"{exp.num_samples * exp.epochs} without ASHA); depth {depth}, batch {batch}, "
        f"{'mixed fp16' if mixed else 'fp32/tf32'}, {share:g} GPU per trial; object store "
        f"needs {store_gb:.1f} GB for the images and masks of those sizes"
    )
    print("| GPU | px | filters | ~trial-epochs / GPU-hour | ~GPU-hours for the budget | memory |")
    print("|---|---|---|---|---|---|")
    out: dict = {"experiment": exp.name, "trial_epochs": epochs, "store_gb": store_gb, "rows": []}
    for gpu in GPUS:
        usable = GPUS[gpu][3] * 2**30 * 0.8 * share
        for size in sizes:
            for f in filters:
                cost = model_cost(size, f, depth)
                rate = trial_epochs_per_hour(gpu_images_per_s(cost, gpu, mixed))
                need = batch * cost.activation_elements * (2 if mixed else 4) * factor
                need += 16 * cost.params
                fits = need <= usable
                out["rows"].append(
                    {
                        "gpu": gpu,
                        "img_size": size,
                        "base_filters": f,
                        "trial_epochs_per_gpu_hour": rate,
                        "gpu_hours": epochs / rate,
                        "need_gib": need / 2**30,
                        "usable_gib": usable / 2**30,
                        "fits": fits,
                    }
                )
                print(
                    f"| {gpu} | {size} | {f} | ~{rate:.1f} | ~{epochs / rate:.0f} "
                    f"| {'fits' if fits else 'OOM'}: ~{need / 2**30:.1f} of "
                    f"{usable / 2**30:.1f} GiB |"
                )
    return out


# ----------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="analytic numbers only")
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    parser.add_argument(
        "--experiment",
        default="siim",
        help="experiment whose ASHA budget is priced per GPU type (default: siim)",
    )
    parser.add_argument(
        "--sizes",
        default="512,1024",
        help="converted sizes that `img_size: stored` stands for (default: 512,1024)",
    )
    parser.add_argument("--_peak-rss", dest="peak_rss", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_rss:
        _peak_rss_child(*(int(v) for v in args.peak_rss.split(",")))
        return 0

    record: dict = {"cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    costs = [model_cost(s, f) for s in (128, 256, 512, 1024) for f in (16, 32)]
    record["analytic"] = [
        {**asdict(c), "train_gflop": c.train_gflop, "act_mib_fp32": c.activation_mib(4)}
        for c in costs
    ]
    print("Analytic (exact for build_resunet, depth 4), per image:")
    print("| px | filters | params | train GFLOP | activations (M) | fp32 MiB | fp16 MiB |")
    print("|---|---|---|---|---|---|---|")
    for c in costs:
        print(
            f"| {c.img_size} | {c.base_filters} | {c.params / 1e6:.1f}M | {c.train_gflop:.1f} "
            f"| {c.activation_elements / 1e6:.0f} | {c.activation_mib(4):.0f} "
            f"| {c.activation_mib(2):.0f} |"
        )

    factor = 1.0
    if not args.quick:
        measured = []
        for size, filters, batch, steps in ((128, 16, 8, 6), (256, 16, 8, 4), (256, 32, 4, 4)):
            ips = measure_fit(size, filters, batch, steps)
            cost = next(c for c in costs if (c.img_size, c.base_filters) == (size, filters))
            measured.append(
                {
                    "img_size": size,
                    "base_filters": filters,
                    "batch": batch,
                    "images_per_s": ips,
                    "effective_gflop_per_s": ips * cost.train_gflop,
                }
            )
        record["cpu_fit"] = measured
        print("\nMeasured on this CPU (keras fit, random data):")
        for m in measured:
            print(
                f"  {m['img_size']} px, {m['base_filters']} filters, batch {m['batch']}: "
                f"{m['images_per_s']:.2f} images/s = {m['effective_gflop_per_s']:.0f} GFLOP/s"
            )
        slopes = []
        for size, filters in ((128, 16), (256, 16)):
            slope = measure_activation_slope(size, filters)
            cost = next(c for c in costs if (c.img_size, c.base_filters) == (size, filters))
            slopes.append(
                {
                    "img_size": size,
                    "base_filters": filters,
                    "rss_mib_per_image": slope,
                    "analytic_fp32_mib": cost.activation_mib(4),
                    "ratio": slope / cost.activation_mib(4),
                }
            )
        record["rss_slope"] = slopes
        factor = max(s["ratio"] for s in slopes)
        if factor <= 0:
            raise RuntimeError(f"the peak-RSS check measured nothing: {slopes}")
        print("\nMeasured peak-RSS growth per image in the batch vs the analytic fp32 count:")
        for s in slopes:
            print(
                f"  {s['img_size']} px, {s['base_filters']} filters: {s['rss_mib_per_image']:.0f}"
                f" MiB/image measured vs {s['analytic_fp32_mib']:.0f} analytic "
                f"(x{s['ratio']:.2f})"
            )
        record["augment_ms"] = {s: measure_augment(s) for s in (256, 512, 1024)}
        print("\nMeasured tutorial augmentation, one core (ms/image):")
        for s, ms in record["augment_ms"].items():
            print(f"  {s} px: {ms:.1f} ms -> {1000 / ms:.0f} images/s per vCPU")
    record["memory_factor"] = factor

    print(
        f"\nEXTRAPOLATED to GPUs (roofline: U_COMPUTE={U_COMPUTE}, U_MEMORY={U_MEMORY}, "
        f"{TRAFFIC_PASSES} activation passes; memory x{factor:.2f} from the RSS check):"
    )
    print(
        "| GPU | px | filters | precision | ~images/s | ~trial-epochs/GPU-hour (SIIM) "
        "| ~max batch |"
    )
    print("|---|---|---|---|---|---|---|")
    record["gpu"] = []
    for gpu in GPUS:
        for c in costs:
            if c.img_size == 128:
                continue
            for mixed in (False, True):
                ips = gpu_images_per_s(c, gpu, mixed)
                row = {
                    "gpu": gpu,
                    "img_size": c.img_size,
                    "base_filters": c.base_filters,
                    "mixed": mixed,
                    "images_per_s": ips,
                    "trial_epochs_per_hour": trial_epochs_per_hour(ips),
                    "max_batch": max_batch(c, gpu, mixed, factor),
                }
                record["gpu"].append(row)
                print(
                    f"| {gpu} | {c.img_size} | {c.base_filters} "
                    f"| {'mixed fp16' if mixed else 'fp32/tf32'} | ~{ips:.0f} "
                    f"| ~{row['trial_epochs_per_hour']:.1f} | ~{row['max_batch']} |"
                )
    sizes = tuple(int(v) for v in args.sizes.split(","))
    record["search_budget"] = search_budget(args.experiment, sizes, factor)
    record["load_avg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
