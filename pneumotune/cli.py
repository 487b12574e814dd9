"""The `pneumotune` command line: it parses arguments and calls importable functions.

Every heavy import (Ray, TensorFlow, pydicom) happens inside the handler that needs it,
so `pneumotune --help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# albumentations calls the network at import unless told not to (DESIGN.md).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


EPILOG = """\
The pipeline, one stage per command (each writes what the next one reads):
  pneumotune synth    OUT                 a synthetic SIIM-layout dataset (DICOM + RLE CSV)
  pneumotune convert  SRC DATASET         DICOMs + labels -> Parquet + manifest + error ledger
  pneumotune report   DATASET             EDA report (HTML + PNG)
  pneumotune report   RESULTS_DIR         search report (HTML + PNG)
  pneumotune train    --config demo --data DATASET --out MODEL    one run, no search
  pneumotune predict  MODEL DICOM_DIR --out submission.csv        DICOMs -> RLE CSV
  pneumotune score    submission.csv TRUTH.csv --dicoms DICOM_DIR  the Kaggle score

Run `pneumotune COMMAND --help` for the options of one command.
"""


class UsageError(Exception):
    """A problem with the user's input that stops the command (exit code 2)."""


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 16:
        raise argparse.ArgumentTypeError(f"sizes must be integers >= 16, got {text!r}")
    return sizes


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


# --------------------------------------------------------------------------- synth
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic dataset in the SIIM-ACR layout",
        description=(
            "Write a synthetic chest X-ray dataset that follows the real SIIM-ACR layout: "
            "OUT/dicom-images-<split>/<study>/<series>/<SOPInstanceUID>.dcm (JPEG Baseline, "
            "8-bit MONOCHROME2, real tags) and the label CSV in the stage-1 (train-rle.csv, "
            "leading spaces) or stage-2 (stage_2_train.csv) dialect. Deterministic for a seed."
        ),
    )
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument(
        "--images",
        type=_positive_int,
        default=200,
        help="DICOM files to write, including the --unlabelled ones (default 200)",
    )
    p.add_argument(
        "--size", type=int, default=1024, help="image side in pixels (default 1024, as SIIM)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--positive-fraction",
        type=_fraction,
        default=0.22,
        help="share of labelled images with a pneumothorax (default 0.22, as SIIM)",
    )
    p.add_argument(
        "--unlabelled",
        type=int,
        default=0,
        metavar="K",
        help="how many of the images get no CSV row at all (default 0)",
    )
    p.add_argument(
        "--dialect",
        choices=("stage1", "stage2"),
        default="stage1",
        help="stage1: train-rle.csv with leading spaces; stage2: stage_2_train.csv",
    )
    p.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="folder name dicom-images-<split>; a test split's labels go to "
        "test-rle.csv, kept only for scoring (default train)",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from pneumotune.data.synth import SynthConfig, write_dataset

    if args.unlabelled > args.images:
        raise UsageError(f"--unlabelled {args.unlabelled} exceeds --images {args.images}")
    try:
        cfg = SynthConfig(
            n_images=args.images,
            size=args.size,
            seed=args.seed,
            positive_fraction=args.positive_fraction,
            unlabelled=args.unlabelled,
            dialect=args.dialect,
            split=args.split,
        )
        summary = write_dataset(args.out, cfg, workers=args.workers, progress=True)
    except (ValueError, FileExistsError) as exc:
        raise UsageError(str(exc)) from exc
    print(summary.describe())
    return 0


# --------------------------------------------------------------------------- convert
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="DICOMs + RLE labels -> Parquet dataset (Ray Data)",
        description=(
            "Convert a folder of DICOM files and an RLE label CSV into a Parquet dataset with "
            "a manifest.json and an errors.csv ledger, using Ray Data on all local cores (or "
            "the cluster given by --address). Bad files and bad label rows are recorded with "
            "their reason and the run goes on: files_seen == converted + errors."
        ),
        epilog=(
            "SRC may be the top of a SIIM download: if it holds dicom-images-train/, only that "
            "folder is read, and train-rle.csv or stage_2_train.csv at its top is the default "
            "label file. With no label file at all, every image is stored as unlabelled."
        ),
    )
    p.add_argument("src", type=Path, help="folder searched recursively for *.dcm")
    p.add_argument("out", type=Path, help="dataset folder to write (must be empty or absent)")
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="label CSV with columns ImageId, EncodedPixels (default: found in SRC)",
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=(256, 512),
        help="comma-separated square sizes to store (default 256,512)",
    )
    p.add_argument(
        "--rle-dialect",
        choices=("relative", "standard"),
        default="relative",
        help="relative: SIIM (default); standard: absolute 1-based starts",
    )
    p.add_argument("--folds", type=int, default=5, help="patient-grouped folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    _add_address(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from pneumotune.data.convert import ConvertConfig, ConvertInputError, convert

    cfg = ConvertConfig(
        src=args.src,
        out=args.out,
        labels=args.labels,
        sizes=args.sizes,
        rle_dialect=args.rle_dialect,
        n_folds=args.folds,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    try:
        result = convert(cfg, address=args.address, progress=True)
    except ConvertInputError as exc:
        raise UsageError(str(exc)) from exc
    print(result.describe())
    return 0


def _add_address(p: argparse.ArgumentParser, when: str = "") -> None:
    # With no --address, data.ray_session.ensure_ray decides.
    p.add_argument(
        "--address",
        default=None,
        help=f"{when}join a running Ray cluster: auto, or ray://HOST:10001 "
        "(default: $RAY_ADDRESS if set, else a new local Ray)",
    )


# --------------------------------------------------------------------------- search
def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="hyperparameter search: Ray Tune + Optuna (TPE) + ASHA",
        description=(
            "Search the experiment's space with Ray Tune: Optuna's TPE proposes configs (the "
            "tutorial's settings first), ASHA stops weak trials after each epoch, every epoch "
            "is checkpointed. Runs on a local Ray (dashboard on 127.0.0.1:8265) or joins a "
            "cluster with --address. Results land in <storage>/<name> in Ray Tune's layout."
        ),
        epilog=(
            "Watch it from another terminal with `pneumotune status <storage>/<name>`; export "
            "the best model with `pneumotune export <storage>/<name> --out MODEL_DIR`. An "
            "interrupted search continues with --resume (same --name and --storage)."
        ),
    )
    p.add_argument(
        "--config",
        default="demo",
        metavar="YAML",
        help="experiment file, or the name of a shipped one (default: demo)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="converted dataset (default: the experiment's `data:`)",
    )
    _add_address(p)
    p.add_argument("--num-samples", type=_positive_int, default=None, help="trials to run")
    p.add_argument(
        "--max-concurrent",
        type=_positive_int,
        default=None,
        help="trials at once (default: the experiment's max_concurrent)",
    )
    p.add_argument("--name", default=None, help="experiment name (default: <experiment>-<time>)")
    p.add_argument(
        "--storage",
        type=Path,
        default=None,
        help="results root (default: the experiment's storage, pneumotune-results)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted search (the latest one of this experiment "
        "unless --name is given)",
    )
    p.add_argument(
        "--no-dashboard",
        action="store_true",
        help="do not start the Ray dashboard (local Ray only)",
    )
    p.set_defaults(func=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from pneumotune.data.dataset import DatasetError
    from pneumotune.data.ray_session import ensure_ray
    from pneumotune.search.config import ConfigError, load_experiment
    from pneumotune.search.tuner import latest_experiment, plan_search, run_search

    try:
        exp = load_experiment(args.config)
        name, data = args.name, args.data
        if args.resume:
            previous = latest_experiment(args.storage or exp.storage, exp.name, name)
            name, data = previous.name, data or previous.data_dir
        plan = plan_search(
            exp,
            data,
            name=name,
            storage=args.storage,
            num_samples=args.num_samples,
            max_concurrent=args.max_concurrent,
        )
    except (ConfigError, DatasetError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    session = ensure_ray(args.address, dashboard=not args.no_dashboard)
    print(
        f"Experiment {plan.name}: {plan.experiment.num_samples} trials of up to "
        f"{plan.experiment.epochs} epochs, {plan.experiment.metric} ({plan.experiment.mode}); "
        f"results in {plan.path}"
    )
    for note in plan.tutorial_notes:
        print(f"  tutorial point adapted: {note}")
    if session.dashboard_url:
        print(
            f"Ray dashboard: {session.dashboard_url} (token auth is on: paste the token from "
            "`ray get-auth-token` when the page asks)"
        )
    print(f"Watch from another terminal: pneumotune status {plan.path}")
    try:
        summary = run_search(plan, resume=args.resume)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(summary.describe())
    print(f"Wrote {plan.path / 'search.json'}. Next: pneumotune export {plan.path} --out MODEL_DIR")
    return 0


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="the trial table of a running or finished search",
        description="Read a search directory (running or finished) and print its trial table.",
    )
    p.add_argument("results", type=Path, help="the search directory, <storage>/<name>")
    p.add_argument(
        "--watch",
        action="store_true",
        help="refresh the table until every trial has finished (Ctrl-C stops watching, not "
        "the search); when stdout is not a terminal, print it again only when it changed",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between readings with --watch (default 5)",
    )
    p.set_defaults(func=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from pneumotune.search.results import ResultsError, summarise

    if args.interval <= 0:
        raise UsageError(f"--interval must be > 0 seconds, got {args.interval}")
    try:
        if not args.watch:
            print(summarise(args.results).describe())
            return 0
        from pneumotune.search.watch import watch

        watch(args.results, args.interval)
    except ResultsError as exc:
        raise UsageError(str(exc)) from exc
    except KeyboardInterrupt:
        pass  # the way to stop watching: the search goes on
    return 0


# --------------------------------------------------------------------------- report
def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="report of a dataset (EDA) or of a search (one offline HTML page + PNGs)",
        description=(
            "Write an exploratory report of a dataset written by `pneumotune convert`: sample "
            "radiographs, positive images with mask / CLAHE / raw panels, class balance, "
            "regions per image, age, sex and view position by class, mask areas, a heat map "
            "of where regions lie, and data quality (unlabelled images, invalid ages, "
            "conversion errors, fold balance). One self-contained HTML file (no network "
            "needed to open it) plus each figure as a PNG. No patient identifier is shown. "
            "Given a search directory instead, write the search report: the metric per "
            "epoch of every trial (ASHA stops marked), best so far over trial-epochs, "
            "parallel coordinates of the searched values, hyperparameter importance "
            "(Optuna), the best trial against the tutorial's settings, and the best "
            "model's predictions on validation images."
        ),
    )
    p.add_argument(
        "dataset",
        type=Path,
        help="a dataset folder (holds manifest.json) or a search directory (holds pneumotune.json)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: report/ inside the dataset or search folder)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the sampled images (default 0)")
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=None,
        metavar="N",
        help="random radiographs in the sample grid (default 12), or validation images "
        "in a search report's predictions (default 6)",
    )
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from pneumotune.data.dataset import MANIFEST, DatasetError
    from pneumotune.data.report import report_dataset
    from pneumotune.search.results import is_experiment

    if is_experiment(args.dataset):
        return _run_search_report(args)
    if not (args.dataset / MANIFEST).is_file():
        raise UsageError(
            f"{args.dataset} is not a pneumotune dataset: expected a folder holding {MANIFEST}, "
            "as written by `pneumotune convert SRC DATASET`, or a search directory holding "
            "pneumotune.json"
        )
    samples = 12 if args.samples is None else args.samples
    try:
        result = report_dataset(args.dataset, args.out, seed=args.seed, samples=samples)
    except DatasetError as exc:
        raise UsageError(str(exc)) from exc
    print(result.describe())
    print(result.html)
    return 0


def _run_search_report(args: argparse.Namespace) -> int:
    from pneumotune.search.report import DEFAULT_SAMPLES, report_search
    from pneumotune.search.results import ResultsError

    samples = DEFAULT_SAMPLES if args.samples is None else args.samples
    try:
        result = report_search(args.dataset, args.out, seed=args.seed, samples=samples)
    except ResultsError as exc:
        raise UsageError(str(exc)) from exc
    print(result.describe())
    print(result.html)
    return 0


# --------------------------------------------------------------------------- train
def _override(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one model with an experiment's defaults (no search) and export it",
        description=(
            "Train one ResUNet on a converted dataset with the experiment's fixed values and\n"
            "the default of each searched parameter (`img_size: stored` means the smallest\n"
            "stored size), validating on the fold val_fold. Prints the validation metrics\n"
            "after every epoch, tunes the post-processing triplet (threshold, minimum area,\n"
            "lower threshold) on the validation fold, and exports the model to --out:\n"
            "model.keras, a TF SavedModel and model_card.json."
        ),
        epilog=(
            "Example, on the synthetic demo data:\n"
            "  pneumotune synth raw --images 400 --size 256\n"
            "  pneumotune convert raw ds --sizes 64,128\n"
            "  pneumotune train --config demo --data ds --epochs 8 --set img_size=128\n"
            "  pneumotune predict pneumotune-model DICOM_DIR --out submission.csv\n"
            "The Kaggle score printed at the end is worth comparing with the all-empty\n"
            "score printed next to it: ~78% of images have no pneumothorax, so predicting\n"
            "nothing at all already scores ~0.78.\n"
            "After a search, the best config on all labelled data, 4 data-parallel workers:\n"
            "  pneumotune train --from-search pneumotune-results/NAME --workers 4 --out MODEL"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="CONFIG",
        help="experiment YAML, or the name of a shipped one (demo, siim); "
        "required unless --from-search",
    )
    p.add_argument(
        "--from-search",
        type=Path,
        default=None,
        metavar="RESULTS_DIR",
        help="retrain the best config of this search (<storage>/<name>) on all labelled "
        "data with --workers Ray Train workers, keep the search's tuned triplet, export",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="with --from-search: data-parallel workers, one model replica each (default 2)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="with --from-search: CPUs of each worker (default 1)",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="with --from-search: GPUs of each worker (default: 1 if the cluster has GPUs)",
    )
    _add_address(p, "with --from-search: ")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DATASET",
        help="dataset folder written by `pneumotune convert` (default: the experiment's data, "
        "or the search's with --from-search)",
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=None, help="epochs (default: the experiment's)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("pneumotune-model"),
        metavar="DIR",
        help="model directory to write (default ./pneumotune-model)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one training parameter, e.g. --set img_size=128 --set lr=3e-3 "
        "--set augment.flip_p=0 (repeatable; names as in the experiment's space)",
    )
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from pneumotune.data.dataset import DatasetError
    from pneumotune.model.train import TrainingDiverged
    from pneumotune.search.config import ConfigError, load_experiment
    from pneumotune.search.single_run import train_once

    if args.from_search is not None:
        return _run_train_from_search(args)
    if args.config is None:
        raise UsageError("give --config CONFIG (one run) or --from-search RESULTS_DIR")
    try:
        exp = load_experiment(args.config)
        data = args.data or exp.data
        if data is None:
            raise UsageError(f"no --data given and experiment {exp.name!r} names no data")
        result = train_once(
            exp,
            data,
            args.out,
            epochs=args.epochs,
            overrides=dict(args.overrides),
            progress=True,
        )
    except (ConfigError, DatasetError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    except TrainingDiverged as exc:
        print(f"pneumotune train: {exc}", file=sys.stderr)
        return 1
    print(result.describe())
    return 0


def _run_train_from_search(args: argparse.Namespace) -> int:
    from pneumotune.data.dataset import DatasetError
    from pneumotune.data.ray_session import ensure_ray
    from pneumotune.model.train import TrainingDiverged
    from pneumotune.search.results import ResultsError
    from pneumotune.search.retrain import retrain_best

    if args.config is not None or args.overrides:
        raise UsageError("--from-search takes its config from the search: drop --config/--set")
    ensure_ray(args.address)
    try:
        result = retrain_best(
            args.from_search,
            args.out,
            workers=args.workers,
            epochs=args.epochs,
            data_dir=args.data,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
        )
    except (ResultsError, DatasetError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    except TrainingDiverged as exc:
        print(f"pneumotune train: {exc}", file=sys.stderr)
        return 1
    print(result.describe())
    return 0


# --------------------------------------------------------------------------- predict
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="DICOMs -> a submission CSV of RLE masks, with an exported model",
        description=(
            "Predict a pneumothorax mask for every *.dcm file below DICOM_DIR (searched "
            "recursively; CSV files there are ignored) with a model directory written by "
            "`pneumotune train` or `pneumotune export`. Each DICOM is read and resized exactly "
            "as in training, the probabilities are upsampled to the DICOM's own size, the "
            "model card's triplet is applied, and the mask is written as SIIM relative RLE: "
            "one row per image, ImageId = file stem, -1 when empty. Files that cannot be "
            "read are listed with their reason in <OUT stem>.errors.csv and have no row."
        ),
    )
    p.add_argument("model_dir", type=Path, help="exported model directory (holds model_card.json)")
    p.add_argument("dicom_dir", type=Path, help="folder searched recursively for *.dcm")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("submission.csv"),
        help="submission CSV to write (default ./submission.csv)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=16, help="images per model call (default 16)"
    )
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from pneumotune.model.export import ModelDirError
    from pneumotune.model.predict import PredictInputError, predict_folder

    try:
        result = predict_folder(
            args.model_dir, args.dicom_dir, args.out, batch_size=args.batch_size, progress=True
        )
    except (ModelDirError, PredictInputError) as exc:
        raise UsageError(str(exc)) from exc
    print(result.describe())
    return 0


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="the Kaggle score of a submission CSV against a label CSV",
        description=(
            "Score a submission (ImageId,EncodedPixels) against a label CSV the way the "
            "SIIM-ACR leaderboard did: the Dice coefficient of each image of the label file, "
            "averaged; an image with an empty truth scores 1 if the prediction is empty too "
            "and 0 otherwise. Images of the label file missing from the submission count as "
            "predicted empty. Also prints what an all-empty submission would score."
        ),
    )
    p.add_argument("submission", type=Path, help="submission CSV (ImageId,EncodedPixels)")
    p.add_argument(
        "truth", type=Path, help="label CSV, e.g. train-rle.csv or a synthetic test-rle.csv"
    )
    p.add_argument(
        "--dicoms",
        type=Path,
        default=None,
        metavar="DIR",
        help="DICOM folder of these images: masks are decoded at each DICOM's own size "
        "(default: 1024x1024 for every image, as SIIM)",
    )
    p.add_argument(
        "--rle-dialect",
        choices=("relative", "standard"),
        default="relative",
        help="relative: SIIM (default); standard: absolute 1-based starts",
    )
    p.set_defaults(func=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from pneumotune.model.predict import PredictInputError, score_submission

    try:
        result = score_submission(
            args.submission, args.truth, args.rle_dialect, dicom_dir=args.dicoms
        )
    except PredictInputError as exc:
        raise UsageError(str(exc)) from exc
    print(result.describe())
    return 0


# --------------------------------------------------------------------------- export
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the best model of a search",
        description=(
            "Take the best trial's best checkpoint of a search (finished, or running: its best "
            "so far), tune the post-processing triplet (threshold, minimum area, lower "
            "threshold) on that trial's validation fold, and write a model directory: "
            "model.keras, saved_model/ and model_card.json (config, trial id, metrics)."
        ),
        epilog="Then: pneumotune predict MODEL_DIR DICOM_DIR --out submission.csv",
    )
    p.add_argument("results", type=Path, help="the search directory, <storage>/<name>")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="model directory")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the dataset, if it moved since the search (default: the search's)",
    )
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from pneumotune.data.dataset import DatasetError
    from pneumotune.search.export_best import export_best
    from pneumotune.search.results import ResultsError

    try:
        result = export_best(args.results, args.out, data_dir=args.data)
    except (ResultsError, DatasetError) as exc:
        raise UsageError(str(exc)) from exc
    print(result.describe())
    return 0


# --------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on synthetic data (the quick start)",
        description=(
            "Run every stage on a synthetic SIIM-layout dataset, on this machine: synth a "
            "training set and a held-out test set, convert (Ray Data), write the EDA report, "
            "search with the shipped `demo` experiment (Ray Tune + Optuna TPE + ASHA on a "
            "local Ray), export the best model, predict the held-out DICOMs and print their "
            "Kaggle score. About 10 minutes on 2 CPU cores."
        ),
        epilog="A second run reuses the data under --out and runs a new search (--fresh: all).",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("pneumotune-demo"),
        help="folder for everything (default: ./pneumotune-demo)",
    )
    p.add_argument("--images", type=int, default=300, help="training DICOMs (default 300)")
    p.add_argument("--test-images", type=int, default=60, help="held-out DICOMs (default 60)")
    p.add_argument(
        "--num-samples",
        type=_positive_int,
        default=None,
        help="trials (default: the demo experiment's)",
    )
    p.add_argument(
        "--config",
        default="demo",
        metavar="YAML",
        help="experiment to search with (default: the shipped demo)",
    )
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from pneumotune.search.demo import DemoConfig, run_demo

    try:
        cfg = DemoConfig(
            out=args.out,
            images=args.images,
            test_images=args.test_images,
            num_samples=args.num_samples,
            experiment=args.config,
            fresh=args.fresh,
            dashboard=not args.no_dashboard,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(run_demo(cfg).describe())
    return 0


# --------------------------------------------------------------------------- main
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_demo,
    _add_synth,
    _add_convert,
    _add_report,
    _add_search,
    _add_status,
    _add_export,
    _add_train,
    _add_predict,
    _add_score,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumotune",
        description="Hyperparameter search for pneumothorax segmentation on chest X-rays, "
        "on a laptop or a Ray cluster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"pneumotune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pneumotune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
