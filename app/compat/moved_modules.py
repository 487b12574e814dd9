"""Old module names of pneumotune, for search folders an older release pickled.

A search folder holds pickles (``tuner.pkl``, the trials in ``experiment_state-*.json``)
that name the classes of pneumotune they hold by module: the progress reporter, the
trial-log and telemetry callbacks. When a module moves (0.x's reorganisation put the
watching modules in ``search/watch/``, the products in ``search/products/`` and so on), a
folder started before the move no longer resumes: ``Tuner.restore`` fails with
``ModuleNotFoundError: No module named 'pneumotune.search.progress'``. :func:`install`
teaches the import system each old name as an alias of the module that now holds the same
code, so such a folder resumes; nothing imports under an old name otherwise.

Only moves whose module kept its contents belong in :data:`MOVED`; a module whose classes
were renamed needs more than an alias. ``pneumotune.search.watch`` (the watch table, now
``search/watch/table.py``) cannot be aliased: the name is now the package itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# old dotted name -> the module that holds its code now
MOVED: dict[str, str] = {
    "pneumotune.data.ray_session": "pneumotune.ray_session",
    "pneumotune.search.demo": "pneumotune.demo",
    "pneumotune.search.progress": "pneumotune.search.watch.progress",
    "pneumotune.search.dashboard": "pneumotune.search.watch.trial_telemetry",
    "pneumotune.search.export_best": "pneumotune.search.products.export_best",
    "pneumotune.search.retrain": "pneumotune.search.products.retrain",
    "pneumotune.search.single_run": "pneumotune.search.products.single_run",
    "pneumotune.search.report": "pneumotune.search.reports.report",
    "pneumotune.search.report_plots": "pneumotune.search.reports.plots",
    "pneumotune.search.importance": "pneumotune.search.reports.importance",
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module that holds its code now (the same module object,
    so a class unpickled through either name is one class)."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # imported already, under its own name


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names in :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Let the old names in :data:`MOVED` import (idempotent). Called before a search
    folder is resumed; a process that never resumes one never sees an old name."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
