"""The `pneumotune` command line: one registry of commands, and the parser built from it.

``COMMANDS`` maps each command's name to its :class:`~pneumotune.cli_args.Command`, in
the order of `pneumotune --help`; the commands themselves live with their package: the
dataset's in pneumotune.data.commands (synth, convert), the model's in
pneumotune.model.commands (predict, score), the search's in pneumotune.search.commands
(search, status, export, train), and the whole pipeline's in pneumotune.pipeline_commands
(demo; report, of a dataset or of a search). The parser, its list of commands and the
usage lines of `pneumotune --help` are all built from the registry, so the help cannot
drift from the parser. Each handler calls importable functions; heavy imports (Ray,
TensorFlow, pydicom) happen inside it, as each command declares (``needs``), so
`pneumotune --help` and `pneumotune --version` answer at once.

Errors: a :class:`pneumotune.errors.PneumotuneError` is the user's to fix and is printed
as one line with its exit code (with ``--debug`` or ``PNEUMOTUNE_DEBUG=1``, after its
traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata

# albumentations calls the network at import unless told not to (it checks for updates).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pneumotune
from pneumotune import pipeline_commands as pipeline
from pneumotune.cli_args import Command
from pneumotune.data import commands as data
from pneumotune.errors import PneumotuneError
from pneumotune.model import commands as model
from pneumotune.search import commands as search

# name -> command, in the order of `pneumotune --help`.
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        pipeline.DEMO,
        data.SYNTH,
        data.CONVERT,
        search.SEARCH,
        search.STATUS,
        pipeline.REPORT,
        search.EXPORT,
        search.TRAIN,
        model.PREDICT,
        model.SCORE,
    )
}

DEBUG_ENV = "PNEUMOTUNE_DEBUG"
DEBUG_HELP = f"on a user error, print its traceback too (also: {DEBUG_ENV}=1)"


def version() -> str:
    """``pneumotune X.Y.Z`` and the versions it runs with, read from the installed
    distributions' metadata: nothing is imported."""
    found = []
    for name, dist in (("Ray", "ray"), ("Keras", "keras")):
        try:
            found.append(f"{name} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    found.append(f"Python {platform.python_version()}")
    return f"pneumotune {pneumotune.__version__} ({', '.join(found)})"


class _Version(argparse.Action):
    """--version: the line of :func:`version`, computed only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            nargs=0,
            help="print the versions of pneumotune, Ray, Keras and Python, and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(version())  # on stdout, as argparse's own version action
        parser.exit()


def usage_line(name: str, p: argparse.ArgumentParser, command: Command) -> str:
    """``pneumotune NAME`` with its positional and required arguments and the options the
    command shows, read from its parser (a metavar, else the name upper-cased), so that
    the line cannot name an argument the command does not have."""
    # argparse lists a parser's arguments only in _actions (no public accessor; the
    # attribute has kept its name and shape since Python 2.7, and test_cli reads it too)
    options = {o: a for a in p._actions for o in a.option_strings}
    unknown = [o for o in command.shown if o not in options]
    if unknown:
        raise ValueError(f"command {name}: shows options it does not have: {unknown}")
    words = [f"pneumotune {name}"]
    for a in p._actions:
        if not a.option_strings:
            words.append(a.metavar or a.dest.upper())
        elif a.required:
            words.append(f"{a.option_strings[-1]} {a.metavar or a.dest.upper()}")
    for option in command.shown:
        a = options[option]
        value = "" if a.nargs == 0 else f" {a.metavar or a.dest.upper()}"
        words.append(f"[{option}{value}]")
    return " ".join(words)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumotune",
        description="Hyperparameter search for pneumothorax segmentation on chest X-rays,\n"
        "on a laptop or a Ray cluster.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    lines = []
    for name, command in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            formatter_class=(
                argparse.RawDescriptionHelpFormatter if command.raw else argparse.HelpFormatter
            ),
        )
        command.arguments(p)
        # Also after the command; SUPPRESS: absent, it leaves the top level's value alone.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.set_defaults(handler=command)
        lines.append(usage_line(name, p, command))
    parser.epilog = (
        "Usage of each command (its main arguments; `pneumotune COMMAND --help` for all):\n"
        + "".join(f"  {line}\n" for line in lines)
    )
    return parser


def debugging(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "handler", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        if hasattr(args, "backend"):
            from pneumotune.model.backend import select_backend

            backend = select_backend(args.backend)  # before anything imports Keras
            if "keras" in command.needs:
                if backend == "tensorflow":
                    from pneumotune.model.tf_quiet import import_tensorflow

                    import_tensorflow()  # our output starts with ours, not TF's notices
                print(f"Keras backend: {backend}", flush=True)
        result = command.run(args)  # what the command made, or None when it printed its own
        if result is not None:
            print(result.describe())
        return 0
    except PneumotuneError as exc:
        if debugging(args):
            traceback.print_exc()
        print(f"pneumotune {command.name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if debugging(args):
            traceback.print_exc()
        print(f"pneumotune {command.name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
