"""The commands of the whole pipeline, which no one package owns: `demo` (every stage,
on synthetic data) and `report` (of a dataset, or of a search's results folder).

Each is a :class:`~pneumotune.cli_args.Command` of app/cli.py's registry; the packages'
own commands are in pneumotune.data.commands, pneumotune.model.commands and
pneumotune.search.commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pneumotune import cli_args as A
from pneumotune.errors import UsageError


# --------------------------------------------------------------------------- demo
def _demo_arguments(p: argparse.ArgumentParser) -> None:
    from pneumotune.demo import DEMO_IMAGES, DEMO_TRIALS

    A.add_path(
        p,
        "--out",
        "folder for everything (default: ./pneumotune-demo)",
        default=Path("pneumotune-demo"),
    )
    p.add_argument(
        "--images", type=int, default=DEMO_IMAGES, help=f"training DICOMs (default {DEMO_IMAGES})"
    )
    p.add_argument("--test-images", type=int, default=60, help="held-out DICOMs (default 60)")
    p.add_argument(
        "--num-samples",
        type=A.positive_int,
        default=DEMO_TRIALS,
        help=f"trials (default {DEMO_TRIALS}; `pneumotune search --config demo` runs 8)",
    )
    A.add_experiment(p)
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    A.add_no_dashboard(p)
    A.add_backend(p)


def _run_demo(args: argparse.Namespace) -> Any:
    from pneumotune.demo import DemoConfig, run_demo

    return run_demo(A.config_from(args, DemoConfig, experiment="config"))


DEMO = A.Command(
    "demo",
    help="the whole pipeline on synthetic data (the quick start)",
    description=(
        "Run every stage on a synthetic SIIM-layout dataset, on this machine: synth a "
        "training set and a held-out test set, convert (Ray Data), write the EDA report, "
        "search with the shipped `demo` experiment (Ray Tune + Optuna TPE + ASHA on a "
        "local Ray), export the best model, predict the held-out DICOMs and print their "
        "Kaggle score. About 2 minutes on 2 idle CPU cores (1.5-2.7 measured)."
    ),
    epilog="A second run reuses the data under --out and runs a new search (--fresh: all).",
    arguments=_demo_arguments,
    run=_run_demo,
    needs=frozenset({"ray", "keras"}),
    shown=("--out",),
)


# --------------------------------------------------------------------------- report
def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset",
        type=Path,
        metavar="DATASET|RESULTS",
        help="a dataset folder (holds manifest.json) or a search directory (holds pneumotune.json)",
    )
    A.add_path(
        p,
        "--out",
        "output folder (default: report/ inside the dataset or search folder)",
        metavar="DIR",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the sampled images (default 0)")
    p.add_argument(
        "--samples",
        type=A.positive_int,
        default=None,
        metavar="N",
        help="random radiographs in the sample grid (default 12), or validation images "
        "in a search report's predictions (default 6)",
    )
    A.add_backend(p)


def _run_report(args: argparse.Namespace) -> Any:
    from pneumotune.search.reports.report import DEFAULT_SAMPLES, report_search
    from pneumotune.search.results import is_experiment

    if not is_experiment(args.dataset):
        return _run_dataset_report(args)
    samples = DEFAULT_SAMPLES if args.samples is None else args.samples
    return report_search(args.dataset, args.out, seed=args.seed, samples=samples)


def _run_dataset_report(args: argparse.Namespace) -> Any:
    """The report of a dataset, or why ``args.dataset`` is not one."""
    from pneumotune.data.dataset import MANIFEST
    from pneumotune.data.report import report_dataset

    if not (args.dataset / MANIFEST).is_file():
        raise UsageError(
            f"{args.dataset} is not a pneumotune dataset: expected a folder holding {MANIFEST}, "
            "as written by `pneumotune convert SRC DATASET`, or a search directory holding "
            "pneumotune.json"
        )
    samples = 12 if args.samples is None else args.samples
    return report_dataset(args.dataset, args.out, seed=args.seed, samples=samples)


REPORT = A.Command(
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
    arguments=_report_arguments,
    run=_run_report,
    needs=frozenset({"keras"}),
    shown=("--out",),
)
