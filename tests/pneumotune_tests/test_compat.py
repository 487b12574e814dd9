"""Canaries for the internals of Ray and Keras that pneumotune uses (app/compat/), and the
rule that nothing else uses any.

One test per internal: it checks, on real objects (an Optuna study behind Ray's
OptunaSearch, a stub Tune trial, Keras optimizers and models; Ray's controller classes by
inspection, without starting Ray), that the internal still exists with the shape the
compat function relies on, and runs that function. A failure names the internal and the
compat function, e.g. "Ray 2.61.0 removed or changed RayActorManager._actor_task_failed,
used by pneumotune.compat.ray_internals.patch_actor_task_failed: ...". Run these first
after upgrading Ray, Keras or Optuna.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import random
import re
import sys
import tomllib
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution

import pneumotune.compat
from pneumotune.compat import keras_internals, ray_internals

ROOT = Path(__file__).resolve().parents[2]
COMPAT = ROOT / "app" / "compat"
LIBRARY = {"ray": "Ray", "keras": "Keras", "optuna": "Optuna"}


@contextlib.contextmanager
def canary(internal: str, user: Callable | str) -> Iterator[None]:
    """Fail with a message naming ``internal`` and the compat function (or constant) that
    uses it when the block raises."""
    name = user if isinstance(user, str) else f"{user.__module__}.{user.__qualname__}"
    distribution = sys.modules[name.rpartition(".")[0]].DISTRIBUTION
    try:
        yield
    except Exception as exc:
        pytest.fail(
            f"{LIBRARY[distribution]} {version(distribution)} removed or changed {internal}, "
            f"used by {name}: {type(exc).__name__}: {exc}",
            pytrace=False,
        )


def _parameters(function: Callable) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("module", [ray_internals, keras_internals], ids=lambda m: m.__name__)
def test_each_compat_module_names_the_pin_of_pyproject(module):
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(p for p in pins if re.match(rf"{module.DISTRIBUTION}\b(\[[^]]*\])?\s*[~=<>]", p))
    assert re.sub(r"^[\w-]+(\[[^]]*\])?\s*", "", pin) == module.TESTED, (pin, module.TESTED)


@pytest.mark.parametrize("module", [ray_internals, keras_internals], ids=lambda m: m.__name__)
def test_the_installed_releases_are_the_tested_ones(module):
    assert module.check_version() == ""


def test_an_untested_release_is_named_with_the_module_and_the_range():
    problem = pneumotune.compat.version_problem(
        "pneumotune.compat.ray_internals", "ray", "~=2.60.0", "2.61.0"
    )
    for part in ("pneumotune.compat.ray_internals", "ray ~=2.60.0", "ray 2.61.0 is installed"):
        assert part in problem
    assert pneumotune.compat.version_problem("m", "ray", "~=2.60.0", "2.60.3") == ""
    assert "not installed" in pneumotune.compat.version_problem("m", "ray", "~=2.60.0", None)


def test_an_untested_release_warns_once_per_process():
    module = "pneumotune.compat.test_module"
    pneumotune.compat._warned.discard(module)
    with pytest.warns(pneumotune.compat.UntestedVersionWarning, match="not installed"):
        pneumotune.compat.check_version(module, "pneumotune-no-such-distribution", "~=1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pneumotune.compat.check_version(
            module, "pneumotune-no-such-distribution", "~=1.0"
        )  # still the problem, no second warning


def test_attribute_set_restores_the_value_even_when_the_block_raises():
    owner = type("Owner", (), {"switch": True})
    with pneumotune.compat.attribute_set(owner, "switch", False):
        assert owner.switch is False
    assert owner.switch is True
    with pytest.raises(KeyError), pneumotune.compat.attribute_set(owner, "switch", 0):
        raise KeyError("the block failed")
    assert owner.switch is True


# ------------------------------------------------------------------ the rule, by grep

# Private names of Ray, Keras and Optuna: module paths, and the attributes app/compat/
# reaches. Outside app/compat/ (the package, bench/, cluster/; tests may use them), none.
FORBIDDEN = [
    r"\b(ray|keras|optuna)(\.\w+)*\._(?!_)\w+",  # ray._private, ray.data._internal, optuna._x
    r"\bkeras\.src\b",
    r"\b_private\b|\b_internal\b",
    r"\._ot_trials\b|\._ot_study\b|\._completed_trials\b|\._space\b",
    r"__mixins__|\._name\b|\bLOG_PREFIX_ACTOR_NAME\b|\b__ray_terminate__\b",
    r"\._tune_controller\b|\b_mark_trial_to_checkpoint\b|\._limit_concurrency\b",
    r"\b_supports_buffered_results\b|\b_actor_task_failed\b",
    r"\b_checkpoint_results\b|\b_latest_checkpoint_result\b|\b_TrainingResult\b",
    r"\.run_metadata\b|\.current_checkpoint_index\b",
    r"\bray_constants\b|\.ENABLE_RAY_CLUSTER\b|\bRayParams\b",
    r"\._learning_rate\b|\b_(maybe_)?symbolic_build\b",
    r"\bglobal_state\b|\bseed_generator\b|\brng_utils\b",
]
SCANNED = ("app", "data", "model", "search", "reports", "bench", "cluster")


def test_no_internal_is_used_outside_the_compat_package():
    pattern = re.compile("|".join(f"(?:{p})" for p in FORBIDDEN))
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(COMPAT):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, (
        "internals of Ray/Keras/Optuna outside app/compat/ (use or add a function of "
        "pneumotune.compat.ray_internals / keras_internals, with a canary here):\n"
        + "\n".join(found)
    )


def test_the_compat_package_imports_no_library():
    code = (
        "import sys, pneumotune.compat.ray_internals, pneumotune.compat.keras_internals\n"
        "print(sorted(m for m in ('ray', 'keras', 'tensorflow', 'optuna') if m in sys.modules))"
    )
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------ Ray: ray.init


@pytest.mark.parametrize(
    "constant", ["AUTH_TOKEN_SETUP_LOGGER", "DATA_PROGRESS_LOGGER"], ids=str.lower
)
def test_the_loggers_quieted_are_ray_modules_loggers(constant):
    name = getattr(ray_internals, constant)
    with canary(f"the logger of {name}", f"pneumotune.compat.ray_internals.{constant}"):
        assert importlib.import_module(name).logger.name == name


def test_enable_ray_cluster_decides_a_local_nodes_address():
    import ray
    from ray._private import ray_constants, services

    with canary(
        "ray._private.ray_constants.ENABLE_RAY_CLUSTER", ray_internals.ray_cluster_disabled
    ):
        assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
        source = inspect.getsource(services.get_node_ip_address)
        assert "ray_constants.ENABLE_RAY_CLUSTER" in source, "get_node_ip_address ignores it"
        saved = ray_constants.ENABLE_RAY_CLUSTER
        with ray_internals.ray_cluster_disabled():
            assert ray_constants.ENABLE_RAY_CLUSTER is False
            if not ray.is_initialized():  # else the running node's address
                assert services.get_node_ip_address() == services.get_localhost_ip()
        assert ray_constants.ENABLE_RAY_CLUSTER is saved


def test_the_dashboard_agent_port_is_a_ray_params_default():
    from ray._private import parameter, worker

    user = ray_internals.dashboard_agent_port_defaulting_to
    with canary("ray._private.parameter.RayParams(dashboard_agent_listen_port=...)", user):
        assert "dashboard_agent_listen_port" in _parameters(parameter.RayParams.__init__)
        # ray.init looks the class up at call time, so that replacing it takes effect.
        assert "ray._private.parameter.RayParams(" in inspect.getsource(worker.init)
        with ray_internals.dashboard_agent_port_defaulting_to(0):
            assert parameter.RayParams().dashboard_agent_listen_port == 0
            assert (
                parameter.RayParams(dashboard_agent_listen_port=7).dashboard_agent_listen_port == 7
            )
        assert parameter.RayParams().dashboard_agent_listen_port == 52365
    with canary(
        "ray._private.ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT",
        ray_internals.default_dashboard_agent_port,
    ):
        assert ray_internals.default_dashboard_agent_port() == 52365


# --------------------------------------------------------------- Ray: Tune's OptunaSearch


def _optuna_search(space: Any = None) -> Any:
    from ray.tune.search.optuna import OptunaSearch

    space = space or {"x": FloatDistribution(0.0, 1.0)}
    return OptunaSearch(
        space=space, metric="m", mode="max", sampler=optuna.samplers.RandomSampler(seed=0)
    )


def test_optuna_search_keeps_its_study_in_ot_study():
    searcher = _optuna_search()
    with canary("OptunaSearch._ot_study", ray_internals.optuna_study):
        study = ray_internals.optuna_study(searcher)
        assert isinstance(study, optuna.Study)
        searcher.suggest("t1")
        assert [t.number for t in study.get_trials(deepcopy=False)] == [0]


def test_optuna_search_maps_tune_trials_to_optuna_trials_in_ot_trials():
    searcher = _optuna_search()
    for user in (
        ray_internals.optuna_trial_of,
        ray_internals.has_optuna_trial,
        ray_internals.set_optuna_trial,
    ):
        with canary("OptunaSearch._ot_trials", user):
            assert not ray_internals.has_optuna_trial(searcher, "t1")
            config = searcher.suggest("t1")
            trial = ray_internals.optuna_trial_of(searcher, "t1")
            assert isinstance(trial, optuna.Trial) and config == trial.params
            # suggest uses a trial set beforehand instead of asking for one.
            other = ray_internals.optuna_study(searcher).ask({"x": FloatDistribution(0, 1)})
            ray_internals.set_optuna_trial(searcher, "t2", other)
            assert searcher.suggest("t2") == other.params
            assert ray_internals.optuna_trial_of(searcher, "t2") is other
            searcher = _optuna_search()


def test_optuna_search_records_told_trials_in_completed_trials():
    searcher = _optuna_search()
    for user in (ray_internals.is_told, ray_internals.mark_told):
        with canary("OptunaSearch._completed_trials", user):
            searcher.suggest("a")
            searcher.suggest("b")
            assert not ray_internals.is_told(searcher, "a")
            searcher.on_trial_complete("a", {"m": 1.0, "training_iteration": 1})
            assert ray_internals.is_told(searcher, "a")
            ray_internals.mark_told(searcher, "b")  # told nothing: Optuna's trial runs on
            assert ray_internals.is_told(searcher, "b")
            searcher.on_trial_complete("b", {"m": 1.0})  # ignored
            states = [t.state for t in ray_internals.optuna_study(searcher).trials]
            assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
            searcher = _optuna_search()


@pytest.mark.parametrize("kind", ["distributions", "define-by-run"])
def test_optuna_search_asks_with_its_space_in_space(kind):
    def define_by_run(trial: Any) -> None:
        trial.suggest_float("x", 0.0, 1.0)

    space = define_by_run if kind == "define-by-run" else None
    searcher = _optuna_search(space)
    with canary("OptunaSearch._space", ray_internals.ask_new_optuna_trial):
        trial = ray_internals.ask_new_optuna_trial(searcher)
        assert isinstance(trial, optuna.Trial)
        if kind == "distributions":
            assert set(trial.params) == {"x"}  # asked with the space's distributions
        else:
            assert trial.params == {}  # the function suggests, in OptunaSearch.suggest


def test_optuna_search_tells_a_trial_ended_without_a_result_pruned():
    """Public behaviour FidelityOptunaSearch relies on (not an internal): PRUNED, valued
    at its last intermediate value."""
    searcher = _optuna_search()
    searcher.suggest("a")
    searcher.on_trial_result("a", {"m": 0.25, "training_iteration": 1})
    searcher.on_trial_result("a", {"m": 0.5, "training_iteration": 2})
    searcher.on_trial_complete("a")
    (frozen,) = ray_internals.optuna_study(searcher).trials
    assert frozen.state == optuna.trial.TrialState.PRUNED and frozen.value == 0.5


# --------------------------------------------------------------- Ray: Tune's controller


def test_the_controller_marks_a_trial_for_its_state_file():
    from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController

    user = ray_internals.mark_trial_to_checkpoint
    with canary("TuneController._mark_trial_to_checkpoint(trial)", user):
        assert _parameters(TuneController._mark_trial_to_checkpoint) == ["self", "trial"]
        assert "_trials_to_cache" in inspect.getsource(TuneController._mark_trial_to_checkpoint)
    with canary("TrialRunnerWrapper._tune_controller", user):
        # What a scheduler is handed: the wrapper over the controller.
        assert "TrialRunnerWrapper(" in inspect.getsource(TuneController._wrapped)

        class Controller:  # a stand-in that records what it is told, through the wrapper
            def __init__(self) -> None:
                self.marked: list[str] = []

            def _mark_trial_to_checkpoint(self, trial: Any) -> None:
                self.marked.append(trial)

        controller = Controller()
        wrapper = TrialRunnerWrapper(tune_controller=controller, trial_executor=None)
        ray_internals.mark_trial_to_checkpoint(wrapper, "trial")
        assert controller.marked == ["trial"]


def test_a_concurrency_limiter_says_whether_it_limits():
    from ray.tune.search import ConcurrencyLimiter

    with canary("ConcurrencyLimiter._limit_concurrency", ray_internals.limits_concurrency):
        assert ray_internals.limits_concurrency(ConcurrencyLimiter(_optuna_search(), 2)) is True


def test_the_actor_manager_handles_failed_tasks_in_actor_task_failed():
    from ray.air.execution._internal.actor_manager import RayActorManager

    user = ray_internals.patch_actor_task_failed
    with canary("RayActorManager._actor_task_failed(tracked_actor_task, exception)", user):
        method = RayActorManager._actor_task_failed
        names = _parameters(method)
        assert names == ["self", "tracked_actor_task", "exception"], names
        # The one place the manager hands a failed task's exception to.
        assert "self._actor_task_failed(" in inspect.getsource(RayActorManager)
        seen = []
        try:
            ray_internals.patch_actor_task_failed(lambda e: seen.append(e) or e, "_canary")
            patched = RayActorManager._actor_task_failed
            assert getattr(patched, "_canary", False)
            ray_internals.patch_actor_task_failed(lambda e: e, "_canary")  # idempotent
            assert RayActorManager._actor_task_failed is patched
        finally:
            RayActorManager._actor_task_failed = method


# ------------------------------------------------------------ Ray: function trainables


def _function_trainable(config: dict) -> None:
    """A function trainable (never run here)."""


def test_a_function_trainables_mixins_are_mixed_into_its_class():
    from ray.tune.trainable.function_trainable import wrap_function

    class Mixin:
        pass

    def trainable(config: dict) -> None:
        pass

    user = ray_internals.add_function_trainable_mixin
    with canary("the __mixins__ of a function trainable (wrap_function)", user):
        assert ray_internals.add_function_trainable_mixin(trainable, Mixin) is trainable
        assert issubclass(wrap_function(trainable), Mixin)


def test_a_function_trainables_repr_is_its_name():
    from ray.tune.trainable.function_trainable import wrap_function

    user = ray_internals.set_function_trainable_repr
    with canary("the _name of a function trainable's class (its __repr__)", user):
        instance = object.__new__(wrap_function(_function_trainable))  # no actor, no setup
        assert repr(instance) == "_function_trainable"
        ray_internals.set_function_trainable_repr(instance, "trial_1 lr=0.1")
        assert repr(instance) == "trial_1 lr=0.1"


def test_an_actor_name_line_is_what_rays_log_monitor_reads():
    from ray._private import log_monitor, ray_constants

    with canary(
        "ray._private.ray_constants.LOG_PREFIX_ACTOR_NAME", ray_internals.actor_name_log_line
    ):
        prefix = ray_constants.LOG_PREFIX_ACTOR_NAME
        assert isinstance(prefix, str) and prefix
        assert "LOG_PREFIX_ACTOR_NAME" in inspect.getsource(log_monitor)
        assert ray_internals.actor_name_log_line("trial_1") == f"{prefix}trial_1"


def test_every_actor_class_ends_itself_in_ray_terminate():
    import ray.actor

    with canary(
        "the __ray_terminate__ method Ray adds to every actor class (it calls "
        "ray.actor.exit_actor, queued after the calls already sent)",
        ray_internals.end_actor_after_pending,
    ):

        class Tag:
            pass

        method = ray.actor._modify_class(Tag).__ray_terminate__
        assert "exit_actor" in inspect.getsource(method)


# ------------------------------------------------------------ Ray: checkpoint records


def _stub_trial(tmp_path: Path) -> Any:
    """A real Tune trial, stub (no trainable registered), with local storage."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = StorageContext(
        storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="trial"
    )
    return Trial("stub", config={}, storage=storage, stub=True)


def _checkpoint(tmp_path: Path, name: str) -> Any:
    from ray.train import Checkpoint

    (tmp_path / name).mkdir()
    return Checkpoint(str(tmp_path / name))


def test_the_kept_checkpoints_are_the_managers_checkpoint_results(tmp_path):
    from ray.train._internal.session import _TrainingResult

    user = ray_internals.keep_checkpoint_results
    with canary("_CheckpointManager._checkpoint_results (trial.run_metadata)", user):
        trial = _stub_trial(tmp_path)
        manager = trial.run_metadata.checkpoint_manager
        a, b = _checkpoint(tmp_path, "a"), _checkpoint(tmp_path, "b")
        for checkpoint in (a, b):
            manager.register_checkpoint(_TrainingResult(checkpoint, {"epoch": 1}))
        assert [r.checkpoint for r in manager.best_checkpoint_results] == [a, b]
        ray_internals.keep_checkpoint_results(trial, lambda c: c.path == b.path)
        assert [r.checkpoint for r in manager.best_checkpoint_results] == [b]


def test_the_latest_checkpoint_is_the_managers_latest_checkpoint_result(tmp_path):
    user = ray_internals.set_latest_checkpoint
    with canary("_CheckpointManager._latest_checkpoint_result, _TrainingResult", user):
        trial = _stub_trial(tmp_path)
        checkpoint = _checkpoint(tmp_path, "checkpoint_000003")
        ray_internals.set_latest_checkpoint(trial, checkpoint, {"epoch": 3})
        assert trial.checkpoint is checkpoint  # what a restored trial starts from
        assert trial.latest_checkpoint_result.metrics == {"epoch": 3}
        ray_internals.set_latest_checkpoint(trial, None)
        assert trial.checkpoint is None


def test_the_next_checkpoint_folder_is_numbered_by_current_checkpoint_index(tmp_path):
    user = ray_internals.raise_checkpoint_index
    with canary("StorageContext.current_checkpoint_index (trial.storage)", user):
        trial = _stub_trial(tmp_path)
        ray_internals.raise_checkpoint_index(trial, 5)
        assert trial.storage.checkpoint_fs_path.endswith("checkpoint_000005")
        ray_internals.raise_checkpoint_index(trial, 2)  # never lowered
        assert trial.storage.current_checkpoint_index == 5


# ------------------------------------------------------------------------------ Keras


def test_keras_global_seed_state_is_what_set_random_seed_sets():
    import keras
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    user = keras_internals.set_keras_seed
    internal = "keras.src: global_state, rng_utils.GLOBAL_RANDOM_SEED, GLOBAL_SEED_GENERATOR"
    with canary(internal, user):
        source = inspect.getsource(keras.utils.set_random_seed)
        for name in ("GLOBAL_RANDOM_SEED", "GLOBAL_SEED_GENERATOR"):
            assert name in source, f"set_random_seed no longer sets {name}"
        keras.utils.set_random_seed(5)
        public = keras.ops.convert_to_numpy(keras.random.uniform((4,)))
        keras.random.uniform((4,))  # the global generator moves on
        keras_internals.set_keras_seed(5)
        random.seed(5)
        np.random.seed(5)
        assert rng_utils.get_random_seed() == 5
        assert global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR) is None
        ours = keras.ops.convert_to_numpy(keras.random.uniform((4,)))
        np.testing.assert_array_equal(ours, public)


def test_an_optimizer_keeps_its_schedule_in_learning_rate():
    import keras

    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    with canary("optimizer._learning_rate", keras_internals.optimizer_learning_rate):
        for optimizer in (keras.optimizers.Adam(schedule), keras.optimizers.AdamW(schedule)):
            assert keras_internals.optimizer_learning_rate(optimizer) is schedule
        scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(schedule))
        assert keras_internals.optimizer_learning_rate(scaled.inner_optimizer) is schedule


def _tiny_model() -> Any:
    import keras

    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def test_a_model_builds_its_compiled_state_in_symbolic_build():
    import keras

    user = keras_internals.build_compiled_state
    with canary("keras.Model._symbolic_build(data_batch=...)", user):
        assert "data_batch" in _parameters(keras.Model._symbolic_build)
        model = _tiny_model()
        assert not model.optimizer.built
        batch = np.zeros((2, 4, 4, 1), np.float32)
        keras_internals.build_compiled_state(model, (batch, batch))
        assert model.built and model.optimizer.built and model.optimizer.variables


def test_fit_builds_through_maybe_symbolic_build():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("model/multiworker.py is TensorFlow's (MultiWorkerMirroredStrategy)")
    from keras.src.backend.tensorflow import trainer

    user = keras_internals.skip_build_in_fit
    with canary("the TensorFlow trainer's _maybe_symbolic_build(iterator, data_batch)", user):
        names = _parameters(keras.Model._maybe_symbolic_build)
        assert names == ["self", "iterator", "data_batch"], names
        assert "self._maybe_symbolic_build(" in inspect.getsource(trainer.TensorFlowTrainer.fit)
        model = _tiny_model()
        batch = np.zeros((2, 4, 4, 1), np.float32)
        keras_internals.build_compiled_state(model, (batch, batch))
        keras_internals.skip_build_in_fit(model)
        model.fit(batch, batch, epochs=1, verbose=0)  # built beforehand, fit trains
