"""Ray's internals that pneumotune uses, each behind one name (see :mod:`pneumotune.compat`).

Written against Ray 2.60 (``TESTED``, pyproject.toml's pin); importing this module warns
once when another release is installed. ``tests/pneumotune_tests/test_compat.py`` has a
canary per internal below. Importing this module does not import Ray.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from pneumotune.compat import attribute_set
from pneumotune.compat import check_version as _check_version

DISTRIBUTION = "ray"
TESTED = "~=2.60.0"  # pyproject.toml's pin (test_compat.py holds them equal)


def check_version() -> str:
    """Warn once per process when the installed Ray is outside :data:`TESTED`; returns
    the problem ("" if none)."""
    return _check_version(__name__, DISTRIBUTION, TESTED)


# --------------------------------------------------------------------------- ray.init

# Ray warns on every start of a local cluster that token authentication is on "by
# default" (it is, on purpose: app/ray_session.py quiets that logger). A logger name, so
# a rename makes the warning come back, nothing worse.
AUTH_TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"

# Ray Data's progress-bar module logs a line per dataset execution; our commands draw
# their own progress (app/ray_session.py's quiet_ray_data). A rename: the lines come back.
DATA_PROGRESS_LOGGER = "ray.data._internal.progress"


@contextlib.contextmanager
def ray_cluster_disabled() -> Iterator[None]:
    """``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` False while the block runs.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` into that constant once, at import;
    ``ray._private.services.get_node_ip_address`` gives a new local node 127.0.0.1 when it
    is false, so every server of the node listens on loopback only (app/ray_session.py's
    ``_loopback_node``, which also sets the variable for the node's processes). No public
    option does this (``ray.init``'s ``_node_ip_address`` is private too). Without it a
    local Ray listens on every interface of a Linux machine.
    """
    from ray._private import ray_constants

    with attribute_set(ray_constants, "ENABLE_RAY_CLUSTER", False):
        yield


def default_dashboard_agent_port() -> int:
    """``ray._private.ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT`` (52365): the fixed
    port a new local Ray's dashboard agent serves HTTP on, unless told otherwise."""
    from ray._private import ray_constants

    return ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT


@contextlib.contextmanager
def dashboard_agent_port_defaulting_to(port: int) -> Iterator[None]:
    """While the block runs, ``ray.init`` gives a new local node's dashboard agent ``port``
    (0: one the OS picks) unless told otherwise.

    ``ray.init`` has no option for that port; it builds the node's parameters with
    ``ray._private.parameter.RayParams`` at call time, so that class is replaced for the
    block by one whose ``dashboard_agent_listen_port`` defaults to ``port``. Without it a
    second Ray on a machine runs its agent without an HTTP server, and its dashboard shows
    no actor's or task's log ("Agent for node id ... doesn't exist").
    """
    from ray._private import parameter

    class RayParams(parameter.RayParams):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", port)
            super().__init__(*args, **kwargs)

    with attribute_set(parameter, "RayParams", RayParams):
        yield


# ------------------------------------------------------------------ Tune's OptunaSearch
# Ray's OptunaSearch keeps its Optuna study and the Tune trial id -> Optuna trial mapping
# in private attributes, with no public accessor. search/searcher.py's
# FidelityOptunaSearch (a subclass) needs them to tell a trial that ended before max_t,
# or paused at a rung, as PRUNED, and to resume a paused trial in a new Optuna trial.
# Without them: no fidelity-aware TPE, no promotion ASHA with a model-based searcher.


def optuna_study(searcher: Any) -> Any:
    """``OptunaSearch._ot_study``: the ``optuna.Study`` the searcher asks and tells (None
    before its search space is set). FidelityOptunaSearch tells a paused trial PRUNED
    (keeping the FrozenTrial ``tell`` returns), reads the study's trials, and asks with
    enqueued parameters to resume one."""
    return searcher._ot_study


def optuna_trial_of(searcher: Any, trial_id: str) -> Any:
    """``OptunaSearch._ot_trials[trial_id]``: the ``optuna.Trial`` that Tune trial
    ``trial_id`` reports into (KeyError if it has none)."""
    return searcher._ot_trials[trial_id]


def has_optuna_trial(searcher: Any, trial_id: str) -> bool:
    """Whether ``OptunaSearch._ot_trials`` has an Optuna trial for ``trial_id``
    (``suggest`` asks Optuna for one only when it has none)."""
    return trial_id in searcher._ot_trials


def set_optuna_trial(searcher: Any, trial_id: str, ot_trial: Any) -> None:
    """``OptunaSearch._ot_trials[trial_id] = ot_trial``: Tune trial ``trial_id`` reports
    into ``ot_trial`` from now on (a resumed trial's new Optuna trial; a queued point a new
    trial is to take, which ``suggest`` then uses instead of asking)."""
    searcher._ot_trials[trial_id] = ot_trial


def is_told(searcher: Any, trial_id: str) -> bool:
    """Whether ``trial_id`` is in ``OptunaSearch._completed_trials``: its end was told to
    Optuna (``on_trial_result`` and ``on_trial_complete`` then ignore it, with a
    warning)."""
    return trial_id in searcher._completed_trials


def mark_told(searcher: Any, trial_id: str) -> None:
    """Add ``trial_id`` to ``OptunaSearch._completed_trials`` without telling Optuna
    anything (a paused trial, told PRUNED at its pause, that ends while paused)."""
    searcher._completed_trials.add(trial_id)


def ask_new_optuna_trial(searcher: Any) -> Any:
    """A new ``optuna.Trial``, asked as ``OptunaSearch.suggest`` asks for a new Tune
    trial: with the searcher's space (``OptunaSearch._space``) as fixed distributions,
    unless the space is a define-by-run function."""
    space, study = searcher._space, searcher._ot_study
    if callable(space):
        return study.ask()
    return study.ask(fixed_distributions=space)


# --------------------------------------------------------------------- Tune's controller


def mark_trial_to_checkpoint(tune_controller: Any, trial: Any) -> None:
    """Have Tune rewrite ``trial``'s entry in its experiment state file at its next save.

    ``tune_controller`` is what a scheduler is handed: Ray 2.60's ``TrialRunnerWrapper``,
    whose ``_tune_controller`` is the ``TuneController``, whose
    ``_mark_trial_to_checkpoint`` marks the trial (``stop_trial`` marks only a trial that
    has an actor). Does nothing when either is gone: the file then keeps a paused trial
    that the scheduler ended as PAUSED (search/promotion.py; ``Tuner.restore`` would run
    it again).
    """
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    mark = getattr(controller, "_mark_trial_to_checkpoint", None)
    if mark is not None:
        mark(trial)


def limits_concurrency(limiter: Any) -> bool:
    """``ConcurrencyLimiter._limit_concurrency``: whether the limiter itself holds trials
    to its ``max_concurrent`` (False when the searcher it wraps limits them). Read by
    search/promotion.py's PauseAwareLimiter to say whether a paused trial can resume."""
    return limiter._limit_concurrency


def patch_actor_task_failed(convert: Callable[[Exception], Exception], tag: str) -> None:
    """Have Tune's actor manager handle ``convert(exception)`` for every exception a task
    of a trial's actor fails with (``RayActorManager._actor_task_failed``, patched on the
    class in this process; idempotent per ``tag``, an attribute set on the patch).

    search/failures.py turns Ray's ``OutOfMemoryError`` (memory monitor kills) into the
    ``RayActorError`` it amounts to: Tune's actor manager has no branch for it and ends
    the whole search with ``RuntimeError("Caught unexpected exception")``. There is no
    public hook for that error.
    """
    from ray.air.execution._internal.actor_manager import RayActorManager

    original = RayActorManager._actor_task_failed
    if getattr(original, tag, False):
        return

    def _actor_task_failed(self: Any, tracked_actor_task: Any, exception: Exception) -> None:
        original(self, tracked_actor_task, convert(exception))

    setattr(_actor_task_failed, tag, True)
    RayActorManager._actor_task_failed = _actor_task_failed


# ------------------------------------------------------------- function trainables (Tune)


def add_function_trainable_mixin(trainable: Callable, mixin: type) -> Callable:
    """Have Tune mix ``mixin`` into the class it wraps the function ``trainable`` in
    (``ray.tune.trainable.function_trainable.wrap_function`` reads the function's
    ``__mixins__``, a convention without public documentation); returns ``trainable``.
    search/watch/trial_telemetry.py names trial actors this way."""
    trainable.__mixins__ = (mixin, *getattr(trainable, "__mixins__", ()))
    return trainable


def set_function_trainable_repr(trainable: Any, text: str) -> None:
    """Make ``text`` the ``repr`` of a function trainable's instance: the class Tune wraps
    a function in returns its ``_name`` as its ``repr``, which is what Ray's Actors table
    shows. Without it the table says ``ImplicitFunc`` for every trial."""
    trainable._name = text


def actor_name_log_line(name: str) -> str:
    """The line that makes Ray's log monitor name the lines that follow ``name`` (what Ray
    prints when an actor starts: ``ray._private.ray_constants.LOG_PREFIX_ACTOR_NAME``).
    search/watch/trial_telemetry.py re-announces a reused actor's trial this way; without it the
    driver's console prefixes the trial's lines with the runner's name."""
    from ray._private.ray_constants import LOG_PREFIX_ACTOR_NAME

    return f"{LOG_PREFIX_ACTOR_NAME}{name}"


def end_actor_after_pending(handle: Any) -> Any:
    """End the actor behind ``handle`` once the method calls already sent to it have run
    (``handle.__ray_terminate__.remote()``, which Ray's docs name for this: "let pending
    tasks finish"; ``ray.kill`` drops them). Returns at once, with the ObjectRef of the
    ending (ready, as an error, once the actor has ended). A trial's tag actor ends so:
    lines sent before it was ALIVE still reach its log."""
    return handle.__ray_terminate__.remote()


# ------------------------------------------------------------ Train's checkpoint records


def _checkpoint_manager(trial: Any) -> Any:
    return trial.run_metadata.checkpoint_manager


def keep_checkpoint_results(trial: Any, keep: Callable[[Any], bool]) -> None:
    """Forget the checkpoints that ``keep(checkpoint)`` refuses from the trial's record of
    kept checkpoints (``trial.run_metadata.checkpoint_manager._checkpoint_results``, Ray
    Train's ``_CheckpointManager``), which Tune would otherwise delete, or restore from,
    later (search/checkpoint.py: checkpoints deleted before the state file was saved)."""
    manager = _checkpoint_manager(trial)
    manager._checkpoint_results = [r for r in manager._checkpoint_results if keep(r.checkpoint)]


def set_latest_checkpoint(
    trial: Any, checkpoint: Any, metrics: dict[str, Any] | None = None
) -> None:
    """Make ``checkpoint`` (a ``ray.tune.Checkpoint``, with the ``metrics`` reported with
    it; None: none) the trial's latest, the one a restored trial starts from
    (``_CheckpointManager._latest_checkpoint_result``, a ``ray.train._internal.session.
    _TrainingResult``). No public API sets it: search/checkpoint.py points a restored
    trial whose recorded checkpoint is gone at its newest one on disk."""
    manager = _checkpoint_manager(trial)
    if checkpoint is None:
        manager._latest_checkpoint_result = None
        return
    from ray.train._internal.session import _TrainingResult

    manager._latest_checkpoint_result = _TrainingResult(checkpoint, metrics or {})


def raise_checkpoint_index(trial: Any, at_least: int) -> None:
    """Number the trial's next checkpoint folder ``at_least`` or more
    (``trial.storage.current_checkpoint_index``, on Ray Train's internal
    ``StorageContext``), so that it cannot overwrite the folder the trial goes on from."""
    trial.storage.current_checkpoint_index = max(trial.storage.current_checkpoint_index, at_least)


check_version()
