"""What the packages' commands share: the :class:`Command` of app/cli.py's registry,
argument types and options."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pneumotune.errors import UsageError

# What a command's handler may need, imported inside the handler only, never while the
# parser is built: `pneumotune --help` must not wait for Ray or TensorFlow.
NEEDS = {
    "ray": "starts a local Ray or joins a cluster",
    "keras": "imports Keras in this process (TensorFlow first when it is the backend)",
}


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand of `pneumotune`, as app/cli.py's registry (``COMMANDS``) holds it.

    The registry builds its parser: ``help`` is its line in `pneumotune --help`,
    ``description`` and ``epilog`` its own help's (``raw``: keep their line breaks),
    ``arguments`` adds its arguments and ``run`` is its handler, which returns what the
    command made (printed with ``describe()``) or None when it printed its own output.
    ``needs`` (keys of :data:`NEEDS`) says what the handler imports; with ``keras``,
    `pneumotune` imports it first and says which backend runs. ``shown`` names the
    options of its usage line in `pneumotune --help`, besides its positional and required
    arguments, which the line always shows.
    """

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]
    description: str | None = None
    epilog: str | None = None
    raw: bool = False
    needs: frozenset[str] = frozenset()
    shown: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"command {self.name}: unknown needs {sorted(unknown)}")


def sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 16:
        raise argparse.ArgumentTypeError(f"sizes must be integers >= 16, got {text!r}")
    return sizes


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


# pneumotune.data.dicom.PIXEL_BUDGET in MiB (tested equal): that module imports OpenCV and
# pydicom, which `pneumotune --help` must not wait for.
PIXEL_BUDGET_MB = 64


def pixel_budget_bytes(text: str) -> int:
    """``--pixel-budget-mb`` -> bytes."""
    try:
        mib = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MiB, got {text!r}") from None
    if not 0 < mib < 2**40:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected a positive number of MiB, got {text}")
    return max(1, int(mib * 2**20))


def add_pixel_budget(p: argparse.ArgumentParser, refused: str) -> None:
    """--pixel-budget-mb, stored as ``args.pixel_budget`` in bytes (pneumotune.data.dicom's
    keyword); ``refused`` says what becomes of a file over it."""
    p.add_argument(
        "--pixel-budget-mb",
        dest="pixel_budget",
        type=pixel_budget_bytes,
        default=PIXEL_BUDGET_MB * 2**20,
        metavar="MIB",
        help="largest image to decode, in MiB of pixel data: Rows x Columns x samples x "
        f"bytes per sample (default {PIXEL_BUDGET_MB}: an 8192x8192 8-bit image; SIIM's are "
        "1 MiB). An image over it, a JPEG frame or deflated data set that claims more, or a "
        "file larger than it plus 16 MiB is refused before anything is decoded, so that a "
        f"small hostile file cannot exhaust memory; {refused}",
    )


def add_address(p: argparse.ArgumentParser, when: str = "") -> None:
    """--address; with none, pneumotune.ray_session.ensure_ray decides."""
    p.add_argument(
        "--address",
        default=None,
        help=f"{when}join a running Ray cluster: auto, or ray://HOST:10001 "
        "(default: $RAY_ADDRESS if set, else a new local Ray; an http:// RAY_ADDRESS is "
        "`ray job submit`'s and is passed over)",
    )


def override(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def config_from(args: argparse.Namespace, cls: type, **options: str) -> Any:
    """``cls`` (a dataclass) from the options of the same names; ``options`` maps a field
    to an option of another name. A ``ValueError`` of its checks is the user's: the
    checks live in the config so that library callers get them too."""
    values = {}
    for f in dataclasses.fields(cls):
        option = options.get(f.name, f.name)
        if hasattr(args, option):
            values[f.name] = getattr(args, option)
    try:
        return cls(**values)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def add_path(
    p: argparse.ArgumentParser,
    flag: str,
    help: str,
    metavar: str | None = None,
    default: Path | None = None,
) -> None:
    """An option that names a file or folder: a :class:`Path`, ``default`` (None: the
    command works it out, as its help says) when not given."""
    p.add_argument(flag, type=Path, default=default, metavar=metavar, help=help)


def add_results(p: argparse.ArgumentParser) -> None:
    """RESULTS: a search's results folder (`status`, `export`)."""
    p.add_argument("results", type=Path, help="the search directory, <storage>/<name>")


def add_dicom_dir(p: argparse.ArgumentParser, name: str) -> None:
    """A folder of DICOM files to read (`convert`'s SRC, `predict`'s DICOM_DIR)."""
    p.add_argument(name, type=Path, help="folder searched recursively for *.dcm")


def add_experiment(p: argparse.ArgumentParser) -> None:
    """--config of a search (`search`, `demo`): an experiment file or a shipped one's name."""
    p.add_argument(
        "--config",
        default="demo",
        metavar="YAML",
        help="experiment file, or the name of a shipped one (default: demo)",
    )


def add_no_dashboard(p: argparse.ArgumentParser) -> None:
    """--no-dashboard, stored as ``args.dashboard`` (``ensure_ray``'s keyword)."""
    p.add_argument(
        "--no-dashboard",
        dest="dashboard",
        action="store_false",
        help="do not start the Ray dashboard (local Ray only)",
    )


def add_rle_dialect(p: argparse.ArgumentParser) -> None:
    """--rle-dialect of a label CSV (`convert`, `score`)."""
    p.add_argument(
        "--rle-dialect",
        choices=("relative", "standard"),
        default="relative",
        help="relative: SIIM (default); standard: absolute 1-based starts",
    )


def add_backend(p: argparse.ArgumentParser) -> None:
    """--backend: Keras' backend for this command (and a search's trials)."""
    from pneumotune.model.backend import BACKENDS

    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (default: $KERAS_BACKEND if set, else tensorflow); a search's "
        "trials run on it too. TensorFlow alone writes the SavedModel and runs "
        "multi-worker trials",
    )
