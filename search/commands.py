"""The search's commands: `search`, `status`, `export` and `train`.

`train` is here because it reads an experiment file (one run with the experiment's
defaults) or a search (``--from-search``). Each is a
:class:`~pneumotune.cli_args.Command` of app/cli.py's registry; the commands of the whole
pipeline (`demo`, and `report` of a dataset or a search) are the root's
(:mod:`pneumotune.pipeline_commands`).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from pneumotune import cli_args as A
from pneumotune.errors import UsageError


# --------------------------------------------------------------------------- search
def _search_arguments(p: argparse.ArgumentParser) -> None:
    A.add_experiment(p)
    A.add_path(
        p, "--data", "converted dataset (default: the experiment's `data:`)", metavar="DATASET"
    )
    A.add_address(p)
    p.add_argument("--num-samples", type=A.positive_int, default=None, help="trials to run")
    p.add_argument(
        "--max-concurrent",
        type=A.positive_int,
        default=None,
        help="trials at once (default: the experiment's max_concurrent)",
    )
    p.add_argument("--name", default=None, help="experiment name (default: <experiment>-<time>)")
    A.add_path(
        p, "--storage", "results root (default: the experiment's storage, pneumotune-results)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted search (the latest one of this experiment "
        "unless --name is given)",
    )
    A.add_no_dashboard(p)
    p.add_argument(
        "--skip-memory-check",
        action="store_true",
        help="start even if the trials a node would run seem not to fit in its memory "
        "(the check estimates each trial's host memory from img_size, batch_size, "
        "base_filters and depth; README 'Your own data')",
    )
    A.add_backend(p)


def _run_search(args: argparse.Namespace) -> Any:
    from pneumotune.model.backend import requested_backend
    from pneumotune.ray_session import ensure_ray
    from pneumotune.search.config import load_experiment
    from pneumotune.search.tuner import latest_experiment, plan_search, run_search
    from pneumotune.search.watch.trial_telemetry import where_to_look

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
    session = ensure_ray(args.address, dashboard=args.dashboard, job_name=plan.name)
    print(
        f"Experiment {plan.name}: {plan.experiment.num_samples} trials of up to "
        f"{plan.experiment.epochs} epochs, {plan.experiment.metric} ({plan.experiment.mode}), "
        f"Keras on {requested_backend()}; results in {plan.path}"
    )
    for note in plan.tutorial_notes:
        print(f"  tutorial point adapted: {note}")
    print(where_to_look(plan.path, session.dashboard_url))
    summary = run_search(plan, resume=args.resume, memory_check=not args.skip_memory_check)
    print(summary.describe())
    summary.raise_if_all_failed()  # exit 1 with one line; no export to suggest
    print(f"Wrote {plan.path / 'search.json'}. Next: pneumotune export {plan.path} --out MODEL_DIR")
    return None


SEARCH = A.Command(
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
    arguments=_search_arguments,
    run=_run_search,
    needs=frozenset({"ray"}),  # Keras runs in the trials, on --backend
    shown=("--config", "--data", "--address"),
)


# --------------------------------------------------------------------------- status
def _status_arguments(p: argparse.ArgumentParser) -> None:
    A.add_results(p)
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


def _run_status(args: argparse.Namespace) -> Any:
    from pneumotune.search.results import summarise

    if args.interval <= 0:
        raise UsageError(f"--interval must be > 0 seconds, got {args.interval}")
    if not args.watch:
        return summarise(args.results)
    from pneumotune.search.watch.table import watch

    with contextlib.suppress(KeyboardInterrupt):  # stops the watching; the search goes on
        watch(args.results, args.interval)
    return None


STATUS = A.Command(
    "status",
    help="the trial table of a running or finished search",
    description="Read a search directory (running or finished) and print its trial table.",
    arguments=_status_arguments,
    run=_run_status,
    shown=("--watch",),
)


# --------------------------------------------------------------------------- export
def _export_arguments(p: argparse.ArgumentParser) -> None:
    A.add_results(p)
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="model directory")
    A.add_path(p, "--data", "the dataset, if it moved since the search (default: the search's)")
    A.add_backend(p)


def _run_export(args: argparse.Namespace) -> Any:
    from pneumotune.search.products.export_best import export_best

    return export_best(args.results, args.out, data_dir=args.data)


EXPORT = A.Command(
    "export",
    help="export the best model of a search",
    description=(
        "Take the best trial's best checkpoint of a search (finished, or running: its best "
        "so far), tune the post-processing triplet (threshold, minimum area, lower "
        "threshold) on that trial's validation fold, and write a model directory: "
        "model.keras, saved_model/ (on the TensorFlow backend only) and model_card.json "
        "(config, trial id, metrics)."
    ),
    epilog="Then: pneumotune predict MODEL_DIR DICOM_DIR --out submission.csv",
    arguments=_export_arguments,
    run=_run_export,
    needs=frozenset({"keras"}),
)


# --------------------------------------------------------------------------- train
def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=None,
        metavar="CONFIG",
        help="experiment YAML, or the name of a shipped one (demo, siim); "
        "required unless --from-search",
    )
    A.add_path(
        p,
        "--from-search",
        "retrain the best config of this search (<storage>/<name>) on all labelled "
        "data with --workers Ray Train workers, keep the search's tuned triplet, export",
        metavar="RESULTS_DIR",
    )
    p.add_argument(
        "--workers",
        type=A.positive_int,
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
    A.add_address(p, "with --from-search: ")
    A.add_path(
        p,
        "--data",
        "dataset folder written by `pneumotune convert` (default: the experiment's data, "
        "or the search's with --from-search)",
        metavar="DATASET",
    )
    p.add_argument(
        "--epochs", type=A.positive_int, default=None, help="epochs (default: the experiment's)"
    )
    A.add_path(
        p,
        "--out",
        "model directory to write (default ./pneumotune-model)",
        metavar="DIR",
        default=Path("pneumotune-model"),
    )
    p.add_argument(
        "--set",
        dest="overrides",
        type=A.override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one training parameter, e.g. --set img_size=128 --set lr=3e-3 "
        "--set augment.flip_p=0 (repeatable; names as in the experiment's space)",
    )
    A.add_backend(p)


def _run_train(args: argparse.Namespace) -> Any:
    from pneumotune.search.config import load_experiment
    from pneumotune.search.products.single_run import train_once

    if args.from_search is not None:
        return _run_train_from_search(args)
    if args.config is None:
        raise UsageError("give --config CONFIG (one run) or --from-search RESULTS_DIR")
    exp = load_experiment(args.config)
    data = args.data or exp.data
    if data is None:
        raise UsageError(f"no --data given and experiment {exp.name!r} names no data")
    return train_once(
        exp, data, args.out, epochs=args.epochs, overrides=dict(args.overrides), progress=True
    )


def _run_train_from_search(args: argparse.Namespace) -> Any:
    from pneumotune.ray_session import ensure_ray
    from pneumotune.search.products.retrain import retrain_best

    if args.config is not None or args.overrides:
        raise UsageError("--from-search takes its config from the search: drop --config/--set")
    ensure_ray(args.address)
    return retrain_best(
        args.from_search,
        args.out,
        workers=args.workers,
        epochs=args.epochs,
        data_dir=args.data,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
    )


TRAIN = A.Command(
    "train",
    help="train one model with an experiment's defaults (no search) and export it",
    description=(
        "Train one ResUNet on a converted dataset with the experiment's fixed values and\n"
        "the default of each searched parameter (`img_size: stored` means the smallest\n"
        "stored size), validating on the fold val_fold. Prints the validation metrics\n"
        "after every epoch, tunes the post-processing triplet (threshold, minimum area,\n"
        "lower threshold) on the validation fold, and exports the model to --out:\n"
        "model.keras, a TF SavedModel (on the TensorFlow backend only) and\n"
        "model_card.json."
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
    raw=True,
    arguments=_train_arguments,
    run=_run_train,
    needs=frozenset({"keras", "ray"}),  # Ray with --from-search
    shown=("--config", "--data", "--from-search"),
)
