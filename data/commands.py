"""The dataset's commands: `synth` and `convert`.

Each is a :class:`~pneumotune.cli_args.Command` of app/cli.py's registry: its
arguments, and a handler that parses nothing more and calls the importable function that
does the work.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pneumotune import cli_args as A
from pneumotune.errors import UsageError


# --------------------------------------------------------------------------- synth
def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument(
        "--images",
        type=A.positive_int,
        default=200,
        help="DICOM files to write, including the --unlabelled ones (default 200)",
    )
    p.add_argument(
        "--size", type=int, default=1024, help="image side in pixels (default 1024, as SIIM)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--positive-fraction",
        type=A.fraction,
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


def _run_synth(args: argparse.Namespace) -> Any:
    from pneumotune.data.synth import SynthConfig, write_dataset

    if args.unlabelled > args.images:
        raise UsageError(f"--unlabelled {args.unlabelled} exceeds --images {args.images}")
    cfg = A.config_from(args, SynthConfig, n_images="images")
    try:
        return write_dataset(args.out, cfg, workers=args.workers, progress=True)
    except FileExistsError as exc:
        raise UsageError(str(exc)) from exc


SYNTH = A.Command(
    "synth",
    help="write a synthetic dataset in the SIIM-ACR layout",
    description=(
        "Write a synthetic chest X-ray dataset that follows the real SIIM-ACR layout: "
        "OUT/dicom-images-<split>/<study>/<series>/<SOPInstanceUID>.dcm (JPEG Baseline, "
        "8-bit MONOCHROME2, real tags) and the label CSV in the stage-1 (train-rle.csv, "
        "leading spaces) or stage-2 (stage_2_train.csv) dialect. Deterministic for a seed."
    ),
    arguments=_synth_arguments,
    run=_run_synth,
    shown=("--images", "--size"),
)


# --------------------------------------------------------------------------- convert
def _convert_arguments(p: argparse.ArgumentParser) -> None:
    A.add_dicom_dir(p, "src")
    p.add_argument("out", type=Path, help="dataset folder to write (must be empty or absent)")
    A.add_path(
        p,
        "--labels",
        "label CSV with columns ImageId, EncodedPixels (default: found in SRC)",
        metavar="CSV",
    )
    p.add_argument(
        "--sizes",
        type=A.sizes,
        default=(256, 512),
        help="comma-separated square sizes to store (default 256,512)",
    )
    A.add_rle_dialect(p)
    p.add_argument("--folds", type=int, default=5, help="patient-grouped folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    A.add_pixel_budget(p, "such a file is a row of errors.csv")
    A.add_address(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _run_convert(args: argparse.Namespace) -> Any:
    from pneumotune.data.convert import ConvertConfig, convert

    cfg = A.config_from(args, ConvertConfig, n_folds="folds")
    return convert(cfg, address=args.address, progress=True)


CONVERT = A.Command(
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
    arguments=_convert_arguments,
    run=_run_convert,
    needs=frozenset({"ray"}),
    shown=("--labels", "--sizes"),
)
