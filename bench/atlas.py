"""A learning-curve atlas: every config of a design trained to max_t, every epoch recorded.

    python bench/atlas.py [--name synth64] [--max-t 30] [--images 400] [--smoke-test]
    python bench/atlas.py --space demo --configs 256 --size 32 --name space32
    python bench/atlas.py --export-only [--name synth64]

Two designs. The grid (lr x schedule x base_filters x positive share x augmentation, 48
configs, the tutorial's point among them; 8 of them again with a second seed). Or, with
``--space EXPERIMENT``, ``--configs`` points of that experiment's own continuous space
(demo.yaml: 13 axes, img_size held at ``--size``), a scrambled Sobol sequence
(``--design-seed``): space filling, so that a surrogate fitted on it can answer for any
point of the space; 1 in 16 of them again with a second seed. Either is trained with the
product's own machinery: the experiment's fixed values, `pneumotune.search.tuner.run_search`
with a FIFO grid searcher, the same trainable (one `tune.report` per epoch, a checkpoint
per epoch).

Resumable: the run lives in bench/out/atlas-<name> (Ray Tune's layout); running the same
command again restores it, and trials that were running go on from their last epoch's
checkpoint. Every finished trial rewrites bench/atlas/<name>.csv (columns: config_id,
one per axis or parameter, seed, epoch, the val metrics, epoch_seconds), so a killed run keeps
everything it finished. bench/replay.py replays the CSV.

A run can lose epochs: a session that ends after a run's checkpoint was saved and before
Tune saved that epoch's result leaves the run going on from the checkpoint without them.
Its rows are written with the hole and the export names it; readers leave it out
(bench/surrogate.py). Once the run folder has finished, moving it aside and running the
same command again trains every run the CSV lacks or holds with a hole, and no other.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ray import tune

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
ATLAS_DIR = HERE / "atlas"

# The axes, each level with the training values it stands for. The tutorial's point as
# the product places it in the demo space (bench/search.py's arm (c)): lr 1e-3, cosine,
# 16 filters, the natural share of positives, the tutorial's augmentations.
AXES: dict[str, dict[str, dict[str, Any]]] = {
    "lr": {str(v): {"lr": v} for v in (5.0e-4, 1.0e-3, 2.0e-3)},
    "schedule": {s: {"schedule": s} for s in ("cosine", "one_cycle")},
    "base_filters": {str(v): {"base_filters": v} for v in (8, 16)},
    "pos_share": {
        "natural": {"pos_share_start": None, "pos_share_end": None},
        "0.8-0.4": {"pos_share_start": 0.8, "pos_share_end": 0.4},
    },
    "augment": {
        "none": {f"augment.{k}_p": 0.0 for k in ("flip", "color", "distort", "affine", "crop")},
        "tutorial": {},  # filled from AugmentConfig.tutorial() in grid()
    },
}
TUTORIAL = {
    "lr": "0.001",
    "schedule": "cosine",
    "base_filters": "16",
    "pos_share": "natural",
    "augment": "tutorial",
}
REPEATS = 8  # configs run again with seed 1
METRICS = ("val_iou", "val_dice", "val_kaggle_dice", "val_positive_iou", "val_loss", "loss")


def grid() -> list[dict[str, str]]:
    """Every combination of the axes' levels, as level labels, in a fixed order."""
    names = list(AXES)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*AXES.values())]


def training_values(levels: dict[str, str]) -> dict[str, Any]:
    from pneumotune.model.config import TrainConfig

    tutorial_aug = {
        k: v for k, v in TrainConfig.tutorial().to_flat().items() if k.startswith("augment.")
    }
    values: dict[str, Any] = {}
    for axis, level in levels.items():
        values.update(tutorial_aug if (axis, level) == ("augment", "tutorial") else {})
        values.update(AXES[axis][level])
    return values


@dataclass(frozen=True)
class Design:
    """The configs of an atlas: ``configs[i]`` is config i's CSV cells (one per column),
    ``values[i]`` the training values it stands for; ``repeats`` configs run twice."""

    columns: list[str]
    configs: list[dict[str, Any]]
    values: list[dict[str, Any]]
    repeats: int


def grid_design() -> Design:
    configs = grid()
    return Design(list(AXES), configs, [training_values(c) for c in configs], REPEATS)


def space_design(experiment: str, n: int, seed: int) -> Design:
    """``n`` scrambled-Sobol points of ``experiment``'s searched space (img_size excluded:
    the atlas's ``--size``). One unit-cube dimension per parameter, in the YAML's order; a
    conditional parameter (``when``) is set only where its condition holds (its cell is
    empty otherwise), as the product's define-by-run space samples it."""
    from scipy.stats import qmc

    from pneumotune.search.config import load_experiment

    specs = [p for p in load_experiment(experiment).space if p.name != "img_size"]
    cube = qmc.Sobol(d=len(specs), scramble=True, seed=seed).random(n)
    configs, values = [], []
    for row in cube:
        point: dict[str, Any] = {}
        for spec, u in zip(specs, row, strict=True):
            if spec.active(point):
                point[spec.name] = unit_to_value(spec, float(u))
        values.append(point)
        configs.append({spec.name: point.get(spec.name, "") for spec in specs})
    return Design([spec.name for spec in specs], configs, values, max(1, n // 16))


def unit_to_value(spec: Any, u: float) -> Any:
    """The value at ``u`` in [0, 1) of a :class:`ParamSpec`'s range (uniform, or uniform in
    log for ``log``), or of its choices (equal shares)."""
    if spec.choices is not None:
        return spec.choices[min(int(u * len(spec.choices)), len(spec.choices) - 1)]
    low, high = float(spec.low), float(spec.high)
    if spec.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    if spec.step:
        value = low + round((value - low) / spec.step) * spec.step
    return round(value) if spec.integer else round(value, 6)


def runs(design: Design) -> list[tuple[int, int]]:
    """(config_id, seed): every config with seed 0, then ``repeats`` spread ones with seed 1."""
    n = len(design.configs)
    step = max(1, n // design.repeats)
    repeats = list(range(0, n, step))[: design.repeats]
    return [(i, 0) for i in range(n)] + [(i, 1) for i in repeats]


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def lost_epochs(seen: Iterable[int], max_t: int) -> list[int]:
    """The epochs 1..max_t a run has no result for: [] for a complete curve (the one
    definition the export, a new session and bench/surrogate.py's reader share)."""
    have = set(seen)
    return [e for e in range(1, max_t + 1) if e not in have]


def recorded_runs(rows: Path | list[dict[str, str]], max_t: int) -> set[tuple[int, int]]:
    """(config_id, seed) of the complete curves (every epoch 1..max_t) among ``rows`` (or
    the CSV at that path): what a new session need not train."""
    epochs: dict[tuple[int, int], set[int]] = {}
    for r in read_rows(rows) if isinstance(rows, Path) else rows:
        epochs.setdefault((int(r["config_id"]), int(r["seed"])), set()).add(int(r["epoch"]))
    return {key for key, seen in epochs.items() if not lost_epochs(seen, max_t)}


def export_csv(path: Path, csv_path: Path, design: Design, max_t: int) -> int:
    """Write the finished trials' curves, keeping the CSV's runs that this run folder does
    not hold (recorded by an earlier session); returns how many runs it holds."""
    from pneumotune.search.results import summarise

    trials = summarise(path).trials if (path / "pneumotune.json").is_file() else []
    by_values = design.values
    rows, n_runs = [], 0
    for trial in trials:
        # Each report's own epoch (a run resumed from a checkpoint reports an epoch again
        # if its first report of it was not saved: the last report of an epoch stands).
        reports = {int(r.get("epoch", r["training_iteration"])): r for r in trial.history}
        if max(reports, default=0) < max_t:
            continue  # running, or lost when a session ended: rerun on resume
        config_id = next(
            i
            for i, v in enumerate(by_values)
            if all(trial.config.get(k) == x for k, x in v.items())
        )
        lost = lost_epochs(reports, max_t)
        if lost:
            # A session ended after the run's checkpoint of these epochs was saved and
            # before their results were: the run went on from the checkpoint without them.
            # Written as it is (readers leave a run with holes out); a new session (the
            # run folder moved aside) trains it again, as it does every run not complete.
            print(
                f"atlas: config {config_id} seed {trial.config['seed']}: epochs {lost} "
                "lost when a session ended; its run is in the CSV with them missing"
            )
        else:
            n_runs += 1
        for epoch in sorted(e for e in reports if e <= max_t):
            r = reports[epoch]
            rows.append(
                {
                    "config_id": config_id,
                    **design.configs[config_id],
                    "seed": trial.config["seed"],
                    "epoch": epoch,
                    **{m: round(float(r[m]), 6) for m in METRICS},
                    "epoch_seconds": round(float(r["epoch_seconds"]), 3),
                }
            )
    here = {(int(r["config_id"]), int(r["seed"])) for r in rows}
    kept = [r for r in read_rows(csv_path) if (int(r["config_id"]), int(r["seed"])) not in here]
    n_runs += len(recorded_runs(kept, max_t))
    rows += kept
    rows.sort(key=lambda r: (int(r["config_id"]), int(r["seed"]), int(r["epoch"])))
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        fields = ["config_id", *design.columns, "seed", "epoch", *METRICS, "epoch_seconds"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(csv_path)  # a reader never sees half a file
    return n_runs


class ExportOnEnd(tune.Callback):
    """The CSV rewritten each time a run finishes, so a killed atlas keeps what it did."""

    def __init__(self, path: Path, csv_path: Path, design: Design, max_t: int, total: int):
        self.args, self.total = (path, csv_path, design, max_t), total

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        n = export_csv(*self.args)
        print(f"atlas: {n} of {self.total} runs in {self.args[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", default="synth64", help="atlas name (default synth64)")
    parser.add_argument("--max-t", type=int, default=24, help="epochs per config (default 24)")
    parser.add_argument("--images", type=int, default=300, help="synthetic DICOMs (default 300)")
    parser.add_argument("--size", type=int, default=64, help="image size (default 64)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once (default 2)")
    parser.add_argument("--export-only", action="store_true", help="only rewrite the CSV")
    parser.add_argument("--smoke-test", action="store_true", help="4 configs, 2 epochs")
    parser.add_argument(
        "--space", default=None, help="sample this experiment's space (e.g. demo), not the grid"
    )
    parser.add_argument("--configs", type=int, default=256, help="with --space (default 256)")
    parser.add_argument("--design-seed", type=int, default=0, help="with --space (default 0)")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.name, args.max_t, args.images = "smoke", 2, 120

    from pneumotune.search.tuner import plan_search

    design = (
        space_design(args.space, args.configs, args.design_seed) if args.space else grid_design()
    )
    path = OUT / f"atlas-{args.name}"
    csv_path = (OUT if args.smoke_test else ATLAS_DIR) / f"{args.name}.csv"
    if args.export_only:
        print(f"{export_csv(path, csv_path, design, args.max_t)} runs -> {csv_path}")
        return 0

    from common import dataset

    from pneumotune.ray_session import ensure_ray
    from pneumotune.search.config import load_experiment
    from pneumotune.search.tuner import run_search

    planned = runs(design)[: 4 if args.smoke_test else None]
    todo = planned
    resume = (path / "pneumotune.json").is_file()
    if not resume:  # a new session: the committed CSV holds what earlier sessions trained
        done = recorded_runs(csv_path, args.max_t)
        todo = [run for run in todo if run not in done]
        if not todo:
            print(f"atlas {args.name}: all {len(done)} runs are in {csv_path}")
            return 0
    ds = dataset(args.images, sizes=(args.size,) if args.size not in (64, 128) else (64, 128))
    base = load_experiment(args.space or "demo")
    exp = dataclasses.replace(
        base.resolve_sizes([args.size]),
        space=(),
        fixed={**base.fixed, "img_size": args.size},
        epochs=args.max_t,
        max_concurrent=args.concurrent,
        max_failures=3,
        enqueue_tutorial=False,
        num_samples=len(todo),
        storage=OUT,
    )
    points = [{**design.values[i], "seed": seed} for i, seed in todo]
    plan = plan_search(exp, ds, name=path.name, storage=OUT)

    ensure_ray(num_cpus=args.concurrent)
    print(f"atlas {args.name}: {len(todo)} runs x {args.max_t} epochs at {args.size} px")
    run_search(
        plan,
        resume=resume,
        sampler="grid",
        points=points,
        early_stopping=False,
        callbacks=[ExportOnEnd(path, csv_path, design, args.max_t, len(planned))],
    )
    print(f"{export_csv(path, csv_path, design, args.max_t)} runs -> {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
