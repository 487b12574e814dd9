"""Fit one :class:`model.config.TrainConfig` on a training and a validation set: the body
of one trial.

``fit(cfg, train, val, on_epoch_end=...)``
builds the ResUNet (or reloads an epoch-end ``.keras`` file to resume), trains it with
``keras.Model.fit`` on the input pipeline of :mod:`model.pipeline`, and after every epoch scores the
validation set (:func:`model.inference.validation_metrics`: the numpy reference metrics of
:mod:`model.metrics`) and hands the numbers to ``on_epoch_end`` (where a search reports
them and saves a checkpoint).

Sets: :class:`pneumotune.data.dataset.Rows` (rows of a search's shared, memory-mapped
arrays; a batch is copied when it is made, so a trial's memory does not grow with the
dataset) or a pair of arrays. Images ``uint8 (N, S, S)``, masks ``uint8 (N, S, S)``
holding 0/1, with ``S == cfg.img_size``. The model is fed float32 raw pixel values
0..255 ``(B, S, S, 1)`` (it rescales inside, so prediction cannot normalise differently).

The input pipeline. Every epoch's image order is drawn up front, one seeded generator
per epoch (:func:`pneumotune.model.sampling.epoch_indices`, with the positive share of
:func:`pneumotune.model.sampling.positive_share` when the config sets one), so epoch ``e`` sees the
same images whether the run started at epoch 0 or resumed at ``e``. The batches of all
remaining epochs form one stream (Keras keeps one iterator across epochs when
``steps_per_epoch`` is given), each batch a pure function of its global number
(:mod:`pneumotune.model.pipeline`): ``tf.data`` on TensorFlow, a ``keras.utils.PyDataset``
with worker threads on JAX and PyTorch; the same batches either way.

Backends: everything here is Keras 3 (``keras.ops``), so it runs on TensorFlow (the
default), JAX and PyTorch, whichever ``KERAS_BACKEND`` names
(:mod:`pneumotune.model.backend`). Multi-worker training (``strategy``) is TensorFlow's.

Divergence: a non-finite training loss raises :class:`TrainingDiverged` (Keras'
``TerminateOnNaN`` only stops training quietly, and a search must record the trial as
failed with its reason).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pneumotune.data.dataset import Arrays, Rows
from pneumotune.errors import PneumotuneError
from pneumotune.model import warm as warm_models
from pneumotune.model.config import METRICS, VAL_KEYS, TrainConfig
from pneumotune.model.devices import configure_devices
from pneumotune.model.inference import validation_metrics
from pneumotune.model.losses import make_loss
from pneumotune.model.pipeline import BatchSource, TrainBatches, make_batches, steps_per_epoch
from pneumotune.model.resunet import build_resunet
from pneumotune.model.sampling import epoch_indices, positive_share
from pneumotune.model.schedules import Schedule, StepTable, make_schedule
from pneumotune.model.seed_states import set_seed_states

__all__ = ["FitResult", "TrainingDiverged", "fit", "steps_per_epoch"]

EpochHook = Callable[[int, dict[str, float], keras.Model], None]

# Every key of the per-epoch metrics dict, in print order.
METRIC_KEYS: tuple[str, ...] = (
    "loss",
    *VAL_KEYS,  # model.inference.validation_metrics
    "lr",
    "epoch_seconds",
    "train_seconds",
    "images_per_s",
    "first_step_seconds",
)


class TrainingDiverged(PneumotuneError, RuntimeError):
    """The training loss became NaN or infinite; the message says when and what to try."""

    exit_code = 1  # the input was valid; the run failed


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``model`` is the model after the last epoch (not the best epoch's weights);
    ``history`` holds one metrics dict per epoch trained in this call (its ``epoch`` key
    is 1-based); ``best_epoch`` is the 1-based epoch with the best ``metric``
    (``val_loss``: lowest, others: highest; ties go to the earlier epoch).
    """

    model: keras.Model
    history: list[dict[str, float]] = field(default_factory=list)
    metric: str = "val_iou"

    @property
    def best_epoch(self) -> int:
        return int(self.best["epoch"])

    @property
    def best(self) -> dict[str, float]:
        sign = -1.0 if self.metric == "val_loss" else 1.0
        return max(self.history, key=lambda m: sign * m[self.metric])

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1]


# --------------------------------------------------------------------------- schedule


def _schedule_params(cfg: TrainConfig) -> dict[str, Any]:
    """TrainConfig's schedule fields -> the named schedule's own parameters."""
    if cfg.schedule == "cosine":
        return {"alpha": cfg.cosine_alpha}
    if cfg.schedule == "cosine_restarts":
        return {"cycles": cfg.restart_cycles, "alpha": cfg.cosine_alpha}
    if cfg.schedule == "step":
        return {"gamma": cfg.step_gamma, "step_every": cfg.step_every}
    return {}  # constant; one_cycle rises over the warm-up (default: 30% of the run)


def schedule_for(cfg: TrainConfig, steps: int) -> Schedule | float:
    """The run's learning rate: ``cfg``'s schedule over ``cfg.epochs * steps`` steps."""
    total = cfg.epochs * steps
    warmup = min(round(cfg.warmup_epochs * steps), total - 1)
    return make_schedule(cfg.schedule, cfg.lr, total, warmup, **_schedule_params(cfg))


def _optimizer(cfg: TrainConfig, steps: int) -> keras.optimizers.Optimizer:
    lr = schedule_for(cfg, steps)
    if warm_models.supported():  # a kept traced step then serves any schedule
        lr = StepTable(lr, cfg.epochs * steps)
    if cfg.weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay)
    return keras.optimizers.Adam(learning_rate=lr)


def _current_lr(model: keras.Model) -> float:
    # Evaluates the schedule at optimizer.iterations (LossScaleOptimizer forwards it).
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# --------------------------------------------------------------------------- data


Split = Rows | tuple[np.ndarray, np.ndarray]


def as_rows(name: str, split: Split, size: int) -> Rows:
    """``split`` as :class:`Rows` (a pair of arrays becomes a view of all its rows, no
    copy), after checking its arrays' dtype and shape."""
    rows = split if isinstance(split, Rows) else Arrays(*split, meta=None).rows()
    images, masks = rows.images, rows.masks
    if images.ndim != 3 or images.shape[1:] != (size, size) or images.dtype != np.uint8:
        raise ValueError(
            f"{name} images must be uint8 (N, {size}, {size}) for img_size={size}; "
            f"got {images.dtype} {images.shape}"
        )
    if masks.shape != images.shape or masks.dtype != np.uint8:
        raise ValueError(
            f"{name} masks must be uint8 with the images' shape {images.shape}; "
            f"got {masks.dtype} {masks.shape}"
        )
    if len(rows) == 0:
        raise ValueError(f"{name} set is empty")
    return rows


def epoch_plan(cfg: TrainConfig, is_positive: np.ndarray, first_epoch: int = 0) -> np.ndarray:
    """The training indices of epochs ``first_epoch..cfg.epochs-1``: int64 ``(E, n)``, ``n``
    the images per epoch (``cfg.epoch_images``, else every training image once).

    Epoch ``e`` draws from its own generator seeded by ``(cfg.seed, e)``, so the plan of an
    epoch does not depend on ``first_epoch``.
    """
    plans = []
    for epoch in range(first_epoch, cfg.epochs):
        share = None
        if cfg.pos_share_start is not None and cfg.pos_share_end is not None:
            share = positive_share(epoch, cfg.epochs, cfg.pos_share_start, cfg.pos_share_end)
        rng = np.random.default_rng([cfg.seed, epoch])
        plans.append(epoch_indices(is_positive, share, cfg.epoch_images, rng))
    n = cfg.epoch_images or len(is_positive)
    return np.stack(plans) if plans else np.zeros((0, n), np.int64)


class _EpochEnd(keras.callbacks.Callback):
    """Times the epoch, checks the loss, scores validation, calls the user's hook."""

    # Its per-batch check may run in Keras' callback thread: the training loop does not
    # wait for the loss to be copied back after every step (it raises one step later).
    async_safe = True

    def __init__(
        self,
        cfg: TrainConfig,
        val: Rows,
        images_per_epoch: int,
        hook: EpochHook | None,
        history: list[dict[str, float]],
    ) -> None:
        super().__init__()
        self.cfg, self.val, self.images_per_epoch = cfg, val, images_per_epoch
        self.hook, self.history = hook, history
        self._epoch_start = 0.0
        self._epoch = 0  # 0-based, as Keras counts
        # This fit call's first step, in seconds; 0.0 once the first epoch reported it.
        self._first_step: float | None = None
        self._step_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch
        self._epoch_start = time.perf_counter()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._first_step is None:
            self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._first_step is None:
            self._first_step = time.perf_counter() - self._step_start
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise self._diverged(f"batch {batch + 1}", float(loss))

    def _diverged(self, where: str, loss: float) -> TrainingDiverged:
        return TrainingDiverged(
            f"training diverged in epoch {self._epoch + 1}, {where}: loss is {loss} "
            f"(lr={self.cfg.lr:g}, schedule={self.cfg.schedule}, loss weights bce/dice/focal="
            f"{self.cfg.loss_bce:g}/{self.cfg.loss_dice:g}/{self.cfg.loss_focal:g}); "
            "try a lower lr or a warm-up"
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        train_seconds = time.perf_counter() - self._epoch_start
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            raise self._diverged("at its end", loss)
        val = validation_metrics(
            self.model,
            self.val.images,
            self.val.masks,
            self.cfg.threshold,
            batch_size=2 * self.cfg.batch_size,
            index=self.val.index,
        )
        if not math.isfinite(val["val_loss"]):
            raise self._diverged("on validation", val["val_loss"])
        metrics = {
            "loss": loss,
            **val,
            "lr": _current_lr(self.model),
            "epoch_seconds": time.perf_counter() - self._epoch_start,
            "train_seconds": train_seconds,
            "images_per_s": self.images_per_epoch / train_seconds,
            "first_step_seconds": self._first_step or 0.0,
        }
        self._first_step = 0.0  # later epochs report none
        # Shared with the other callbacks (Keras' progress bar prints them when verbose).
        logs.update(metrics)
        self.history.append({"epoch": epoch + 1, **metrics})
        if self.hook is not None:
            self.hook(epoch + 1, dict(metrics), self.model)


# --------------------------------------------------------------------------- fit


def build_model(cfg: TrainConfig) -> keras.Model:
    """The (uncompiled) ResUNet of ``cfg``, under the dtype policy of ``cfg.mixed_precision``.

    Compile it with :func:`compile_model`, which needs the training set size for the
    learning-rate schedule.
    """
    policy = configure_devices(cfg.mixed_precision)
    previous = keras.mixed_precision.global_policy()
    if policy is not None:
        keras.mixed_precision.set_global_policy(policy)
    try:
        # The policy is read when layers are created; restore the global one right after
        # so that nothing else in the process (a later trial, a test) inherits it.
        return build_resunet(cfg.img_size, cfg.base_filters, cfg.depth, cfg.dropout)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def compile_model(model: keras.Model, cfg: TrainConfig, n_train: int) -> keras.Model:
    """Compile with Adam (AdamW when ``cfg.weight_decay > 0``) on the config's schedule over
    ``cfg.epochs * steps_per_epoch(n_train)`` steps, and the config's combo loss. No Keras
    metrics: validation is scored in numpy after each epoch. ``cfg.jit_compile``: XLA for
    the train step ("auto": Keras' default, which compiles where the backend supports it)."""
    loss = make_loss(cfg.loss_bce, cfg.loss_dice, cfg.loss_focal)
    if warm_models.supported():  # a kept traced step then serves any weights
        loss.weights_in_variables()
    model.compile(
        optimizer=_optimizer(cfg, steps_per_epoch(n_train, cfg.batch_size)),
        loss=loss,
        jit_compile={"auto": "auto", "on": True, "off": False}[cfg.jit_compile],
    )
    # Create the optimizer's slots now, eagerly (~0.2 s). Left to the first train step,
    # TensorFlow creates them while tracing it and then traces the whole step a second
    # time: 8.1 s -> 3.8 s for the first step at 128 px (bench/startup.py profile).
    model.optimizer.build(model.trainable_variables)
    return model


def fit(
    cfg: TrainConfig,
    train: Split,
    val: Split,
    *,
    on_epoch_end: EpochHook | None = None,
    initial_epoch: int = 0,
    resume_from: Path | None = None,
    seed_states: list[list[int]] | None = None,
    verbose: bool = False,
    metric: str = "val_iou",
    strategy: Any | None = None,
    pipeline: str = "auto",
    input_threads: int | None = None,
    warm: bool = False,
) -> FitResult:
    """Train ``cfg`` on ``train`` for epochs ``initial_epoch..cfg.epochs-1``, scoring ``val``.

    Args:
        cfg: the run's config (``cfg.epochs`` is the whole run, resumed or not).
        train, val: :class:`pneumotune.data.dataset.Rows` (rows of shared arrays, read a
            batch at a time: no copy of the set) or ``(images uint8 (N, S, S), masks uint8
            0/1 (N, S, S))``, S = img_size.
        on_epoch_end: called after each epoch as ``(epoch 1-based, metrics, model)`` with
            the keys of :data:`METRIC_KEYS`: ``loss`` (train, mean over the epoch),
            ``val_loss``, ``val_iou``, ``val_dice``, ``val_kaggle_dice``,
            ``val_positive_iou`` (0.0 when val has no positive image), ``lr`` (after the
            epoch), ``epoch_seconds`` (training + validation), ``train_seconds`` (the
            training steps only) and ``images_per_s`` (training images / train_seconds;
            the first epoch of a process also pays for tracing the graph), and
            ``first_step_seconds``: in the first epoch trained by this call, its first
            step (where the train step is traced and compiled: most of the first epoch's
            extra time), 0.0 in the others.
            Metrics are at ``cfg.threshold``. It may save the model (``model.save``): that
            file, with its optimizer state, is what ``resume_from`` takes.
        initial_epoch: epochs already done (0-based index of the first epoch to train).
        resume_from: a ``.keras`` file saved by ``on_epoch_end`` after epoch
            ``initial_epoch``; its optimizer continues the learning-rate schedule from its
            ``iterations``. ``None`` builds a new model.
        seed_states: the dropout layers' random states after epoch ``initial_epoch``
            (:func:`model.seed_states.seed_states`, saved with the checkpoint), put back
            into the ``resume_from`` model: ``model.save`` leaves them out, and without
            them a resumed run with dropout draws other masks than the uninterrupted run.
            ``None``: the loaded file's (a new layer's) states.
        verbose: show Keras' progress bar.
        metric: one of :data:`model.config.METRICS`, for :attr:`FitResult.best_epoch`.
        strategy: a ``tf.distribute.MultiWorkerMirroredStrategy`` when this process is
            one of several workers training the same model (see :mod:`model.multiworker`
            and :mod:`search.distributed`): the model is built or loaded in its scope and
            each global batch of ``cfg.batch_size`` is split over the workers. ``train``
            must then leave every worker a share of the last batch
            (:func:`model.multiworker.rows_for_even_split`). ``None``: this process only.
            TensorFlow only.
        pipeline: ``"auto"`` (``tf.data`` on TensorFlow, else the PyDataset),
            ``"tf.data"`` or ``"pydataset"`` (:mod:`model.pipeline`): the same batches.
        input_threads: the PyDataset's worker threads (default: the process' CPUs, <= 8).
        warm: train a kept model of the same architecture whose train step is already
            traced, reset for this run, when this process has one (:mod:`model.warm`:
            the same results as a new model; TensorFlow, not with ``strategy`` or
            ``resume_from``). The model returned is then kept for the next warm run:
            for processes that train one run after another (a search's trials).

    Raises:
        TrainingDiverged: the training (or validation) loss became NaN or infinite.
        ValueError: bad arrays, an impossible initial_epoch, mixed precision on CPU, or
            a resume file built for another image size.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not 0 <= initial_epoch < cfg.epochs:
        raise ValueError(
            f"initial_epoch must be in [0, epochs={cfg.epochs}) to leave an epoch to train, "
            f"got {initial_epoch}"
        )
    train = as_rows("train", train, cfg.img_size)
    val = as_rows("val", val, cfg.img_size)
    configure_devices(cfg.mixed_precision)  # before TensorFlow allocates anything
    warm = warm and resume_from is None and strategy is None and warm_models.supported()
    if warm:
        warm_models.seed(cfg.seed)  # keeps TensorFlow's instantiated train steps
    else:
        keras.utils.set_random_seed(cfg.seed)

    if cfg.epoch_images is not None and strategy is not None:
        raise ValueError("epoch_images is for one-worker runs (each worker trains a share)")
    n = cfg.epoch_images or len(train)  # images per epoch
    steps = steps_per_epoch(n, cfg.batch_size)
    # Several workers: variables must be created in the strategy's scope to be mirrored.
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        if resume_from is not None:
            model = keras.models.load_model(resume_from, compile=True)
            if model.input_shape[1:3] != (cfg.img_size, cfg.img_size):
                raise ValueError(
                    f"{resume_from} was built for {model.input_shape[1:3]} images, "
                    f"the config says img_size={cfg.img_size}"
                )
            if seed_states is not None:
                set_seed_states(model, seed_states)
            done = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
            if done != initial_epoch * steps:
                warnings.warn(
                    f"{resume_from} has done {done} optimizer steps, expected {initial_epoch} "
                    f"epochs x {steps} = {initial_epoch * steps}: the schedule continues from "
                    f"{done}",
                    stacklevel=2,
                )
        elif warm:
            model = warm_models.compiled_model(cfg, n)
        else:
            model = compile_model(build_model(cfg), cfg, n)
    first_callbacks: list[keras.callbacks.Callback] = []
    if strategy is not None:
        from pneumotune.model import multiworker

        first_callbacks = multiworker.adapt_model(model, strategy, cfg.img_size)

    # The plan draws positions in the training set; the source reads their rows of the
    # shared arrays, a batch at a time.
    plan = train.index[epoch_plan(cfg, train.positive, initial_epoch)]
    source = BatchSource(cfg, train.images, train.masks, plan, initial_epoch)
    ds = make_batches(source, "tf.data" if strategy is not None else pipeline, input_threads)
    if strategy is not None:
        ds = multiworker.data_sharded(ds)
    history: list[dict[str, float]] = []
    try:
        model.fit(
            ds,
            epochs=cfg.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=[*first_callbacks, _EpochEnd(cfg, val, n, on_epoch_end, history)],
            verbose=1 if verbose else 0,
            shuffle=False,  # the plan is already shuffled, batch by batch
        )
    finally:
        if isinstance(ds, TrainBatches):
            ds.close()
    return FitResult(model=model, history=history, metric=metric)
