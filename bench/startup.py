"""Where a trial's first epoch goes, and how much longer it is than a steady one.

    python bench/startup.py profile [--size 128] [--images 200] [--filters 8] [--batch-size 4]
    python bench/startup.py search  [--size 128] [--images 200] [--trials 6] [--epochs 3]
    python bench/startup.py --smoke-test

``profile``: one trial's training in a fresh process, phase by phase (the process'
imports, building and compiling the model, the first training step (tracing the train
step; with XLA its compilation), a steady step, the first validation pass (tracing the
predict step) against a later one, the first checkpoint against a later one), and each
epoch's seconds; then a second trial of the same architecture (other learning rate,
schedule, loss weights and seed) in the same process, warm (``model.warm``), as a reused
trial process runs it. ``search``: a small real search (FIFO, every trial runs
``--epochs`` epochs; trial processes reused, as in any search) on a local Ray; per trial,
from Tune's ``result.json``: the first iteration's
``time_this_iter_s`` (everything from the trial's start: imports, build, tracing, the
epoch, validation, checkpoint) over the median of its later ones, and our own
``epoch_seconds`` (epoch 1 / median later); the median over trials is the figure of
issue "Search throughput" (target <= 1.3), and the all-trials share of trial time spent in
training steps.

Numbers only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent


def profile_child(args: argparse.Namespace) -> dict:
    """Runs in a fresh process: the phases of one trial (see the module docstring)."""
    t_process = time.perf_counter()
    from train import synth_arrays  # bench/train.py

    images, masks = synth_arrays(args.images, args.size)
    t0 = time.perf_counter()
    import keras

    from pneumotune.model import train as T
    from pneumotune.model.augment import AugmentConfig
    from pneumotune.model.config import TrainConfig

    phases: dict[str, float] = {"import keras + pneumotune.model.train": time.perf_counter() - t0}
    cfg = TrainConfig(
        img_size=args.size, base_filters=args.filters, depth=4, epochs=args.epochs,
        batch_size=args.batch_size, pos_share_start=0.8, pos_share_end=0.4, loss_bce=3,
        loss_dice=1, loss_focal=4, augment=AugmentConfig(flip_p=0.5, color_p=0.5, affine_p=0.5),
        jit_compile=args.jit,
    )  # fmt: skip
    n_train = int(0.8 * len(images))
    batches: list[list[float]] = []

    class Steps(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            batches.append([])

        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            batches[-1].append(time.perf_counter() - self.t)

    saves: list[float] = []
    epochs: list[dict] = []

    def hook(epoch, metrics, model):
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            model.save(Path(d) / "model.keras")
        saves.append(time.perf_counter() - t)
        epochs.append(metrics)

    fit_keras = keras.Model.fit

    def fit_with_steps(self, *a, callbacks=None, **k):
        return fit_keras(self, *a, callbacks=[Steps(), *(callbacks or [])], **k)

    keras.Model.fit = fit_with_steps
    t0 = time.perf_counter()
    model = T.compile_model(T.build_model(cfg), cfg, n_train)
    phases["build + compile the model"] = time.perf_counter() - t0
    del model  # fit builds its own; this measured the cost
    train, val = (images[:n_train], masks[:n_train]), (images[n_train:], masks[n_train:])
    T.fit(cfg, train, val, on_epoch_end=hook, warm=True)  # cold: nothing kept yet
    # The next trial of a reused trial process: same architecture, other settings.
    again = replace(cfg, lr=2 * cfg.lr, schedule="one_cycle", loss_focal=0.0, seed=1)
    warm = T.fit(again, train, val, warm=True).history
    steady_step = statistics.median(b for e in batches[1:] for b in e)
    phases["first training step"] = batches[0][0]
    phases["a steady training step"] = steady_step
    val = [m["epoch_seconds"] - m["train_seconds"] for m in epochs]
    phases["first validation pass"] = val[0]
    phases["a later validation pass"] = statistics.median(val[1:])
    phases["first checkpoint"] = saves[0]
    phases["a later checkpoint"] = statistics.median(saves[1:])
    return {
        "backend": keras.backend.backend(),
        "phases": phases,
        "epoch_seconds": [m["epoch_seconds"] for m in epochs],
        "warm_epoch_seconds": [m["epoch_seconds"] for m in warm],
        "warm_first_step": warm[0]["first_step_seconds"],
        "train_seconds": [m["train_seconds"] for m in epochs],
        "process_seconds": time.perf_counter() - t_process,
    }


def profile(args: argparse.Namespace) -> None:
    """``profile`` in a fresh process (a warm one would hide the import and the tracing)."""
    names = ("size", "images", "filters", "batch_size", "epochs", "jit")
    options = [x for n in names for x in (f"--{n.replace('_', '-')}", getattr(args, n))]
    cmd = [sys.executable, __file__, "_child", *map(str, options)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    epochs = out["epoch_seconds"]
    steady = statistics.median(epochs[1:])
    print(
        f"one trial on {out['backend']}, {args.images} images at {args.size} px, "
        f"{args.filters} filters, batch {args.batch_size}, jit_compile={args.jit}"
    )
    for name, seconds in out["phases"].items():
        print(f"  {name:<40} {seconds:7.2f} s")
    print(f"  epochs: {', '.join(f'{s:.1f}' for s in epochs)} s")
    print(f"  first epoch / steady epoch: {epochs[0] / steady:.2f}")
    warm = out["warm_epoch_seconds"]
    print(
        f"  the next trial in this process (warm: model.warm): first step "
        f"{out['warm_first_step']:.2f} s, epochs {', '.join(f'{s:.1f}' for s in warm)} s, "
        f"first / steady {warm[0] / statistics.median(warm[1:]):.2f}"
    )
    extra = epochs[0] - steady
    trace = out["phases"]["first training step"] - out["phases"]["a steady training step"]
    val = out["phases"]["first validation pass"] - out["phases"]["a later validation pass"]
    print(
        f"  the first epoch's extra {extra:.1f} s: train-step tracing {trace:.1f} s, "
        f"predict-step tracing {val:.1f} s, the rest {extra - trace - val:.1f} s"
    )


def search(args: argparse.Namespace) -> None:
    """A small real search; first-iteration time over the later ones, per trial."""
    from common import all_trials_training_share, dataset

    from pneumotune.ray_session import ensure_ray
    from pneumotune.search.config import load_experiment
    from pneumotune.search.tuner import plan_search, run_search

    ds = dataset(args.images)  # stored at 64 and 128 px
    exp = load_experiment("demo").resolve_sizes([64, 128])
    exp = exp.__class__(
        **{
            **exp.__dict__,
            "epochs": args.epochs,
            "num_samples": args.trials,
            "fixed": {**exp.fixed, "img_size": args.size, "base_filters": args.filters},
            "space": tuple(p for p in exp.space if p.name not in ("img_size", "base_filters")),
        }
    )
    storage = Path(tempfile.mkdtemp(prefix="pneumotune-startup-"))
    plan = plan_search(exp, ds, name="startup", storage=storage)
    ensure_ray(num_cpus=2)
    t0 = time.perf_counter()
    summary = run_search(plan, early_stopping=False)
    wall = time.perf_counter() - t0
    ratios, ours = [], []
    for t in summary.trials:
        h = t.history
        if len(h) < 2:
            continue
        iters = [float(r["time_this_iter_s"]) for r in h]
        ratios.append(iters[0] / statistics.median(iters[1:]))
        ep = [float(r["epoch_seconds"]) for r in h]
        ours.append(ep[0] / statistics.median(ep[1:]))
        print(
            f"  {t.trial_id}: iterations {', '.join(f'{x:.1f}' for x in iters)} s -> "
            f"first / steady {ratios[-1]:.2f} (epoch_seconds: {ours[-1]:.2f})"
        )
    print(
        f"{len(ratios)} trials, {wall:.0f} s wall: median first / steady iteration "
        f"{statistics.median(ratios):.2f} (target <= 1.3), of epoch_seconds "
        f"{statistics.median(ours):.2f}; training steps (first step left out) "
        f"{100 * all_trials_training_share(summary.trials):.0f}% of all trials' time"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=("profile", "search", "_child"))
    parser.add_argument("--size", type=int, default=128, help="64 or 128 for search")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--smoke-test", action="store_true", help="profile at 32 px")
    args = parser.parse_args()
    if args.smoke_test:
        args.mode = args.mode or "profile"
        args.size, args.images, args.filters, args.epochs = 32, 40, 4, 2
    if args.mode == "_child":
        print(json.dumps(profile_child(args)))
    elif args.mode == "search":
        search(args)
    else:
        profile(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
