"""`pneumotune train --from-search`: the best searched config, retrained on all labelled
data with Ray Train data parallelism, then exported.

* The config is the best trial's (``search.results.summarise(...).best.config``), with
  its full epoch budget (``--epochs`` overrides it).
* Every labelled image trains: all folds. Nothing is held out, because the
  post-processing triplet does not need it: it is tuned, as `pneumotune export` does, on
  the search's validation fold with the best trial's best checkpoint — predictions on
  images that model never trained on. The retrained model inherits that triplet (a
  model trained on 5/4 of the data for the same epochs is calibrated much like it), and
  the model card says so and gives the triplet's score there. The fold ``val_fold`` is
  still scored after every epoch to watch the run, but it is in the training set now:
  those numbers are in-sample and are labelled ``in_sample_*``.
* The training is :func:`search.distributed.train_worker` on ``--workers`` Ray Train
  workers (global batches of the config's ``batch_size``, split over the workers), with
  one checkpoint per epoch in ``<RESULTS_DIR>/retrain-*``; a worker lost mid-run is
  replaced and the run goes on from the last epoch (Ray Train's own ``max_failures``).
  The folder is deleted once the model is exported.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumotune.model.config import TrainConfig
from pneumotune.search.config import Resources
from pneumotune.search.results import summarise

__all__ = ["Retrained", "retrain_best"]

MAX_FAILURES = 2  # worker failures the run recovers from (from its last epoch)


@dataclass
class Retrained:
    """What `pneumotune train --from-search` produced."""

    out_dir: Path
    config: TrainConfig
    search: str
    trial_id: str
    workers: int
    n_labelled: int
    n_train: int  # n_labelled minus the few images left for an even split (model.multiworker)
    history: list[dict[str, Any]]
    triplet: Any  # model.postprocess.Triplet
    triplet_score: float  # Kaggle score of the search's model + triplet on its val fold
    empty_score: float  # the all-empty prediction's score on that fold
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)  # what the model card holds

    def describe(self) -> str:
        t = self.triplet
        lower = "none" if t.lower is None else f"{t.lower:g}"
        return "\n".join(
            [
                f"Retrained trial {self.trial_id} of {self.search} on {self.n_train} of the "
                f"{self.n_labelled} labelled images (every fold): {len(self.history)} epochs "
                f"at {self.config.img_size} px on {self.workers} workers in "
                f"{self.seconds:.0f} s.",
                f"  triplet (threshold {t.threshold:g}, min_area {t.min_area:g}, lower "
                f"{lower}) tuned on fold {self.config.val_fold} with the search's model: "
                f"Kaggle score {self.triplet_score:.4f} (all-empty {self.empty_score:.4f})",
                "  no held-out score for the retrained model: every labelled image trained it",
                f"  model: {self.out_dir}",
            ]
        )


def retrain_best(
    results_dir: Path,
    out_dir: Path,
    *,
    workers: int,
    epochs: int | None = None,
    data_dir: Path | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    progress: bool = True,
) -> Retrained:
    """Retrain the best trial of ``results_dir`` on every labelled image and export it.

    Ray must be initialised (``pneumotune.ray_session.ensure_ray``).

    Args:
        results_dir: a search directory (``<storage>/<name>``), finished or not.
        out_dir: the model directory to write (:mod:`model.export`).
        workers: Ray Train workers (data parallel, one model replica each).
        epochs: overrides the trial's epoch budget.
        data_dir: the dataset, if it moved since the search.
        cpus_per_worker, gpus_per_worker: each worker's share; ``None`` GPUs: one per
            worker if the cluster has GPUs, else none.
        progress: print one line per epoch.

    Raises:
        search.results.ResultsError: no scored trial, or its checkpoint is gone.
        data.dataset.DatasetError: no dataset, or the trial's size is not stored.
        ValueError: fewer images than workers, a batch smaller than the workers.
    """
    import keras
    import ray
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    from pneumotune.data.dataset import split_fold
    from pneumotune.data.node_cache import SharedDataset
    from pneumotune.model.config import format_epoch
    from pneumotune.search.checkpoint import MODEL_FILE, load_checkpoint_model, trial_config
    from pneumotune.search.distributed import (
        run_forwarding_epochs,
        run_name,
        scaling_config,
        train_worker,
    )
    from pneumotune.search.products.export_best import tune_and_export, tune_on_validation

    t0 = time.perf_counter()
    results_dir, out_dir = Path(results_dir).absolute(), Path(out_dir)
    summary = summarise(results_dir)
    best, checkpoint = summary.best_trial_checkpoint()
    trial_config(best.config, checkpoint)  # a ResultsError when the folder's is not one
    cfg = TrainConfig.from_flat({**best.config, **({"epochs": epochs} if epochs else {})})
    data_dir = Path(data_dir or summary.data_dir or "")
    data = SharedDataset.of(data_dir)
    arrays = data[cfg.img_size]  # this node's copy, memory-mapped
    _, val = split_fold(arrays, cfg.val_fold)

    # The triplet, out of sample: the search's best model on the fold it never trained on.
    # Its config (not cfg: epochs may be overridden) bounds what its file may allocate.
    search_model = load_checkpoint_model(results_dir, checkpoint, best.config, len(arrays))
    tuned = tune_on_validation(search_model, cfg, *val.pair)
    del search_model

    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    resources = Resources(cpu=cpus_per_worker, gpu=gpus_per_worker, workers_per_trial=workers)
    if progress:
        print(
            f"Retraining trial {best.trial_id} of {summary.name} ({cfg.img_size} px, "
            f"{cfg.epochs} epochs, batch {cfg.batch_size} split over {workers} workers) on "
            f"all {len(arrays)} labelled images; the scores below are on fold {cfg.val_fold}, "
            "which trains too (in-sample)",
            flush=True,
        )
    name = run_name("retrain")
    loop = {
        "config": cfg.to_flat(),
        "data": data,
        "train_on": "all",
        "resume": None,
        "cpus": cpus_per_worker,
    }

    def make_trainer(channel: Any, callbacks: list[Any]) -> Any:
        return TensorflowTrainer(
            train_worker,
            train_loop_config={**loop, "channel": channel},
            scaling_config=scaling_config(resources, workers),
            run_config=ray.train.RunConfig(
                name=name,
                storage_path=str(results_dir),
                callbacks=callbacks,
                failure_config=ray.train.FailureConfig(max_failures=MAX_FAILURES),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            ),
        )

    def report(metrics: dict[str, Any], _checkpoint: Any) -> None:
        if progress:
            print(format_epoch(int(metrics["epoch"]), cfg.epochs, metrics), flush=True)

    run = run_forwarding_epochs(make_trainer, report)
    with run.result.checkpoint.as_directory() as d:
        model = keras.saving.load_model(Path(d) / MODEL_FILE)
    last = run.epochs[-1]
    metrics: dict[str, Any] = {
        "loss": last["loss"],
        "epoch": int(last["epoch"]),
        **{f"in_sample_{k}": v for k, v in last.items() if k.startswith("val_")},
        **tuned.metrics,
        f"search_best_{summary.metric}": best.best(summary.metric, summary.mode)[0],
    }
    tune_and_export(
        model,
        cfg,
        val.pair,
        out_dir,
        data_dir,
        metrics,
        tuned=tuned,
        extra={
            "made_by": "pneumotune train --from-search",
            "search": summary.name,
            "trial_id": best.trial_id,
            "metric": summary.metric,
            "trained_on": f"all {len(arrays)} labelled images (every fold)",
            "workers": workers,
            "triplet_from": (
                f"the search's best checkpoint ({best.trial_id}/{checkpoint.name}) on "
                f"validation fold {cfg.val_fold}; in_sample_* metrics are on that fold, "
                "which the retrained model trained on"
            ),
        },
    )
    shutil.rmtree(results_dir / name, ignore_errors=True)
    return Retrained(
        out_dir=out_dir,
        config=cfg,
        search=summary.name,
        trial_id=best.trial_id,
        workers=workers,
        n_labelled=len(arrays),
        n_train=int(last["n_train"]),
        history=run.epochs,
        triplet=tuned.triplet,
        triplet_score=tuned.score,
        empty_score=tuned.empty_score,
        seconds=time.perf_counter() - t0,
        metrics=metrics,
    )
