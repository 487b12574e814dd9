"""One package root and one copy of it: the root package's folder is ``app/`` (pyproject's
``package-dir`` maps it to ``pneumotune``), so no folder of a checkout is importable as
``pneumotune``. From the repository's root, where Python (and Ray, on every worker) puts
the current directory first on ``sys.path``, ``import pneumotune`` is the installed
package (``pip install -e .`` here), never a second copy of it whose ``PneumotuneError`` is
another class, nor other code in the workers than in the driver.

A stale ``pneumotune/`` folder at the root (``pneumotune/__pycache__/`` survives a checkout
from before ``app/``) would be imported as a namespace package instead of the editable
install: delete it. These tests then fail and say so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pneumotune

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# The import names of pyproject.toml's package-dir and the folders they map.
PACKAGE_DIR = SETUPTOOLS["package-dir"]
# Every package the distribution installs, subpackages included.
PACKAGES = SETUPTOOLS["packages"]


def folder_of(package: str) -> str:
    """The repository folder of an installed package: its mapped folder, or its nearest
    mapped parent's with the rest of its dotted name (``pneumotune.search.watch`` ->
    ``search/watch``)."""
    parent = max((p for p in PACKAGE_DIR if package == p or package.startswith(p + ".")), key=len)
    rest = package[len(parent) :].lstrip(".").split(".") if package != parent else []
    return "/".join([PACKAGE_DIR[parent], *rest])


STALE = f"is {ROOT / 'pneumotune'} a stale folder? delete it (see this module's docstring)"


def _python(code: str, cwd: Path, *flags: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_pyproject_maps_the_root_package_to_app():
    assert PACKAGE_DIR["pneumotune"] == "app"
    assert not (ROOT / "pneumotune").exists(), STALE


def test_the_package_has_exactly_one_folder():
    assert list(pneumotune.__path__) == [str(APP)], (pneumotune.__path__, STALE)
    assert Path(pneumotune.__file__) == APP / "__init__.py"


def test_nothing_but_the_packages_imports_under_pneumotune_from_the_root():
    """From the repository's root (the current directory first on sys.path): the folders
    beside the packages are no subpackages, and `pneumotune` is the installed one."""
    probe = (
        "import importlib, json, pneumotune\n"
        "missing = {}\n"
        "for name in ('pneumotune', 'tests', 'bench', 'cluster', 'app'):\n"
        "    try:\n"
        "        importlib.import_module('pneumotune.' + name)\n"
        "        missing[name] = None\n"
        "    except ModuleNotFoundError as exc:\n"
        "        missing[name] = exc.name\n"
        "print(json.dumps({'path': list(pneumotune.__path__), 'missing': missing}))\n"
    )
    found = json.loads(_python(probe, ROOT))
    assert found["path"] == [str(APP)], STALE
    assert found["missing"] == {
        name: f"pneumotune.{name}" for name in ("pneumotune", "tests", "bench", "cluster", "app")
    }


def test_every_subpackage_imports_from_another_folder(tmp_path):
    """From a folder that is not the checkout, the install alone finds every package (the
    editable install maps each import name onto its folder), and pyproject's list of
    packages holds every folder of a package that ships."""
    assert set(PACKAGE_DIR) <= set(PACKAGES)
    on_disk = {
        str(init.parent.relative_to(ROOT))
        for folder in PACKAGE_DIR.values()
        for init in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk == {folder_of(p) for p in PACKAGES}
    names = sorted(set(PACKAGES) | {"pneumotune.cli", "pneumotune.errors"})
    probe = (
        "import importlib, json, sys\n"
        f"names = {names!r}\n"
        "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))\n"
        "assert 'tensorflow' not in sys.modules and 'ray' not in sys.modules\n"
    )
    files = json.loads(_python(probe, tmp_path))
    for name in PACKAGES:
        assert files[name] == str(ROOT / folder_of(name) / "__init__.py"), name
    assert files["pneumotune.cli"] == str(APP / "cli.py")
    assert files["pneumotune.errors"] == str(APP / "errors.py")


def test_a_ray_worker_imports_the_drivers_files():
    """A local Ray started from the repository's root: Ray puts the driver's working
    directory first on its workers' sys.path, so the checkout is on it, and the worker
    must still import the same pneumotune as its driver (one Ray start, ~5-15 s)."""
    probe = (
        "import json, os, sys, ray, pneumotune, pneumotune.errors\n"
        "ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "@ray.remote\n"
        "def where():\n"
        "    import os, sys, pneumotune, pneumotune.errors\n"
        "    return {'files': [pneumotune.__file__, pneumotune.errors.__file__],\n"
        "            'path': list(pneumotune.__path__), 'sys_path': sys.path,\n"
        "            'cwd': os.getcwd()}\n"
        "driver = {'files': [pneumotune.__file__, pneumotune.errors.__file__],\n"
        "          'path': list(pneumotune.__path__)}\n"
        "print('PROBE', json.dumps({'driver': driver, 'worker': ray.get(where.remote())}))\n"
        "ray.shutdown()\n"
    )
    out = _python(probe, ROOT, timeout=300)
    found = json.loads(next(x for x in out.splitlines() if x.startswith("PROBE ")).split(" ", 1)[1])
    driver, worker = found["driver"], found["worker"]
    assert driver["files"] == [str(APP / "__init__.py"), str(APP / "errors.py")], STALE
    assert worker["files"] == driver["files"]
    assert worker["path"] == driver["path"] == [str(APP)]
    # The premise: the checkout is on the worker's path (and its working directory).
    assert str(ROOT) in worker["sys_path"] and worker["cwd"] == str(ROOT), worker


def test_bench_gpu_maps_an_uninstalled_checkout():
    """bench/gpu.py runs where nothing is installed (a lent GPU machine, the tree copied):
    it maps the import names onto the folders itself, from pyproject's package-dir.
    `python -S`: no site-packages .pth files, so no editable install to find."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    probe = (
        "import importlib.util, json, sys\n"
        f"sys.path[1:1] = {site!r}\n"
        "assert importlib.util.find_spec('pneumotune') is None, 'installed after all'\n"
        f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
        "import gpu\n"
        "gpu.ensure_importable()\n"
        "import pneumotune, pneumotune.errors, pneumotune.model.backend, pneumotune.data\n"
        "print(json.dumps([list(pneumotune.__path__), pneumotune.errors.__file__,\n"
        "                  pneumotune.model.backend.__file__, pneumotune.data.__file__]))\n"
    )
    path, errors, backend, data = json.loads(_python(probe, Path("/"), "-S"))
    assert path == [str(APP)]
    assert errors == str(APP / "errors.py")
    assert backend == str(ROOT / "model" / "backend.py")
    assert data == str(ROOT / "data" / "__init__.py")


def test_the_image_copies_every_package_folder():
    """cluster/Dockerfile installs the package from the folders it copies, and its
    .dockerignore admits only those: both follow pyproject's package-dir."""
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    ignore = (ROOT / "cluster" / "Dockerfile.dockerignore").read_text().splitlines()
    copied = set(re.findall(r"^COPY --chown=\S+ (\w+) \./\1$", dockerfile, re.M))
    assert copied == set(PACKAGE_DIR.values())
    assert {line[1:] for line in ignore if line.startswith("!")} >= copied
    # The first install, of the dependencies, sees a stub of every package's folder.
    stubs = re.search(r"touch ([^&]+)&&", dockerfile.replace("\\\n", " "))
    assert stubs and set(stubs.group(1).split()) == {
        f"{folder_of(p)}/__init__.py" for p in PACKAGES
    }
