"""Multi-worker training with Ray Train: one model, several workers, same `fit` core.

Used by a search trial when ``resources.workers_per_trial > 1`` and by `pneumotune train
--from-search` (:mod:`pneumotune.search.products.retrain`). The Ray Train V2 pattern:

* The **driver** is light: a Tune trial function (or the CLI) that builds a
  ``TensorflowTrainer`` and waits on it. A trial's driver asks Tune only for a little
  ``memory`` (a logical resource, no CPU or GPU): the trainer's ``ScalingConfig``
  reserves ``workers_per_trial`` workers of ``resources.cpu`` CPUs and ``resources.gpu``
  GPUs each, all at once, in a placement group of its own. Tune therefore cannot see how
  many trials fit, and ``max_concurrent`` is the real limit: set it to
  ``GPUs (or CPUs) of the cluster // (workers_per_trial x gpu (or cpu))``. A driver
  beyond that waits (its trainer retries the reservation every minute) without harm.
* The **workers** (:func:`train_worker`) each run ``model.train.fit`` with a
  ``MultiWorkerMirroredStrategy`` on *global* batches of ``batch_size`` (each worker
  computes ``batch_size / workers`` of them; see :mod:`model.multiworker`), so a config
  trains the same way on one worker or on several.
* **Data**: the driver passes the search's dataset handle
  (:class:`pneumotune.data.node_cache.SharedDataset`) in the ``train_loop_config``; each
  worker maps its node's copy of the trial's image size (written once per node) and
  splits the folds itself, as index views. Ray Data is not used: the fit core draws a
  seeded, resumable epoch plan over the rows (positive share, per-batch augmentation
  seeds), which a streaming split across workers would break.
* **Metrics and checkpoints**: every worker scores the whole validation set (the same
  numbers everywhere) and calls ``ray.train.report`` each epoch; rank 0 alone saves the
  model (``MODEL_FILE`` + ``STATE_FILE``, the one-worker layout) as the Train checkpoint.
  :class:`ForwardEpochs`, a callback of the Train controller, hands each epoch's metrics
  and checkpoint to the driver through a Ray queue, and the driver reports them to Tune
  with ``tune.report(metrics, checkpoint=...)`` — which copies the checkpoint into the
  trial's directory. Ray's own ``TuneReportCallback`` forwards metrics only (plus a
  ``checkpoint_path`` metric): Tune would then hold no checkpoint, so its
  ``training_iteration`` (ASHA's clock) would restart at 1 on a retry, and `status`,
  `export` and the search report would find no checkpoint in the trial.
* **Retries**: a failure anywhere (a worker or its node lost, the driver lost) fails the
  Train run (in a trial, Train's own retries are off: one retry budget, Tune's) and so
  the trial; Tune retries the trial (``max_failures``) and the new driver passes
  ``tune.get_checkpoint()`` — the last epoch reported — to the workers, which resume
  from it. Each attempt is a new Train run (a fresh name), so Ray Train's automatic
  restore of a same-named run cannot resume from a checkpoint Tune never saw. The Train
  run's folder is deleted when the driver ends, and any left over (a trial ended from
  outside) when the search ends (``search.tuner.run_search``). (`train --from-search` has
  no Tune layer: there Train itself replaces lost workers and resumes from its last
  checkpoint.)
* **Stopping**: when ASHA stops a trial, Tune ends the trial's process, and the Train
  controller dies with it; the workers' placement group would not (it lives until the
  search ends unless Ray's cleaner can reach the dashboard's state API), so the driver
  removes it the moment ``tune.report`` raises (:func:`run_forwarding_epochs`).

Train's storage is the trial's folder in Tune's storage, which every node must reach
(cluster/README.md, "Storage"). Cost: a Train run starts in ~20-25 s on a busy 2-core
machine (workers, TensorFlow, the collective's gRPC ring), paid once per trial attempt,
which is why one-worker trials run Keras in the trial itself.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

from pneumotune.search.checkpoint import read_epoch
from pneumotune.search.config import Resources

# What a trial's driver asks Tune for: no CPU or GPU (the Train workers hold those), and
# Tune cannot place a trial that asks for nothing at all. ~A driver's resident memory.
DRIVER_MEMORY = 256 * 2**20
TRAIN_WORKERS = "train_workers"  # metric: workers of the epoch's Train run
TRAIN_NODES = "train_nodes"  # metric: their Ray node ids, comma-separated
RESUMED_FROM = "resumed_from"  # metric: the epoch this attempt started from (0: scratch)
# Items on the driver's channel: (_PLACEMENT_GROUP, pg),
# (_EPOCH, metrics, checkpoint, controller), (_DONE,) when the trainer's fit returned or raised.
_PLACEMENT_GROUP, _EPOCH, _DONE = "placement_group", "epoch", "done"


def scaling_config(resources: Resources, workers: int):
    """``workers`` Train workers of ``resources.cpu`` CPUs and ``resources.gpu`` GPUs each."""
    from ray.train import ScalingConfig

    per_worker = {"CPU": resources.cpu}
    if resources.gpu > 0:
        per_worker["GPU"] = resources.gpu
    return ScalingConfig(
        num_workers=workers, use_gpu=resources.gpu > 0, resources_per_worker=per_worker
    )


# --------------------------------------------------------------------------- workers


def train_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker: a replica of the model, trained by ``model.train.fit``.

    ``loop`` (the trainer's ``train_loop_config``):
        ``config``: the flat training config (``TrainConfig.to_flat`` names);
        ``data``: the search's :class:`pneumotune.data.node_cache.SharedDataset` (the
            worker maps its node's copy of the img_size: no copy per worker);
        ``train_on``: ``"other_folds"`` (a search trial: validate on ``val_fold``) or
        ``"all"`` (final training: every image trains, ``val_fold`` is scored in-sample);
        ``resume``: a checkpoint to continue from (``MODEL_FILE`` + ``STATE_FILE``) or None;
        ``cpus``: the worker's CPUs (sizes TensorFlow's thread pools);
        ``channel``: the driver's queue (:func:`run_forwarding_epochs`) or None.
    """
    import ray
    import ray.train

    from pneumotune.model.devices import limit_threads

    # Before TensorFlow initialises: thread pools, then GPU memory growth (a fractional
    # GPU is shared), then the strategy, which starts the collective runtime.
    limit_threads(float(loop["cpus"]))
    import tensorflow as tf

    from pneumotune.data.dataset import split_fold
    from pneumotune.memory import memory_metrics
    from pneumotune.model.config import TrainConfig
    from pneumotune.model.devices import configure_devices
    from pneumotune.model.multiworker import rows_for_even_split
    from pneumotune.model.train import fit
    from pneumotune.search.checkpoint import resume_from, write_checkpoint

    configure_devices(False)
    gpus = tf.config.list_physical_devices("GPU")
    implementation = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if gpus
        else tf.distribute.experimental.CommunicationImplementation.RING
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation
        )
    )
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    node = ray.get_runtime_context().get_node_id()
    if rank == 0:
        announce_placement_group(loop.get("channel"))

    cfg = TrainConfig.from_flat(loop["config"])
    arrays = loop["data"][cfg.img_size]
    if loop["train_on"] == "all":
        train, val = arrays.rows(), split_fold(arrays, cfg.val_fold)[1]
    else:
        train, val = split_fold(arrays, cfg.val_fold)
    train = train.subset(rows_for_even_split(train.positive, cfg.batch_size, workers, cfg.seed))

    def on_epoch_end(epoch: int, metrics: dict[str, float], model: Any) -> None:
        row = {**metrics, "epoch": epoch, "n_train": len(train), "node_id": node}
        row.update(memory_metrics())  # rank 0's row is kept: rank 0's process
        row[RESUMED_FROM] = resume["initial_epoch"]
        # Every worker reports (the call is a barrier); only rank 0's copy is kept.
        with tempfile.TemporaryDirectory(prefix="pneumotune-ckpt-") as d:
            saved = None
            if rank == 0:
                write_checkpoint(model, Path(d), epoch)
                saved = ray.train.Checkpoint.from_directory(d)
            ray.train.report(row, checkpoint=saved, checkpoint_dir_name=f"epoch_{epoch:04d}")

    with resume_from(ray.train.get_checkpoint() or loop.get("resume")) as resume:
        if resume["initial_epoch"] < cfg.epochs:
            fit(cfg, train, val, on_epoch_end=on_epoch_end, strategy=strategy, **resume)


def announce_placement_group(channel: Any) -> None:
    """Send this Train worker's placement group to the driver (:func:`run_forwarding_epochs`),
    which removes it if it stops early. Call it from rank 0, before training."""
    import ray

    if channel is not None:
        channel.put((_PLACEMENT_GROUP, ray.util.get_current_placement_group()))


# --------------------------------------------------------------------------- controller


class ForwardEpochs(UserCallback):
    """Ray Train callback (it runs in the Train controller): puts each epoch's metrics
    and checkpoint on the driver's queue. The put blocks while the driver still holds the
    previous epoch (a queue of one), so the controller never runs ahead of what the
    driver reported; if the driver is gone (the queue with it), the put raises, which
    fails the run."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        import ray

        row = dict(metrics[0])  # rank 0; the val_* metrics are the same on every worker
        row.pop("node_id", None)
        row[TRAIN_WORKERS] = len(metrics)
        # A string, not a list: TensorBoard skips strings quietly.
        row[TRAIN_NODES] = ",".join(sorted({str(m.get("node_id", "")) for m in metrics}))
        # The controller's own handle: a driver that stops early kills it (no more writes).
        controller = ray.get_runtime_context().current_actor
        self.queue.put((_EPOCH, row, checkpoint, controller))

    def after_exception(self, run_context: Any, worker_exceptions: dict) -> None:
        """Nothing to forward: the trainer's ``fit`` raises in the driver."""


@dataclass
class TrainRun:
    """What :func:`run_forwarding_epochs` returns: Train's result (its ``checkpoint`` is
    the last epoch's) and the epochs it forwarded."""

    result: Any
    epochs: list[dict[str, Any]]


def run_forwarding_epochs(
    make_trainer: Callable[[Any, list[Any]], Any],
    on_epoch: Callable[[dict[str, Any], Any], None],
) -> TrainRun:
    """Run a trainer and call ``on_epoch(metrics, checkpoint)`` in *this* thread for every
    epoch its workers report, as they report it.

    ``make_trainer(channel, callbacks)`` builds the trainer with ``callbacks`` in its
    RunConfig and ``channel`` as the ``train_loop_config``'s ``"channel"`` (rank 0 sends
    its placement group there). ``fit`` runs in a helper thread; this thread waits on the
    channel, so that ``on_epoch`` may call ``tune.report`` (a Tune function reports from
    its own thread). Raises whatever ``fit`` raised.

    Stopping early. If this thread leaves before the run ends — Tune stopped the trial
    (ASHA: ``tune.report`` raises ``SystemExit``), ``on_epoch`` failed, Ctrl-C — the
    workers' placement group is removed at once: its CPUs/GPUs are free for the next
    trial and the run fails. Nothing else would free them in time: the Train controller
    is owned by this process and dies with it, and a placement group outlives its
    creator until the whole job ends (Ray's own cleaner needs the dashboard's state API).
    The controller is killed too (each epoch's item carries its handle): alive, it would
    still register the last checkpoint in the run's folder after the trial deleted it.
    The helper thread is not a daemon, so this process (a Tune trial actor) exits only
    when the run has ended and released its workers.
    """
    import ray
    from ray.util.queue import Queue

    channel = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = make_trainer(channel, [ForwardEpochs(channel)])
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc
        finally:
            with contextlib.suppress(Exception):  # the channel is gone if we stopped early
                channel.put((_DONE,))

    thread = threading.Thread(target=run, name="pneumotune-train-run", daemon=False)
    thread.start()
    epochs: list[dict[str, Any]] = []
    placement_group = controller = None
    finished = False
    try:
        while (item := channel.get())[0] != _DONE:
            if item[0] == _PLACEMENT_GROUP:
                placement_group = item[1]
                continue
            _, metrics, checkpoint, controller = item
            epochs.append(metrics)
            on_epoch(metrics, checkpoint)
        finished = True
    finally:
        if not finished:
            if placement_group is not None:
                with contextlib.suppress(Exception):
                    ray.util.remove_placement_group(placement_group)
            # The controller would go on registering the last checkpoint in the run's
            # folder after the trial deleted it; killed, it stops, and fit fails at once.
            if controller is not None:
                with contextlib.suppress(Exception):
                    ray.kill(controller)
            # A controller blocked on a put now fails instead of waiting forever.
            channel.shutdown(force=True)
    thread.join()
    channel.shutdown(force=True)
    if "error" in outcome:
        raise outcome["error"]
    return TrainRun(outcome["result"], epochs)


RUN_PREFIX = "train"


def run_name(prefix: str = RUN_PREFIX) -> str:
    """A Train run name no earlier attempt used (see the module docstring, Retries)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def delete_train_runs(filesystem: Any, trial_dir: str) -> None:
    """Delete the folders of every Train run (:func:`run_name`) in a trial's folder."""
    from pyarrow import fs

    try:
        found = filesystem.get_file_info(fs.FileSelector(trial_dir))
    except OSError:  # no trial folder yet
        return
    for info in found:
        if info.type == fs.FileType.Directory and info.base_name.startswith(f"{RUN_PREFIX}-"):
            with contextlib.suppress(OSError):  # gone already
                filesystem.delete_dir(info.path)


# --------------------------------------------------------------------------- Tune trial


def multi_worker_trial(resources: Resources):
    """The Tune function of a trial of ``resources.workers_per_trial`` Train workers.

    Called as ``fn(config, data)`` with ``data`` the search's
    :class:`pneumotune.data.node_cache.SharedDataset`. Reports one ``tune.report`` per
    epoch with the epoch's checkpoint, like the one-worker trial.
    """

    def train_multi_worker_trial(config: dict[str, Any], data: Any) -> None:
        import ray.train
        from ray import tune
        from ray.train.tensorflow import TensorflowTrainer

        from pneumotune.model.config import TrainConfig
        from pneumotune.search.watch.trial_telemetry import TrialConsole

        cfg = TrainConfig.from_flat(config)
        console = TrialConsole(cfg.epochs)  # the driver actor's log lines and series
        if tune.get_checkpoint() is not None:
            with tune.get_checkpoint().as_directory() as d:
                console.resumed(read_epoch(Path(d)))
        # Train writes its run into the trial's own folder of Tune's storage.
        storage = tune.get_context().get_storage()
        # The trial's id in the run's name: Ray's Train page lists runs by name (the
        # controller's and workers' actor names are Ray's own).
        name = run_name(f"{RUN_PREFIX}-trial_{console.trial_id}")
        loop = {
            "config": dict(config),
            "data": data,
            "train_on": "other_folds",
            "resume": tune.get_checkpoint(),
            "cpus": resources.cpu,
        }

        def make_trainer(channel: Any, callbacks: list[Any]) -> Any:
            return TensorflowTrainer(
                train_worker,
                train_loop_config={**loop, "channel": channel},
                scaling_config=scaling_config(resources, resources.workers_per_trial),
                run_config=ray.train.RunConfig(
                    name=name,
                    storage_path=storage.trial_fs_path,
                    storage_filesystem=storage.storage_filesystem,
                    callbacks=callbacks,
                    # Retries belong to Tune (see the module docstring).
                    failure_config=ray.train.FailureConfig(
                        max_failures=0, max_preemption_failures=0
                    ),
                    # Two: the one the driver is copying into Tune's folder and the next.
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                ),
            )

        def report(metrics: dict[str, Any], checkpoint: Any) -> None:
            if checkpoint is not None:  # a copy in Tune's trial folder, like one-worker trials
                checkpoint = tune.Checkpoint(checkpoint.path, checkpoint.filesystem)
            console.epoch(int(metrics.get("epoch", 0)), metrics)
            tune.report(metrics, checkpoint=checkpoint)

        try:
            run_forwarding_epochs(make_trainer, report)
        finally:
            # Tune's copies are the trial's checkpoints. Every attempt's run goes, not only
            # this one: a failed attempt's controller may still have been writing its
            # folder when that attempt deleted it.
            delete_train_runs(storage.storage_filesystem, storage.trial_fs_path)

    return train_multi_worker_trial


def multi_worker_trainable(resources: Resources, data: Any):
    """The trainable ``search.tuner`` runs when ``workers_per_trial > 1``: the dataset's
    handle (each worker maps its node's copy), the driver's small resource request."""
    from ray import tune

    fn = tune.with_parameters(multi_worker_trial(resources), data=data)
    return tune.with_resources(fn, {"cpu": 0, "gpu": 0, "memory": DRIVER_MEMORY})
