"""pneumotune.compat.moved_modules: a search folder an older release pickled (naming a
module that has since moved) still unpickles, and the old names import nowhere else."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from pneumotune.compat.moved_modules import MOVED


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_each_old_name_has_a_new_home_and_no_file_of_its_own(old, new):
    assert importlib.util.find_spec(new) is not None, f"{new} (where {old} went) is gone"
    spec = importlib.util.find_spec(old)
    # a stale file at the old name would be imported instead of the alias
    assert spec is None or spec.origin is None, f"{old} is a module again: {spec.origin}"


# What pickle writes for a class (protocol 0's GLOBAL opcode), under the name an older
# release gave its module: Tune's tuner.pkl names the progress callback this way.
SCRIPT = r"""
import pickle, sys
old = b"cpneumotune.search.progress\nProgressLines\n."
try:
    pickle.loads(old)
except ModuleNotFoundError as error:
    print("before:", error.name)
from pneumotune.compat import moved_modules
moved_modules.install()
moved_modules.install()
from pneumotune.search.watch.progress import ProgressLines
assert pickle.loads(old) is ProgressLines
assert sys.modules["pneumotune.search.progress"] is sys.modules["pneumotune.search.watch.progress"]
print("after: same class")
"""


def test_a_pickle_naming_a_moved_module_loads_the_class_it_meant():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [
        "before: pneumotune.search.progress",
        "after: same class",
    ]
