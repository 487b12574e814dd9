"""`pneumotune export`: the best trial's best checkpoint -> a model directory.

The post-processing triplet is tuned here, on the validation fold the trial was scored
on, because it moves the Kaggle score a lot and costs seconds: the leaderboard's Dice
scores an empty truth 1 only for an empty prediction, and ~78% of SIIM's images are
empty, so a minimum-area rule that clears small false positives is worth more than most
model changes (the SIIM winners tuned threshold, minimum area and a lower threshold).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumotune.model.config import TrainConfig
from pneumotune.search.results import summarise


@dataclass(frozen=True)
class Exported:
    out_dir: Path
    config: TrainConfig
    triplet: Any  # model.postprocess.Triplet
    triplet_score: float  # Kaggle score on validation with the tuned triplet
    empty_score: float  # the same score of an all-empty prediction (the share of negatives)
    metrics: dict[str, Any]
    seconds: float

    def describe(self) -> str:
        from pneumotune.model.export import files_line

        t = self.triplet
        return (
            f"Exported to {self.out_dir} ({self.config.img_size} px, {self.config.base_filters} "
            f"filters, depth {self.config.depth}).\n"
            f"  post-processing tuned on validation: threshold {t.threshold}, min_area "
            f"{t.min_area}, lower {t.lower}\n"
            f"  validation Kaggle score {self.triplet_score:.4f} (all-empty prediction: "
            f"{self.empty_score:.4f})\n{files_line(self.out_dir)}"
        ) + (
            "\n  WARNING: on validation this model does not beat predicting no pneumothorax "
            "at all; the tuned post-processing empties every mask. Train longer, on more "
            "data or at a larger size."
            if self.triplet_score <= self.empty_score
            else ""
        )


@dataclass(frozen=True)
class ValidationTuning:
    """The post-processing triplet tuned on a validation fold, and what it scored there."""

    triplet: Any  # model.postprocess.Triplet
    score: float  # Kaggle score with the triplet
    empty_score: float  # the same score of an all-empty prediction (the share of negatives)
    metrics: dict[str, Any]  # those two and the fold's counts, for the model card


def tune_on_validation(
    model: Any, cfg: TrainConfig, images: np.ndarray, masks: np.ndarray
) -> ValidationTuning:
    from pneumotune.model import metrics as M
    from pneumotune.model.inference import predict_probs
    from pneumotune.model.postprocess import tune_triplet

    probs = predict_probs(model, images, batch_size=2 * cfg.batch_size)
    triplet, score = tune_triplet(probs, masks)
    empty_score = M.kaggle_dice(masks, np.zeros_like(masks))
    metrics = {
        "val_kaggle_dice_triplet": score,
        "val_kaggle_dice_all_empty": empty_score,
        "val_images": len(images),
        "val_positive_images": int(masks.reshape(len(masks), -1).any(axis=1).sum()),
    }
    return ValidationTuning(triplet, score, empty_score, metrics)


def tune_and_export(
    model: Any,
    cfg: TrainConfig,
    val: tuple[np.ndarray, np.ndarray],
    out_dir: Path,
    data_dir: Path,
    metrics: dict[str, Any],
    extra: dict[str, Any],
    tuned: ValidationTuning | None = None,
) -> Exported:
    """Tune the triplet on ``val`` predictions (unless ``tuned`` brings one tuned on another
    model, as retraining does), then write the model directory."""
    from pneumotune.model.export import export_model

    t0 = time.perf_counter()
    tuned = tuned or tune_on_validation(model, cfg, *val)
    metrics = {**metrics, **tuned.metrics}
    export_model(
        model,
        out_dir,
        train_config=cfg,
        triplet=tuned.triplet,
        metrics=metrics,
        data_manifest=Path(data_dir),
        extra=extra,
    )
    return Exported(
        Path(out_dir),
        cfg,
        tuned.triplet,
        tuned.score,
        tuned.empty_score,
        metrics,
        time.perf_counter() - t0,
    )


def export_best(results_dir: Path, out_dir: Path, data_dir: Path | None = None) -> Exported:
    """Export the best trial of a search (finished, or still running: its best so far)."""
    from pneumotune.data.dataset import load_fold, read_manifest
    from pneumotune.search.checkpoint import load_checkpoint_model, trial_config

    summary = summarise(Path(results_dir))
    best, checkpoint = summary.best_trial_checkpoint()
    data_dir = Path(data_dir or summary.data_dir or "")
    cfg = trial_config(best.config, checkpoint)
    labelled = labelled_images(read_manifest(data_dir))
    model = load_checkpoint_model(summary.path, checkpoint, best.config, labelled)
    val = load_fold(data_dir, cfg.img_size, cfg.val_fold)
    epoch_row = next(
        (r for r in best.history if r.get("checkpoint_dir_name") == checkpoint.name), {}
    )
    metrics = {k: v for k, v in epoch_row.items() if k.startswith("val_") or k == "loss"}
    metrics["epoch"] = epoch_row.get("training_iteration")
    extra = {
        "made_by": "pneumotune export",
        "search": summary.name,
        "trial_id": best.trial_id,
        "checkpoint": checkpoint.name,
        "metric": summary.metric,
        "searched_config": {k: best.config[k] for k in summary.searched if k in best.config},
        "gain_over_tutorial": summary.gain_over_tutorial(),
    }
    return tune_and_export(model, cfg, val.pair, out_dir, data_dir, metrics, extra)


def labelled_images(manifest: dict[str, Any]) -> int:
    """The dataset's labelled images (what bounds a run's steps per epoch)."""
    from pneumotune.data.dataset import DatasetError

    counts = manifest.get("counts") if isinstance(manifest, dict) else None
    value = counts.get("labelled") if isinstance(counts, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DatasetError(f"the dataset's manifest has no count of labelled images: {value!r}")
    return value
