"""What the stock Ray dashboard shows of a search: names, log lines and metrics per trial.

* **Actors**: a trial's actor reprs as ``trial_<id> img_size=.. base_filters=.. depth=..
  lr=.. schedule=.. batch_size=..`` (:data:`~pneumotune.model.config.KEY_PARAMS`; Ray
  shows an actor's ``repr`` in the Actors table). Tune wraps a function trainable in a
  class whose ``repr`` is a class attribute; :class:`TrialRepr`, mixed into that class,
  sets it on the instance before the actor's constructor returns, which is when Ray
  reads the repr (both through Tune's internals: :mod:`pneumotune.compat.ray_internals`).
* **Reused actors** (``warm_trials``, Tune's ``reuse_actors``): one actor runs trial after
  trial, and Ray reads an actor's repr only once. Such an actor's repr names the process
  (``pneumotune trial runner pid=<pid>``), and each trial it runs starts a resource-free
  :class:`TrialTag` actor whose repr is the trial's name and settings plus that pid,
  alive while the trial runs: the Actors table lists every running trial by name
  beside the runner that trains it. The trial also re-announces its name to Ray's log
  monitor, so the driver's console prefixes its lines with it, not the runner's. The
  tag's class lives in :mod:`.tag_actor`, which imports nothing, so that its process
  starts fast.
* **Actor log**: one line per epoch with every validation metric, the loss and the
  epoch's seconds, and a line when a trial resumes from a checkpoint
  (:func:`epoch_line`, :func:`resume_line`), printed by the trial; a trial that a runner
  trains also sends each line to its tag, which prints it in its own log (so the row
  that names the trial has its lines; the runner's log keeps them all).
* **Metrics**: per-trial gauges through ``ray.util.metrics`` (:class:`TrialMetrics`),
  tagged with the experiment and the trial id, and the search's trial counts by state
  (:class:`SearchMetrics`, a Tune callback in the driver). Ray exports them at each
  node's metrics export port as ``ray_pneumotune_*`` series (Prometheus text), so a
  cluster with Ray's Prometheus + Grafana charts them (cluster/grafana-pneumotune.json).

Nothing here shows a patient identifier: trials know only their config and metrics.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from pathlib import Path
from typing import Any

from pneumotune.compat import ray_internals
from pneumotune.model.config import KEY_PARAMS, VAL_KEYS, TrainConfig, format_epoch
from pneumotune.search.watch.tag_actor import TrialTag
from pneumotune.text import short


def trial_label(trial_id: str, config: dict[str, Any]) -> str:
    """``trial_<id> img_size=64 base_filters=8 depth=4 lr=0.001 schedule=cosine
    batch_size=16``: the trial's folder name and its settings of ``KEY_PARAMS``."""
    settings = " ".join(f"{k}={short(config[k])}" for k in KEY_PARAMS if k in config)
    return f"trial_{trial_id} {settings}".rstrip()


def epoch_line(trial_id: str, epoch: int, max_t: int, metrics: dict[str, Any]) -> str:
    """``trial_<id> epoch   3/24  loss 0.8123  val_loss ...  val_iou 0.4123 ... 4.1 s``."""
    return f"trial_{trial_id} {format_epoch(epoch, max_t, metrics)}"


def resume_line(trial_id: str, epoch: int, max_t: int) -> str:
    return f"trial_{trial_id} resumed from its checkpoint after epoch {epoch}/{max_t}"


class TrialRepr:
    """Mixed into Tune's trainable class: the actor's repr names the trial and its settings."""

    def setup(self, config: dict[str, Any]) -> None:
        ray_internals.set_function_trainable_repr(
            self, trial_label(self.trial_id, _settings(config))
        )
        super().setup(config)


class RunnerRepr:
    """Mixed into Tune's trainable class when its actors are reused: the repr names the
    process, which runs trial after trial (each named by a :class:`TrialTag`)."""

    def setup(self, config: dict[str, Any]) -> None:
        ray_internals.set_function_trainable_repr(self, runner_label(os.getpid()))
        super().setup(config)


def runner_label(pid: int) -> str:
    return f"pneumotune trial runner pid={pid}"


def name_trial_actors(trainable: Any, reused: bool = False) -> Any:
    """``trainable`` (a function trainable) with :class:`TrialRepr` mixed in by Tune, or
    :class:`RunnerRepr` when its actors are ``reused`` for one trial after another."""
    mixin = RunnerRepr if reused else TrialRepr
    return ray_internals.add_function_trainable_mixin(trainable, mixin)


@contextlib.contextmanager
def trial_tag(trial_id: str, config: dict[str, Any]):
    """While the block runs, a :class:`TrialTag` names trial ``trial_id`` (this process
    runs it) in the Actors table, and this process' log lines carry the trial's name.
    Yields the tag's handle: ``tag.log.remote(line)`` puts a line in the tag's own log
    (:class:`TrialConsole` does, given the handle). The call returns at once; lines sent
    before the tag is ALIVE wait in Ray and arrive in order. At the block's end the tag
    ends after the lines sent to it, not before."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    label = f"{trial_label(trial_id, _settings(config))} runner pid={os.getpid()}"
    # Ray's log monitor takes this line as the actor's new name for the lines that follow
    # (what Ray itself prints once, when an actor is created).
    for stream in (sys.stdout, sys.stderr):
        print(ray_internals.actor_name_log_line(label), file=stream, flush=True)
    # On this node (the runner's pid means something there), detached: Ray ends an
    # actor with its owner, a tag not yet ALIVE at once, so the lines queued for the
    # last trial of a runner that Tune ends would be lost. It ends after its lines.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    tag = _tag_actor_class().options(scheduling_strategy=here).remote(label, os.getpid())
    try:
        yield tag
    finally:
        ray_internals.end_actor_after_pending(tag)


@functools.cache
def _tag_actor_class() -> Any:
    """:class:`TrialTag` as a Ray actor class: no CPU (it must not take a trial's slot),
    never restarted (a restarted tag's log would start empty), detached (see
    :func:`trial_tag`)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0, lifetime="detached")(TrialTag)


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    try:  # the settings the trial trains with, defaults included
        return TrainConfig.from_flat(config).to_flat()
    except ValueError:  # not a training config: show what it has
        return config


class TrialMetrics:
    """The per-trial series of one trial, set once per epoch from the trial's process:
    ``pneumotune_trial_metric{metric="val_iou",...}`` for every validation metric,
    ``pneumotune_trial_epoch`` and ``pneumotune_trial_epoch_seconds``."""

    def __init__(self, experiment: str, trial_id: str) -> None:
        from ray.util.metrics import Gauge

        self.tags = {"experiment": experiment, "trial_id": trial_id}
        keys = ("experiment", "trial_id")
        self.value = Gauge(
            "pneumotune_trial_metric",
            description="A validation metric of a trial's last epoch.",
            tag_keys=(*keys, "metric"),
        )
        self.epoch = Gauge("pneumotune_trial_epoch", "Epochs a trial has finished.", keys)
        self.seconds = Gauge(
            "pneumotune_trial_epoch_seconds", "Seconds of a trial's last epoch.", keys
        )

    def record(self, epoch: int, metrics: dict[str, Any]) -> None:
        for name in VAL_KEYS:
            value = metrics.get(name)
            if isinstance(value, int | float) and math.isfinite(value):
                self.value.set(float(value), tags={**self.tags, "metric": name})
        self.epoch.set(epoch, tags=self.tags)
        seconds = metrics.get("epoch_seconds")
        if isinstance(seconds, int | float):
            self.seconds.set(float(seconds), tags=self.tags)


class TrialConsole:
    """What a running trial shows of itself: its log lines and its series. Made inside
    the trial (it reads the trial id and experiment name from Tune's context)."""

    def __init__(self, max_t: int, tag: Any = None) -> None:
        from ray import tune

        ctx = tune.get_context()
        self.trial_id, self.max_t = ctx.get_trial_id(), max_t
        self.series = TrialMetrics(ctx.get_experiment_name(), self.trial_id)
        self.tag = tag  # the trial's TrialTag (trial_tag), when a runner trains it

    def say(self, line: str) -> None:
        """Print ``line`` in this process' log and, with a tag, in the tag's log too
        (fire and forget: training never waits for the tag, alive or not)."""
        print(line, flush=True)
        if self.tag is not None:
            self.tag.log.remote(line)

    def started(self, backend: str) -> None:
        self.say(f"trial_{self.trial_id} trains with Keras on {backend}")

    def resumed(self, epoch: int) -> None:
        self.say(resume_line(self.trial_id, epoch, self.max_t))

    def epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.say(epoch_line(self.trial_id, epoch, self.max_t, metrics))
        self.series.record(epoch, metrics)


TRIAL_STATES = ("running", "stopped", "completed", "failed")


def trial_state_counts(trials: list[Any], max_t: int) -> dict[str, int]:
    """Tune's trials by the state a user asks about: running (or pending), stopped by
    ASHA before max_t, completed (max_t epochs), failed."""
    counts = dict.fromkeys(TRIAL_STATES, 0)
    for t in trials:
        if t.status == "ERROR":
            counts["failed"] += 1
        elif t.status == "TERMINATED":
            epochs = (t.last_result or {}).get("training_iteration", 0)
            counts["completed" if epochs >= max_t else "stopped"] += 1
        else:
            counts["running"] += 1
    return counts


def search_metrics_callback(experiment: str, max_t: int) -> Any:
    """A Tune callback (driver side) that keeps ``pneumotune_search_trials{state=...}``."""
    from ray import tune

    class SearchMetrics(tune.Callback):
        def setup(self, **info: Any) -> None:
            from ray.util.metrics import Gauge

            self.gauge = Gauge(
                "pneumotune_search_trials",
                description="Trials of a search by state.",
                tag_keys=("experiment", "state"),
            )

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if not hasattr(self, "gauge"):
                self.setup()
            counts = trial_state_counts(trials, max_t)
            if counts != getattr(self, "last", None):  # steps come every few milliseconds
                self.last = counts
                for state, n in counts.items():
                    self.gauge.set(n, tags={"experiment": experiment, "state": state})

    return SearchMetrics()


def where_to_look(path: Path, dashboard_url: str | None) -> str:
    """Where a user watches a search, printed when it starts."""
    from pneumotune.search.tuner import JOURNAL_FILE

    lines = ["Watch it:"]
    if dashboard_url:
        lines.append(
            f"  Ray dashboard  {dashboard_url}  (token auth is on: paste what "
            "`ray get-auth-token` prints; Actors: one per trial, named trial_<id> with its "
            "settings, its Log has a line per epoch)"
        )
    lines += [
        f"  trial table    pneumotune status {path} --watch",
        f"  Optuna study   optuna-dashboard {path / JOURNAL_FILE}",
        f"  TensorBoard    tensorboard --logdir {path}",
    ]
    return "\n".join(lines)
