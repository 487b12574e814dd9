"""The only place pneumotune touches Ray's, Keras' and Optuna's internals.

The rule: a private name of Ray, Keras or Optuna (an attribute or function whose name
starts with ``_``, a module under ``_private``/``_internal``/``keras.src``, a patched class)
is used in one module of this package per library and nowhere else:

* :mod:`pneumotune.compat.ray_internals`: Ray (Tune's OptunaSearch, controller and actor
  manager, Train's checkpoint bookkeeping, ``ray.init``'s node parameters);
* :mod:`pneumotune.compat.keras_internals`: Keras (the global seed state, an
  optimizer's schedule, the TensorFlow trainer's symbolic build).

Optuna's public API covers what pneumotune needs of it (``Study.ask``/``tell``/
``get_trials``/``enqueue_trial``, ``FrozenTrial``'s fields), so there is no
``optuna_internals`` module; the Optuna study and trials behind Ray's ``OptunaSearch`` are
Ray's internals.

Each module names the release range it was written against (``TESTED``, pyproject.toml's
pin) and warns once per process, on import, when the installed release is outside it
(:func:`check_version`). Each internal sits behind one small named function or constant
whose docstring says what it touches, why, and what breaks without it; everything else
imports those. Public APIs come first: an internal stays only where none does the job.

:func:`attribute_set` changes such a setting (or a public one with no scoped API) for
one block.

Beside them, :mod:`pneumotune.compat.moved_modules` keeps pneumotune's own old module
names importable for the search folders an older release pickled (see its docstring).

``tests/pneumotune_tests/test_compat.py`` holds the rule: one canary test per internal
(it still exists, with the shape used here; its failure names the internal and the
function that uses it), and a test that finds no internal name outside this package.
After an upgrade of Ray, Keras or Optuna run those tests first.

Importing this package (or its modules) imports neither Ray, Keras nor TensorFlow: each
function imports what it touches when called.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any


class UntestedVersionWarning(UserWarning):
    """A library is installed at a release outside the range its compat module was
    written against: the internals it uses may have changed."""


_warned: set[str] = set()


def version_problem(module: str, distribution: str, tested: str, installed: str | None) -> str:
    """Why ``installed`` (a release of ``distribution``; None: not installed) is not what
    ``module`` was written against (``tested``, a PEP 440 specifier such as ``~=2.60.0``);
    "" when it is."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if installed is None:
        return f"{module} needs {distribution} {tested}, which is not installed"
    try:
        inside = Version(installed) in SpecifierSet(tested)
    except InvalidVersion:
        inside = False
    if inside:
        return ""
    return (
        f"{module} was written and tested against {distribution} {tested}; "
        f"{distribution} {installed} is installed. The {distribution} internals it uses may "
        "have changed or gone: run tests/pneumotune_tests/test_compat.py, which names each "
        "one that did"
    )


def check_version(module: str, distribution: str, tested: str) -> str:
    """Warn (:class:`UntestedVersionWarning`, once per process and module) when the
    installed ``distribution`` is outside ``tested``; returns the problem, "" if none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed: str | None = version(distribution)
    except PackageNotFoundError:
        installed = None
    problem = version_problem(module, distribution, tested, installed)
    if problem and module not in _warned:
        _warned.add(module)
        warnings.warn(problem, UntestedVersionWarning, stacklevel=2)
    return problem


@contextlib.contextmanager
def attribute_set(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` while the block runs, then what it was before, even when
    the block raises: a library setting with no scoped API of its own (a module constant,
    a class, a context's switch) changed for one call without leaking to the rest of the
    process."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)
