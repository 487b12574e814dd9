"""The `pneumotune` command line: a thin parser that composes each package's commands.

The dataset's commands live in pneumotune.data.commands (synth, convert), the model's
in pneumotune.model.commands (predict, score), the search's in
pneumotune.search.commands (demo, search, status, report, export, train). Each handler
calls importable functions; heavy imports (Ray, TensorFlow, pydicom) happen inside it,
so `pneumotune --help` answers at once.

Errors: a :class:`pneumotune.errors.PneumotuneError` is the user's to fix and is printed
as one line with its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# albumentations calls the network at import unless told not to (it checks for updates).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pneumotune.data.commands import COMMANDS as DATA_COMMANDS
from pneumotune.errors import PneumotuneError
from pneumotune.model.commands import COMMANDS as MODEL_COMMANDS
from pneumotune.search.commands import COMMANDS as SEARCH_COMMANDS

EPILOG = """\
The pipeline, one stage per command (each writes what the next one reads):
  pneumotune synth    OUT                 a synthetic SIIM-layout dataset (DICOM + RLE CSV)
  pneumotune convert  SRC DATASET         DICOMs + labels -> Parquet + manifest + error ledger
  pneumotune report   DATASET             EDA report (HTML + PNG)
  pneumotune search   --config demo --data DATASET                search (Ray Tune)
  pneumotune status   RESULTS_DIR         the trial table of a running or finished search
  pneumotune report   RESULTS_DIR         search report (HTML + PNG)
  pneumotune export   RESULTS_DIR --out MODEL                     the best trial's model
  pneumotune train    --config demo --data DATASET --out MODEL    one run, no search
  pneumotune predict  MODEL DICOM_DIR --out submission.csv        DICOMs -> RLE CSV
  pneumotune score    submission.csv TRUTH.csv --dicoms DICOM_DIR  the Kaggle score
  pneumotune demo                         all of the above on synthetic data

Run `pneumotune COMMAND --help` for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumotune",
        description="Hyperparameter search for pneumothorax segmentation on chest X-rays, "
        "on a laptop or a Ray cluster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (*SEARCH_COMMANDS[:1], *DATA_COMMANDS, *SEARCH_COMMANDS[1:], *MODEL_COMMANDS):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if hasattr(args, "backend"):
            from pneumotune.model.backend import select_backend

            backend = select_backend(args.backend)  # before anything imports Keras
            if getattr(args, "keras", False):
                if backend == "tensorflow":
                    from pneumotune.model.tf_quiet import import_tensorflow

                    import_tensorflow()  # our output starts with ours, not TF's notices
                print(f"Keras backend: {backend}", flush=True)
        result = args.func(args)  # what the command made, or None when it printed its own
        if result is not None:
            print(result.describe())
        return 0
    except PneumotuneError as exc:
        print(f"pneumotune {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pneumotune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
