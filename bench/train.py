"""Training throughput, side by side on the same in-memory arrays and the same model.

(a) plain Keras: ``model.fit(x, y)`` on float32 numpy arrays (Keras' own array adapter);
(b) ours, augmentation off: ``model.train.fit`` with the backend's default input pipeline
    (TensorFlow: tf.data, each batch's rows copied out of the arrays by numpy, prefetched;
    JAX/PyTorch: the PyDataset);
(f) (b) on read-only memory maps of the same arrays in a file (what a search's trials
    train on: each node's copy, data.node_cache), page cache warm;
(c) ours, the tutorial's augmentation: (b) + albumentations in the pipeline's threads;
(b') and (c'), TensorFlow only: the same with the backend-neutral PyDataset pipeline
    (worker threads), side by side with tf.data: "auto" keeps whichever is faster on TF;
(d) our input pipeline alone (no model), with the tutorial augmentation: its headroom;
(e) augmentation alone, one core: images/s of ``augment_batch`` at 128 and 256 px.

    python bench/train.py [--size 128] [--images 192] [--epochs 3] [--repeats 2] [--smoke-test]
    KERAS_BACKEND=jax python bench/train.py ...       (any Keras backend)

Images/s are those of the training steps of epochs 2.. (epoch 1 traces the graph), the
median over epochs, and the best of ``--repeats`` rounds run a, b, c, a, b, c (other load
on the machine only ever slows a run down, so the best round is the least disturbed).
Target: (b) within 10% of (a), i.e. b/a >= 0.90. c/a is what augmentation costs here; d
and e say how far the pipeline is from being the bottleneck. Numbers only: nothing is
asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def synth_arrays(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic radiographs and their masks at ``size`` px (22% positive), rendered
    in memory with data.synth (no DICOM round trip: this benchmark is about training)."""
    from pneumotune.data.synth import render_case

    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        image, regions = render_case(rng, size, positive=rng.random() < 0.22)
        images[i] = image
        for region in regions:
            masks[i] |= region
    return images, masks


def plain_fit(cfg, images: np.ndarray, masks: np.ndarray) -> list[float]:
    """(a): per-epoch images/s of Keras' own fit on the arrays (same model, loss, optimizer)."""
    import keras

    from pneumotune.model.train import build_model, compile_model

    keras.utils.set_random_seed(cfg.seed)
    model = compile_model(build_model(cfg), cfg, len(images))
    x = images.astype(np.float32)[..., None]
    y = masks.astype(np.float32)[..., None]
    rates: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            rates.append(len(x) / (time.perf_counter() - self.t0))

    model.fit(
        x,
        y,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[Timer()],
    )
    return rates


def our_fit(cfg, images: np.ndarray, masks: np.ndarray, pipeline: str = "auto") -> list[float]:
    """(b)/(c): per-epoch training images/s of model.train.fit (validation excluded)."""
    from pneumotune.model.train import fit

    val = (images[:8], masks[:8])  # tiny: validation time is not part of train_seconds
    result = fit(cfg, (images, masks), val, pipeline=pipeline)
    return [m["images_per_s"] for m in result.history]


def augment_rate(size: int, n: int, seed: int = 0) -> float:
    """(d): images/s of the tutorial augmentation on one thread at ``size`` px."""
    from pneumotune.model.augment import AugmentConfig, augment_batch, build_augment

    images, masks = synth_arrays(min(n, 32), size, seed)
    reps = max(1, n // len(images))
    pipeline = build_augment(AugmentConfig.tutorial(), size, seed=seed)
    augment_batch(pipeline, images[:2], masks[:2])  # warm-up (imports, caches)
    t0 = time.perf_counter()
    for _ in range(reps):
        augment_batch(pipeline, images, masks)
    return reps * len(images) / (time.perf_counter() - t0)


def pipeline_rate(cfg, images: np.ndarray, masks: np.ndarray) -> float:
    """(d): images/s of :func:`model.train.fit`'s input pipeline, nothing consuming it."""
    from pneumotune.model.pipeline import BatchSource, TrainBatches, make_batches
    from pneumotune.model.train import epoch_plan

    plan = epoch_plan(cfg, masks.reshape(len(masks), -1).any(axis=1))
    ds = make_batches(BatchSource(cfg, images, masks, plan))
    t0 = time.perf_counter()
    if isinstance(ds, TrainBatches):
        n = sum(len(ds[i][0]) for i in range(len(ds)))
        ds.close()
    else:
        n = sum(len(x) for x, _ in ds)
    return n / (time.perf_counter() - t0)


def steady(rates: list[float]) -> float:
    """Median images/s without the first epoch (graph tracing), if there is more than one."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image side (default 128)")
    parser.add_argument("--images", type=int, default=192, help="training images (default 192)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--filters", type=int, default=16, help="base filters (default 16)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds, best kept (default 2)")
    parser.add_argument("--smoke-test", action="store_true", help="a ~20-second version")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.size, args.images, args.epochs, args.filters, args.repeats = 32, 48, 2, 4, 1
    aug_sizes = (128,) if args.smoke_test else (128, 256)
    aug_n = 32 if args.smoke_test else 192

    import keras

    from pneumotune.model.augment import AugmentConfig
    from pneumotune.model.config import TrainConfig
    from pneumotune.model.devices import list_gpus

    depth = 2 if args.smoke_test else 4
    base = TrainConfig(
        img_size=args.size,
        base_filters=args.filters,
        depth=depth,
        epochs=args.epochs,
        batch_size=args.batch_size,
        augment=AugmentConfig.none(),
    )
    print(
        f"pneumotune training benchmark: {args.images} images at {args.size} px, ResUNet "
        f"{args.filters} filters depth {depth}, batch {args.batch_size}, {args.epochs} epochs; "
        f"{os.cpu_count()} CPUs, Keras {keras.__version__} on {keras.backend.backend()}, "
        f"GPUs {len(list_gpus())}"
    )
    t0 = time.perf_counter()
    images, masks = synth_arrays(args.images, args.size)
    print(f"rendered the arrays with data.synth in {time.perf_counter() - t0:.1f} s")

    tutorial = dataclasses.replace(base, augment=AugmentConfig.tutorial())
    on_tf = keras.backend.backend() == "tensorflow"
    folder = tempfile.TemporaryDirectory(prefix="pneumotune-bench-")
    for name, array in (("images", images), ("masks", masks)):
        np.save(f"{folder.name}/{name}.npy", array)
    mapped = [np.load(f"{folder.name}/{name}.npy", mmap_mode="r") for name in ("images", "masks")]
    best = {"a": 0.0, "b": 0.0, "f": 0.0, "c": 0.0, "b'": 0.0, "c'": 0.0}
    for round_ in range(args.repeats):
        runs = {
            "a": lambda: plain_fit(base, images, masks),
            "b": lambda: our_fit(base, images, masks),
            "f": lambda: our_fit(base, *mapped),
            "c": lambda: our_fit(tutorial, images, masks),
        }
        if on_tf:  # the backend-neutral pipeline next to tf.data
            runs["b'"] = lambda: our_fit(base, images, masks, "pydataset")
            runs["c'"] = lambda: our_fit(tutorial, images, masks, "pydataset")
        for key, run in runs.items():
            best[key] = max(best[key], steady(run()))
        shown = ", ".join(f"{k} {v:.1f}" for k, v in best.items() if v)
        print(f"round {round_ + 1}/{args.repeats}: best so far {shown}")
    a, b, c = best["a"], best["b"], best["c"]
    d = pipeline_rate(tutorial, images, masks)
    default = "tf.data" if on_tf else "PyDataset"
    print()
    print(f"{'run':<52}{'images/s':>10}{'vs (a)':>9}")
    print(f"{'(a) plain model.fit(x, y), numpy arrays':<52}{a:>10.1f}{1.0:>9.2f}")
    print(f"{f'(b) model.train.fit, augmentation off, {default}':<52}{b:>10.1f}{b / a:>9.2f}")
    print(f"{f'(c) model.train.fit, tutorial augmentation, {default}':<52}{c:>10.1f}{c / a:>9.2f}")
    f = best["f"]
    print(f"{'(f) (b) on memory-mapped arrays (a search trial)':<52}{f:>10.1f}{f / a:>9.2f}")
    if on_tf:
        for key, what in (("b'", "augmentation off"), ("c'", "tutorial augmentation")):
            row = f"({key}) model.train.fit, {what}, PyDataset"
            print(f"{row:<52}{best[key]:>10.1f}{best[key] / a:>9.2f}")
        plain, augmented = best["b'"] / b, best["c'"] / c
        print(f"PyDataset / tf.data: {plain:.2f} (augmentation off), {augmented:.2f} (tutorial)")
    print(f"{'(d) its input pipeline alone (no model)':<52}{d:>10.1f}{d / a:>9.1f}")
    # Positive: slower than plain fit; negative: faster (target: at most +10%).
    print(f"input pipeline overhead vs plain fit: {100 * (1 - b / a):+.1f}% (target <= +10%)")
    print()
    print("(e) tutorial augmentation alone, one thread:")
    for size in aug_sizes:
        rate = augment_rate(size, aug_n)
        note = f" ({rate / a:.1f}x the training rate (a))" if size == args.size else ""
        print(f"    {size:>4} px: {rate:8.1f} images/s per core{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
