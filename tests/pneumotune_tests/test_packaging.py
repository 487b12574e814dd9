"""The distribution installs one import name, `pneumotune`, and works beside a user's own
`data.py`, `model.py` and `search.py` (the names of our folders, and of most projects')."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_name(tmp_path):
    # Built from a copy of the tracked files: setuptools writes build/ into its source.
    source = tmp_path / "src"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip_wheel, "-q", "-w", str(tmp_path), str(source)], check=True)
    (wheel,) = tmp_path.glob("pneumotune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"pneumotune"}, top
    for module in (
        "cli",
        "errors",
        "ray_session",
        "data/convert",
        "model/train",
        "search/tuner",
        "search/watch/table",
        "search/products/export_best",
        "search/reports/report",
        "reports/page",
    ):
        assert f"pneumotune/{module}.py" in names, module
    assert "pneumotune/search/experiments/demo.yaml" in names
    dist_info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "pneumotune = pneumotune.cli:main" in zipfile.ZipFile(wheel).read(dist_info).decode()


@pytest.mark.slow
def test_commands_run_beside_a_users_raising_modules(tmp_path):
    """synth, convert, search (every trial), export and predict from a folder whose
    data.py, model.py and search.py raise on import: Ray's workers put the working
    directory first on their path, so a top-level `data` of ours would be theirs."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("data", "model", "search"):
        (project / f"{name}.py").write_text(
            f"raise ImportError('the user\\'s own {name}.py was imported')\n"
        )
    (project / "exp.yaml").write_text(
        "name: beside\nmetric: val_iou\nepochs: 1\nnum_samples: 2\nmax_concurrent: 2\n"
        "max_failures: 0\nresources: {cpu: 1, gpu: 0}\n"
        "fixed: {img_size: 32, depth: 2, batch_size: 8}\nspace: {base_filters: [4, 8]}\n"
    )

    def pneumotune(*args: str) -> str:
        done = subprocess.run(
            [str(BIN / "pneumotune"), *args],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert done.returncode == 0, f"{args[0]}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert "was imported" not in done.stdout + done.stderr
        return done.stdout

    pneumotune("synth", "src", "--images", "40", "--size", "64")
    pneumotune("convert", "src", "ds", "--sizes", "32")
    pneumotune(
        "search",
        "--config",
        "exp.yaml",
        "--data",
        "ds",
        "--storage",
        "results",
        "--name",
        "t",
        "--no-dashboard",
    )
    from pneumotune.search.results import summarise

    summary = summarise(project / "results" / "t")
    assert len(summary.trials) == 2
    assert all(t.outcome == "completed" for t in summary.trials), summary.describe()
    pneumotune("export", "results/t", "--out", "model-dir")
    pneumotune("predict", "model-dir", "src/dicom-images-train", "--out", "sub.csv")
    rows = (project / "sub.csv").read_text().splitlines()
    assert rows[0] == "ImageId,EncodedPixels" and len(rows) == 41
