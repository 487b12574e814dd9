"""One base class for the errors a user can act on.

A :class:`PneumotuneError` means bad input (a missing file, a wrong key, an impossible
option, a training run that diverged): ``pneumotune``'s ``main()`` prints its message
after ``pneumotune COMMAND: error:`` and exits with its ``exit_code`` (with ``--debug``
or ``PNEUMOTUNE_DEBUG=1``, after its traceback). Any other exception is a bug and keeps
its traceback. The library's own error classes (a bad
dataset, a bad experiment file, ...) derive from it, most also from ``ValueError`` so
that library callers may catch them as such.
"""

from __future__ import annotations

from pathlib import Path


class PneumotuneError(Exception):
    """A problem with the user's input that stops the command."""

    exit_code = 2

    @classmethod
    def require_file(cls, folder: Path, name: str, what: str, hint: str) -> Path:
        """``folder / name``, the file that makes ``folder`` ``what`` (a dataset's manifest,
        a model's card, a search's plan); when it is missing, this error, saying "FOLDER is
        not WHAT (no NAME); HINT"."""
        path = Path(folder) / name
        if not path.is_file():
            raise cls(f"{folder} is not {what} (no {name}); {hint}")
        return path


class UsageError(PneumotuneError, ValueError):
    """Options or inputs that cannot work together (e.g. --resume with nothing to resume)."""


class ConfigError(PneumotuneError, ValueError):
    """A configuration that cannot be used; the message names the file (or option) and key."""


class ClusterError(PneumotuneError):
    """The Ray cluster a command was told to join cannot be reached or joined."""
