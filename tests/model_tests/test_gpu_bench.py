"""bench/gpu.py's smoke test: the GPU benchmark runs end to end on JAX on a CPU, in every
one of its processes without TensorFlow or Ray, as on a lent GPU machine that has neither.

The blocking is a ``sitecustomize.py`` on ``PYTHONPATH``: Python imports it at start-up in
the benchmark and in each worker process it starts (they inherit the environment), and it
hides these modules from every finder on ``sys.meta_path``, as a machine without them
would. Not ``sys.modules["tensorflow"] = None``: that also makes
``"tensorflow" in sys.modules`` true, and Keras reads exactly that as "TensorFlow is loaded"
(``keras.src.utils.backend_utils.in_tf_graph``, called by every ``Rescaling`` layer), then
fails to import it. Nothing is asserted about the numbers: they are a CPU's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("tensorflow", "ray")
SITECUSTOMIZE = f"""import sys


class Hide:
    \"\"\"Written by tests/model_tests/test_gpu_bench.py: a finder that finds nothing of
    {BLOCKED!r}, as on a machine where they are not installed.\"\"\"

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
"""
SECTIONS = ("meta", "training", "first_epoch", "concurrency", "input_pipeline")


def blocking_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "block"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    paths = [str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


@pytest.mark.slow
def test_gpu_bench_smoke_test_runs_on_jax_without_tensorflow_or_ray(tmp_path):
    env = blocking_env(tmp_path)
    found = f"import importlib.util as u; print([m for m in {BLOCKED!r} if u.find_spec(m)])"
    probe = subprocess.run(
        [sys.executable, "-c", found], env=env, capture_output=True, text=True, timeout=60
    )
    assert probe.stdout.strip() == "[]", f"the sitecustomize did not hide them: {probe}"

    out = tmp_path / "gpu-jax.json"
    cmd = [sys.executable, "bench/gpu.py", "--smoke-test", "--backend", "jax", "--json", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    print(f"bench/gpu.py --smoke-test on JAX: {seconds:.1f} s\n{done.stdout}")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    # Its promise is "under a minute" on an idle 2-core CI machine; the slack is for a
    # loaded one. A smoke test that grows past this has stopped being one.
    assert seconds < 180, f"the smoke test took {seconds:.0f} s"

    report = json.loads(out.read_text())
    assert all(report.get(section) for section in SECTIONS), sorted(report)
    assert report["meta"]["backend"] == "jax"
    statuses = {(r["precision"], r["jit"]): r["status"] for r in report["training"]}
    assert statuses[("float32", "on")] == statuses[("float32", "off")] == "ok", statuses
    assert statuses[("mixed", "on")] == "skipped: no GPU", statuses  # the CI machine has none
    assert [r["trials"] for r in report["concurrency"]["rows"]] == [1, 2]
    assert {r["threads"] for r in report["input_pipeline"]["rows"]} >= {1}
    # The driver and figure 1's workers ran with neither module loaded.
    ran = [report["meta"], *(r for r in report["training"] if r["status"] == "ok")]
    assert not any(set(BLOCKED) & set(r["modules"]) for r in ran), ran
