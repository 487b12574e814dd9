"""`pneumotune demo`: the whole pipeline on synthetic data, on a laptop, in minutes.

synth (train + held-out test) -> convert -> EDA report -> search (local Ray) ->
export the best model -> predict the held-out DICOMs -> their Kaggle score.
Every stage writes under one folder; a second run reuses the data it finds there
(``fresh=True`` starts over) and runs a new search.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumotune.errors import UsageError

# One stored size, so the demo's `img_size: stored` searches 64 px only: the size of the
# learning-curve atlas its defaults were chosen on (docs/search-evidence.md), and 4x
# cheaper per epoch than 128 px, which keeps the demo under 3 minutes on 2 cores.
DEMO_SIZES = (64,)
DEMO_TRIALS = 6
DEMO_IMAGES = 240  # 192 to train and 48 to validate (fold 0 of 5)
TRAIN_SEED, TEST_SEED = 0, 1
# What a demo writes under --out; --fresh deletes a folder that holds nothing else.
DEMO_ENTRIES = frozenset(
    {"raw", "test", "dataset", "results", "model", "submission.csv", "submission.errors.csv"}
)


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("pneumotune-demo")
    images: int = DEMO_IMAGES  # training DICOMs (synthetic, 256 px: the demo trains at 64)
    test_images: int = 60  # held-out DICOMs, scored at the end
    image_size: int = 256
    # 6 trials, not demo.yaml's 8: fewer trial-epochs, so that the demo stays under 3
    # minutes on 2 cores when ASHA keeps two trials to the end (2.5-2.7 min measured).
    num_samples: int | None = DEMO_TRIALS
    experiment: str = "demo"
    fresh: bool = False
    address: str | None = None
    dashboard: bool = True

    def __post_init__(self) -> None:
        if self.images < 40:
            raise UsageError(f"images must be >= 40 for a 5-fold split, got {self.images}")
        if self.test_images < 1:
            raise UsageError(f"test_images must be >= 1, got {self.test_images}")


@dataclass
class DemoResult:
    out: Path
    lines: list[str] = field(default_factory=list)
    score: Any = None  # model.predict.ScoreResult
    seconds: float = 0.0

    def describe(self) -> str:
        head = f"Demo finished in {self.seconds / 60:.1f} min; everything is under {self.out}/"
        return "\n".join([head, *self.lines])


def clear_demo_folder(out: Path) -> None:
    """Delete ``out`` for ``--fresh``, only when it is a folder a demo wrote.

    ``--out`` pointed at a home or data folder by mistake must lose nothing: anything
    the demo does not write there (or a link, which could lead anywhere) refuses, as
    `convert --overwrite` refuses a folder that is not a dataset."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise UsageError(f"--fresh: {out} is not a folder a demo wrote; choose another --out")
    entries = sorted(out.iterdir())
    foreign = [p.name for p in entries if p.name not in DEMO_ENTRIES or p.is_symlink()]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise UsageError(
            f"--fresh would delete {out}, which holds what a demo does not write ("
            f"{', '.join(foreign[:3])}{more}): "
            "choose another --out, or delete the folder yourself"
        )
    shutil.rmtree(out)


def _stage(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def run_demo(cfg: DemoConfig) -> DemoResult:
    from pneumotune.data.convert import ConvertConfig, convert
    from pneumotune.data.dataset import read_manifest
    from pneumotune.data.report import report_dataset
    from pneumotune.data.synth import SynthConfig, write_dataset
    from pneumotune.model.predict import predict_folder, score_submission
    from pneumotune.ray_session import ensure_ray
    from pneumotune.search.config import load_experiment
    from pneumotune.search.products.export_best import export_best
    from pneumotune.search.tuner import plan_search, run_search
    from pneumotune.search.watch.trial_telemetry import where_to_look

    t0 = time.perf_counter()
    out = cfg.out.absolute()
    if cfg.fresh:
        clear_demo_folder(out)
    raw, test, ds = out / "raw", out / "test", out / "dataset"
    result = DemoResult(out)

    _stage("1/7 synthetic SIIM data (train + held-out test)")
    for folder, n, seed, split in (
        (raw, cfg.images, TRAIN_SEED, "train"),
        (test, cfg.test_images, TEST_SEED, "test"),
    ):
        marker = folder / ("train-rle.csv" if split == "train" else "test-rle.csv")
        if marker.exists():
            print(f"reusing {folder}")
            continue
        shutil.rmtree(folder, ignore_errors=True)
        synth = SynthConfig(
            n_images=n,
            size=cfg.image_size,
            seed=seed,
            split=split,
            unlabelled=2 if split == "train" else 0,
        )
        print(write_dataset(folder, synth, progress=True).describe())

    session = ensure_ray(cfg.address, dashboard=cfg.dashboard, job_name="pneumotune-demo")
    _stage("2/7 convert (Ray Data)")
    if (ds / "manifest.json").exists():
        print(f"reusing {ds}")
    else:
        conv = convert(
            ConvertConfig(src=raw, out=ds, sizes=DEMO_SIZES, overwrite=True), progress=True
        )
        print(conv.describe())
    counts = read_manifest(ds)["counts"]
    result.lines.append(
        f"  data    {ds} ({counts['converted']} images, {counts['positive']} positive, "
        f"{counts['errors']} file errors)"
    )

    _stage("3/7 EDA report")
    report = report_dataset(ds)
    print(report.describe())
    result.lines.append(f"  report  {report.html}")

    _stage("4/7 search (Ray Tune + Optuna TPE + ASHA)")
    exp = load_experiment(cfg.experiment)
    plan = plan_search(exp, ds, storage=out / "results", num_samples=cfg.num_samples)
    print(f"{plan.experiment.num_samples} trials of up to {plan.experiment.epochs} epochs.")
    print(where_to_look(plan.path, session.dashboard_url))
    summary = run_search(plan)
    print(summary.describe())
    summary.raise_if_all_failed()  # nothing to export: say why instead of failing in export
    best = summary.best
    best_value = best.best(summary.metric, summary.mode)[0] if best else None
    gain = summary.gain_over_tutorial()
    result.lines.append(
        f"  search  {plan.path}: {len(summary.trials)} trials ("
        + ", ".join(f"{n} {k}" for k, n in sorted(summary.counts().items()))
        + f"), best {summary.metric} {best_value:.4f}"
        + (
            f", {gain:+.4f} over the tutorial's settings ({summary.tutorial_outcome()})"
            if gain is not None
            else ""
        )
    )

    _stage("5/7 export the best model")
    exported = export_best(plan.path, out / "model")
    print(exported.describe())
    result.lines.append(f"  model   {out / 'model'}")

    _stage("6/7 predict the held-out DICOMs")
    submission = out / "submission.csv"
    predicted = predict_folder(out / "model", test / "dicom-images-test", submission, progress=True)
    print(predicted.describe())

    _stage("7/7 score")
    score = score_submission(
        submission, test / "test-rle.csv", dicom_dir=test / "dicom-images-test"
    )
    print(score.describe())
    result.score = score
    result.lines.append(
        f"  held-out Kaggle score {score.score:.4f} on {score.images} synthetic test images "
        f"(all-empty prediction: {score.empty_baseline:.4f}); {submission}"
    )
    result.seconds = time.perf_counter() - t0
    return result
