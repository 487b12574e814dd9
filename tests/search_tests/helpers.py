"""What several search tests build: the experiment the wiring tests search with a cheap
trainable (:mod:`tests.search_tests.cheap`), and a tiny atlas of learning curves for the
replay (:mod:`pneumotune.search.replay`). Imported by test modules and by the drivers
that tests run as their own processes."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

from pneumotune.search.config import ExperimentConfig, parse_experiment

# --------------------------------------------------------------------------- wiring experiment
SPACE = {
    "img_size": "stored",
    "base_filters": [8, 16, 32],
    "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
}


def wiring_experiment(**changes) -> ExperimentConfig:
    """8 trials of 4 epochs, 2 at once, over :data:`SPACE`; ``changes`` replace its keys."""
    raw = {
        "name": "wiring",
        "epochs": 4,
        "num_samples": 8,
        "max_concurrent": 2,
        "seed": 3,
        "max_failures": 1,
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "fixed": {"depth": 2},
        "space": SPACE,
        **changes,
    }
    return parse_experiment(raw)


# --------------------------------------------------------------------------- tiny atlas
MAX_T = 6
LEVELS = {"lr": ("1e-3", "3e-3", "1e-2"), "width": ("8", "16")}


def curve(lr: str, width: str, seed: int) -> list[float]:
    """The recorded ``val_iou`` of one config and seed, epochs 1 to :data:`MAX_T`."""
    plateau = {"1e-3": 0.5, "3e-3": 0.7, "1e-2": 0.3}[lr] + (0.05 if width == "16" else 0.0)
    return [round(plateau * (1 - math.exp(-e / 2)) + 0.01 * seed, 4) for e in range(1, 7)]


def write_atlas(path: Path, first_seeds: tuple[int, ...] = (0,)) -> Path:
    """An atlas CSV of every config of :data:`LEVELS` (seed 0; the first config with each
    of ``first_seeds``), 2 s an epoch."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config_id", "lr", "width", "seed", "epoch", "val_iou", "epoch_seconds"])
        for i, (lr, width) in enumerate(itertools.product(*LEVELS.values())):
            for seed in first_seeds if i == 0 else (0,):
                for e, v in enumerate(curve(lr, width, seed), 1):
                    w.writerow([i, lr, width, seed, e, v, 2.0])
    return path
