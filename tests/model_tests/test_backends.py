"""The same model code on TensorFlow and JAX: a training run reaches comparable validation
IoU on both, a ``.keras`` file saved on one backend loads and predicts the same on the
other (each backend in its own process: Keras chooses its backend once per process). The
backend-marked tests run again on JAX as CI's second pytest run (.ci/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[2]


def on(backend: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"{backend}: {args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_a_small_training_run_learns_alike_on_tensorflow_and_jax(tmp_path):
    runs = {}
    for backend in ("tensorflow", "jax"):
        out = tmp_path / f"{backend}.json"
        on(backend, "-m", "tests.model_tests.backend_worker", "train", str(out))
        runs[backend] = json.loads(out.read_text())
        assert runs[backend]["backend"] == backend
    tf_iou, jax_iou = (max(runs[b]["val_iou"]) for b in ("tensorflow", "jax"))
    print(f"best val IoU in 6 epochs: tensorflow {tf_iou:.3f}, jax {jax_iou:.3f}")
    # Same data, config and seed; the backends' random streams and kernels differ, so the
    # curves are not identical, but both must learn the blobs and land close together.
    assert tf_iou > 0.5 and jax_iou > 0.5, runs
    assert abs(tf_iou - jax_iou) < 0.15, runs


@pytest.mark.slow
@pytest.mark.parametrize(("saved_on", "loaded_on"), [("tensorflow", "jax"), ("jax", "tensorflow")])
def test_a_keras_file_saved_on_one_backend_predicts_the_same_on_the_other(
    tmp_path, saved_on, loaded_on
):
    rng = np.random.default_rng(0)
    x = tmp_path / "x.npy"
    np.save(x, rng.integers(0, 256, (4, 32, 32, 1)).astype(np.float32))
    model = tmp_path / "model.keras"
    worker = ("-m", "tests.model_tests.backend_worker")
    on(saved_on, *worker, "save", str(model), str(x), str(tmp_path / "saved.npy"))
    on(loaded_on, *worker, "load", str(model), str(x), str(tmp_path / "loaded.npy"))
    saved, loaded = np.load(tmp_path / "saved.npy"), np.load(tmp_path / "loaded.npy")
    assert saved.shape == loaded.shape == (4, 32, 32, 1)
    np.testing.assert_allclose(loaded, saved, atol=1e-4)
