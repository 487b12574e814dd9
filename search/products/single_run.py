"""`pneumotune train`: one run of an experiment's default config, no search, then export.

The experiment YAML is the one a search reads; the run uses its ``fixed`` values and
each searched parameter's default (``img_size: stored`` -> the smallest stored size).
The validation set is the fold ``val_fold`` of the converted dataset (patient-grouped,
so no patient is on both sides); the rest trains. After the last epoch the
post-processing triplet is tuned on the validation probabilities and the model is
exported (:func:`model.export.export_model`) with the last epoch's metrics.

TensorFlow is imported inside :func:`train_once`, so importing this module is cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumotune.model.config import TrainConfig
from pneumotune.search.config import ExperimentConfig

__all__ = ["TrainOnceResult", "train_once"]


@dataclass
class TrainOnceResult:
    """What one `pneumotune train` run produced (metrics are on the validation fold)."""

    out_dir: Path
    config: TrainConfig
    history: list[dict[str, float]]
    triplet: Any  # model.postprocess.Triplet
    triplet_score: float  # Kaggle score on val with the tuned triplet
    empty_score: float  # Kaggle score of an all-empty prediction on val (share of negatives)
    n_train: int
    n_val: int
    val_positive: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)  # what the model card holds

    def describe(self) -> str:
        from pneumotune.model.export import files_line

        last = self.history[-1]
        t = self.triplet
        lower = "none" if t.lower is None else f"{t.lower:g}"
        return "\n".join(
            [
                f"Trained {len(self.history)} epochs at {self.config.img_size} px on "
                f"{self.n_train} images in {self.seconds:.0f} s; validation fold "
                f"{self.config.val_fold}: {self.n_val} images, {self.val_positive} positive.",
                f"  at threshold {self.config.threshold:g}: Kaggle score "
                f"{last['val_kaggle_dice']:.4f}, IoU on positive images "
                f"{last['val_positive_iou']:.4f}, IoU {last['val_iou']:.4f}",
                f"  tuned triplet (threshold {t.threshold:g}, min_area {t.min_area:g}, lower "
                f"{lower}): Kaggle score {self.triplet_score:.4f} (tuned on this fold)",
                f"  an all-empty prediction scores {self.empty_score:.4f} on this fold",
                f"  model: {self.out_dir}",
                files_line(self.out_dir),
            ]
        )


def train_once(
    experiment: ExperimentConfig,
    data_dir: Path,
    out_dir: Path,
    *,
    epochs: int | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainOnceResult:
    """Fit the experiment's default config on ``data_dir`` and export it to ``out_dir``.

    Args:
        experiment: a loaded experiment (:func:`search.config.load_experiment`).
        data_dir: a dataset written by `pneumotune convert`.
        out_dir: the model directory to write (see :mod:`model.export`).
        epochs: overrides the experiment's ``epochs``.
        overrides: flat training parameters that replace the defaults
            (``{"img_size": 128, "lr": 3e-3}``), for one-off experiments.
        progress: print one line per epoch.

    Raises:
        data.dataset.DatasetError: no dataset at ``data_dir`` / size not stored.
        search.config.ConfigError: the experiment does not fit the dataset.
        ValueError: an invalid override, or a validation fold with no image.
        model.train.TrainingDiverged: the loss became NaN.
    """
    from pneumotune.data.dataset import load_arrays, read_manifest, split_fold
    from pneumotune.model.config import format_epoch
    from pneumotune.model.train import fit
    from pneumotune.search.products.export_best import tune_and_export

    t0 = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = read_manifest(data_dir)
    exp = experiment.resolve_sizes(manifest["sizes"])
    values: dict[str, Any] = dict(overrides or {})
    if epochs is not None:
        values["epochs"] = epochs
    cfg = exp.default_train_config(**values)

    train, val = split_fold(load_arrays(data_dir, cfg.img_size), cfg.val_fold)
    val_positive = int(val.meta["has_pneumothorax"].sum())
    if progress:
        print(
            f"Training {exp.name} at {cfg.img_size} px for {cfg.epochs} epochs: "
            f"{len(train)} training images, {len(val)} validation images "
            f"({val_positive} positive) of fold {cfg.val_fold}",
            flush=True,
        )

    def report(epoch: int, metrics: dict[str, float], _model: Any) -> None:
        if progress:
            print(format_epoch(epoch, cfg.epochs, metrics), flush=True)

    result = fit(cfg, train, val, on_epoch_end=report, metric=exp.metric)
    exported = tune_and_export(
        result.model,
        cfg,
        val.pair,
        out_dir,
        data_dir,
        metrics=dict(result.last),
        extra={"experiment": exp.name, "made_by": "pneumotune train", "metric": exp.metric},
    )
    triplet, triplet_score = exported.triplet, exported.triplet_score
    empty_score, metrics = exported.empty_score, exported.metrics
    return TrainOnceResult(
        out_dir=out_dir,
        config=cfg,
        history=result.history,
        triplet=triplet,
        triplet_score=triplet_score,
        empty_score=empty_score,
        n_train=len(train),
        n_val=len(val),
        val_positive=val_positive,
        seconds=time.perf_counter() - t0,
        metrics=metrics,
    )
