"""The model's commands: `predict` (DICOMs -> submission CSV) and `score` (Kaggle score).

Each is a :class:`~pneumotune.cli_args.Command` of app/cli.py's registry.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pneumotune import cli_args as A


# --------------------------------------------------------------------------- predict
def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", type=Path, help="exported model directory (holds model_card.json)")
    A.add_dicom_dir(p, "dicom_dir")
    A.add_path(
        p,
        "--out",
        "submission CSV to write (default ./submission.csv)",
        default=Path("submission.csv"),
    )
    p.add_argument(
        "--batch-size", type=A.positive_int, default=16, help="images per model call (default 16)"
    )
    A.add_pixel_budget(p, "such a file is a row of <OUT stem>.errors.csv and has no row")
    A.add_backend(p)


def _run_predict(args: argparse.Namespace) -> Any:
    from pneumotune.model.predict import predict_folder

    return predict_folder(
        args.model_dir,
        args.dicom_dir,
        args.out,
        batch_size=args.batch_size,
        progress=True,
        pixel_budget=args.pixel_budget,
    )


PREDICT = A.Command(
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
    arguments=_predict_arguments,
    run=_run_predict,
    needs=frozenset({"keras"}),
    shown=("--out",),
)


# --------------------------------------------------------------------------- score
def _score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("submission", type=Path, help="submission CSV (ImageId,EncodedPixels)")
    p.add_argument(
        "truth", type=Path, help="label CSV, e.g. train-rle.csv or a synthetic test-rle.csv"
    )
    A.add_path(
        p,
        "--dicoms",
        "DICOM folder of these images: masks are decoded at each DICOM's own size "
        "(default: 1024x1024 for every image, as SIIM)",
        metavar="DIR",
    )
    A.add_rle_dialect(p)
    A.add_path(
        p,
        "--errors",
        "ledger of the rows that cannot be decoded (file,line,image_id,reason), written "
        "even when empty (default: <SUBMISSION stem>.score-errors.csv beside it)",
        metavar="CSV",
    )
    A.add_pixel_budget(
        p, "with --dicoms, such a file's size is not used (its masks are decoded at 1024x1024)"
    )


def _run_score(args: argparse.Namespace) -> Any:
    from pneumotune.model.predict import score_submission

    errors = args.errors or args.submission.with_name(f"{args.submission.stem}.score-errors.csv")
    return score_submission(
        args.submission,
        args.truth,
        args.rle_dialect,
        dicom_dir=args.dicoms,
        errors_csv=errors,
        pixel_budget=args.pixel_budget,
    )


SCORE = A.Command(
    "score",
    help="the Kaggle score of a submission CSV against a label CSV",
    description=(
        "Score a submission (ImageId,EncodedPixels) against a label CSV the way the "
        "SIIM-ACR leaderboard did: the Dice coefficient of each image of the label file, "
        "averaged; an image with an empty truth scores 1 if the prediction is empty too "
        "and 0 otherwise. Images of the label file missing from the submission count as "
        "predicted empty. Also prints what an all-empty submission would score. A row "
        "that cannot be decoded is listed with its reason in the --errors CSV and the "
        "rest is scored: a truth image with such a row is left out, an unreadable "
        "prediction scores 0."
    ),
    arguments=_score_arguments,
    run=_run_score,
    shown=("--dicoms",),
)
