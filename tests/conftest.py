"""Shared fixtures: a real local Ray for the whole session, quiet TF, offline albumentations."""

from __future__ import annotations

import os

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
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
