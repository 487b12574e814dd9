"""Shared fixtures: a real local Ray for the whole session, quiet TF, offline albumentations."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Each node's copies of datasets (data.node_cache) in a folder of this run, not the
# user's ~/.cache; set before Ray starts, so that its workers inherit it.
if "PNEUMOTUNE_CACHE" not in os.environ:
    os.environ["PNEUMOTUNE_CACHE"] = tempfile.mkdtemp(prefix="pneumotune-test-cache-")
    atexit.register(shutil.rmtree, os.environ["PNEUMOTUNE_CACHE"], ignore_errors=True)
# Before any import of albumentations / TensorFlow: no network call at import, less noise.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """A real two-CPU Ray, started once per test session (ray.init costs ~5 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory):
    """A small synthetic SIIM folder: 64 DICOMs at 128 px, 2 of them without a label row."""
    from pneumotune.data.synth import SynthConfig, write_dataset

    out = tmp_path_factory.mktemp("synth") / "raw"
    write_dataset(out, SynthConfig(n_images=64, size=128, seed=0, unlabelled=2), workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(synth_raw, ray_local, tmp_path_factory):
    """``synth_raw`` converted at 32 and 64 px with the real Ray Data pipeline."""
    from pneumotune.data.convert import ConvertConfig, convert

    out = tmp_path_factory.mktemp("dataset") / "ds"
    convert(ConvertConfig(src=synth_raw, out=out, sizes=(32, 64), n_folds=4), progress=False)
    return out
