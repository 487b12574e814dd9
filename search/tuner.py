"""Build, run and resume the Ray Tune search: FidelityOptunaSearch (TPE) + ASHA on one
metric.

* :class:`~pneumotune.search.searcher.FidelityOptunaSearch` (Ray's OptunaSearch, which
  tells Optuna a trial ASHA stopped as PRUNED with every epoch's value) samples the
  define-by-run space (search/space.py) with a seeded TPE sampler; Optuna's own pruning
  is off (NopPruner, Ray's default): ASHA stops trials (``asha.mode: stop``, Ray's
  ASHAScheduler) or pauses them at rungs and resumes the ones later arrivals rank in the
  top (``asha.mode: promote``, :mod:`search.promotion`).
* ASHA's time unit is the epoch: the trainable reports once per epoch.
* The tutorial's settings are enqueued as the first point, so every search can say
  how far it got beyond the tutorial.
* Trials get the dataset as a handle (:class:`pneumotune.data.node_cache.SharedDataset`),
  not arrays: each node writes an uncompressed copy of each size its trials train at to
  its disk once and every trial there memory-maps it, so neither the driver nor a trial
  holds a copy of the data, and a dataset larger than memory still trains.
* The experiment directory is Ray Tune's own layout under ``<storage>/<name>``, so
  ``Tuner.restore`` and Ray's tools read it; ``search.json`` is added at the end.
* Resuming unpickles that folder (see :func:`check_resumable`), so it resumes only a
  folder that no one else can have written.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pneumotune.errors import ConfigError, UsageError
from pneumotune.search.config import ExperimentConfig, check_name
from pneumotune.search.results import (
    PLAN_FILE,
    ResultsError,
    SearchSummary,
    read_plan,
    summarise,
)

JOURNAL_FILE = "optuna.journal"

Trainable = Callable[[dict[str, Any], Any], None]


@dataclass(frozen=True)
class SearchPlan:
    """Everything a run needs besides Ray: the experiment with its sizes resolved."""

    experiment: ExperimentConfig
    data_dir: Path
    name: str
    storage: Path
    tutorial_point: dict[str, Any]
    tutorial_notes: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.storage / self.name


def plan_search(
    exp: ExperimentConfig,
    data_dir: Path | None = None,
    *,
    name: str | None = None,
    storage: Path | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
) -> SearchPlan:
    """Validate the experiment against its dataset before anything starts."""
    from pneumotune.data.dataset import read_manifest
    from pneumotune.search.space import tutorial_point

    if name is not None:
        check_name(name, "--name")  # before anything is read: it names the results folder
    data_dir = Path(data_dir or exp.data or "")
    if not str(data_dir) or str(data_dir) == ".":
        raise UsageError("no dataset: pass --data DATASET or set `data:` in the experiment")
    manifest = read_manifest(data_dir)
    exp = exp.resolve_sizes(manifest["sizes"])
    if num_samples is not None:
        exp = replace(exp, num_samples=num_samples)
    if max_concurrent is not None:
        exp = replace(exp, max_concurrent=max_concurrent)
    point, notes = tutorial_point(exp) if exp.enqueue_tutorial else ({}, [])
    storage = (storage or exp.storage).expanduser().absolute()
    name = name or f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return SearchPlan(exp, data_dir.absolute(), name, storage, point, tuple(notes))


def searched_sizes(plan: SearchPlan) -> list[int]:
    """The img_size values the search's trials can train at."""
    return sorted({int(s) for s in plan.experiment.param_values("img_size")})


def shared_data(plan: SearchPlan, progress: bool = True) -> Any:
    """The dataset handle the trials get. When this machine is the whole Ray cluster and
    runs the trials, the copies of the searched sizes are written here first, with a
    progress bar (a trial would otherwise write its size's copy in its first epoch);
    otherwise each node's first trial at a size writes that node's copy (an autoscaling
    cluster's head alone, which runs no trial, writes none)."""
    from pneumotune.data.node_cache import SharedDataset, ensure_copy
    from pneumotune.search.preflight import nodes_now, trials_on

    data = SharedDataset.of(plan.data_dir)
    nodes = nodes_now()
    if len(nodes) == 1 and trials_on(nodes[0], plan.experiment) > 0:
        for size in searched_sizes(plan):
            ensure_copy(data, size, progress=progress)
    return data


def wrapped_trainable(plan: SearchPlan, data: Any, trainable: Trainable | None = None):
    from ray import tune

    from pneumotune.model.backend import requested_backend
    from pneumotune.search.trainable import train_trial
    from pneumotune.search.watch.trial_telemetry import name_trial_actors

    res = plan.experiment.resources
    backend = requested_backend()
    if res.workers_per_trial > 1 and backend != "tensorflow":
        raise ConfigError(
            f"workers_per_trial: {res.workers_per_trial} trains with TensorFlow's "
            f"MultiWorkerMirroredStrategy; on the {backend} backend a trial has one worker "
            "(set workers_per_trial: 1, or run on --backend tensorflow)"
        )
    if trainable is None and res.workers_per_trial > 1:
        # Ray Train workers hold the CPUs/GPUs; the trial is their light driver.
        from pneumotune.search.distributed import multi_worker_trainable

        return name_trial_actors(multi_worker_trainable(res, data))
    warm = trainable is None and reused_actors(plan)
    if trainable is None:
        fraction = res.gpu if 0 < res.gpu < 1 else None
        fn = tune.with_parameters(
            train_trial, data=data, backend=backend, gpu_fraction=fraction, warm=warm
        )
    else:
        fn = tune.with_parameters(trainable, data=data)
    resources = tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})
    return name_trial_actors(resources, reused=warm)


def reused_actors(plan: SearchPlan) -> bool:
    """Whether the search's trials run one after another in kept processes: the
    experiment's ``warm_trials`` for one-worker trials (a multi-worker trial's process
    is a light driver of Ray Train workers: nothing to keep warm)."""
    exp = plan.experiment
    return exp.warm_trials and exp.resources.workers_per_trial == 1


def build_tuner(
    plan: SearchPlan,
    trainable: Any,
    *,
    sampler: str = "tpe",
    early_stopping: bool = True,
    fidelity: bool = True,
    stop: Any = None,
    points: list[dict[str, Any]] | None = None,
    callbacks: list[Any] | None = None,
    reuse_actors: bool = False,
):
    """A fresh Tuner for ``plan`` (``trainable`` already wrapped with data and resources).

    The searcher is :class:`pneumotune.search.searcher.FidelityOptunaSearch` (trials
    ASHA stopped, or left paused at the end, are PRUNED for Optuna); the experiment's
    ``asha.mode`` picks Ray's ASHAScheduler or :class:`search.promotion.PromotionScheduler`
    (which limits concurrency through its own limiter); ``fidelity=False`` is Ray's stock
    OptunaSearch (they are COMPLETE with their last score). ``sampler="random"``, ``"gp"`` (Optuna's
    GPSampler) and ``early_stopping=False`` (FIFO) exist for baselines (bench/search.py,
    bench/replay.py); ``sampler="grid"`` runs exactly ``points`` (each merged over the
    fixed values, in order, once each: bench/atlas.py); ``stop`` is a Tune stopper (e.g.
    a trial-epoch budget); ``callbacks`` run besides the progress lines and the dashboard's
    trial counts; ``reuse_actors`` keeps trial processes between trials (``run_search``
    sets it from the experiment's ``warm_trials``; replays: a replayed trial starts in
    milliseconds).
    """
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from pneumotune.model.config import TrainConfig
    from pneumotune.search.checkpoint import RepairCheckpoints
    from pneumotune.search.searcher import FidelityOptunaSearch
    from pneumotune.search.space import base_values, make_space
    from pneumotune.search.trial_logs import KeepTrialLogs
    from pneumotune.search.watch.progress import ProgressLines
    from pneumotune.search.watch.trial_telemetry import search_metrics_callback

    exp = plan.experiment
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines
    samplers = {
        # multivariate: one joint model, so that lr x schedule-like pairs are learnt together.
        # constant_liar: running trials count as bad, so that concurrent proposals differ.
        "tpe": lambda: optuna.samplers.TPESampler(
            seed=exp.seed,
            n_startup_trials=exp.tpe_startup_trials,
            multivariate=True,
            constant_liar=True,
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=exp.seed),
        "gp": lambda: optuna.samplers.GPSampler(
            seed=exp.seed, n_startup_trials=exp.tpe_startup_trials
        ),
    }
    param_space = None
    if sampler == "grid":
        from ray.tune.search import BasicVariantGenerator

        if not points:
            raise ValueError("sampler='grid' needs the points to run")
        # Whole training configs, so that every point sets the same keys: Tune only lets a
        # point set keys that its param_space has.
        fixed = base_values(exp)
        full = [TrainConfig.from_flat({**fixed, **p}).to_flat() for p in points]
        param_space = dict.fromkeys(full[0])
        searcher = BasicVariantGenerator(points_to_evaluate=full, max_concurrent=exp.max_concurrent)
        exp = replace(exp, num_samples=len(points))
    elif sampler in samplers:
        options = {"max_t": exp.epochs} if fidelity else {}
        searcher = (FidelityOptunaSearch if fidelity else OptunaSearch)(
            **options,
            # The study lives in the results folder: optuna-dashboard and optuna.load_study
            # open it, and a resumed search goes on writing to it.
            storage=journal_storage(plan.path),
            study_name=plan.name,
            space=make_space(exp),
            metric=exp.metric,
            mode=exp.mode,
            points_to_evaluate=[plan.tutorial_point] if plan.tutorial_point else None,
            sampler=samplers[sampler](),
        )
    else:
        raise ValueError(f"sampler must be one of {[*sorted(samplers), 'grid']}, got {sampler!r}")
    max_concurrent: int | None = exp.max_concurrent
    asha = {
        "time_attr": "training_iteration",  # one report per epoch
        "max_t": exp.epochs,
        "grace_period": exp.asha.grace_period,
        "reduction_factor": exp.asha.reduction_factor,
    }
    if not early_stopping:
        scheduler = FIFOScheduler()
    elif exp.asha.mode == "promote":
        from pneumotune.search.promotion import PauseAwareLimiter, PromotionScheduler

        if sampler == "grid":
            raise ValueError("asha mode 'promote' needs a Searcher (tpe, random, gp), not grid")
        # Tune's own limit (max_concurrent_trials) would count paused trials as running.
        searcher = PauseAwareLimiter(searcher, max_concurrent=exp.max_concurrent)
        max_concurrent = None
        scheduler = PromotionScheduler(**asha)
    else:
        scheduler = ASHAScheduler(**asha)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=exp.metric,
            mode=exp.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=exp.num_samples,
            max_concurrent_trials=max_concurrent,
            reuse_actors=reuse_actors,
            # Short folder names: Tune's default packs every parameter into the name.
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=str(plan.storage),
            failure_config=tune.FailureConfig(max_failures=exp.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=exp.metric,
                checkpoint_score_order=exp.mode,
            ),
            stop=stop,
            # Our one-line-per-event progress replaces Tune's tables (search/watch/progress.py).
            callbacks=[
                ProgressLines(exp.metric, exp.mode, exp.epochs),
                RepairCheckpoints(),  # a killed search's state may name a deleted checkpoint
                KeepTrialLogs(),  # a resumed or retried trial keeps its earlier results
                search_metrics_callback(plan.name, exp.epochs),  # trial counts by state
                *(callbacks or []),
            ],
            verbose=0,
        ),
    )


def journal_storage(folder: Path) -> Any:
    """The Optuna study's storage: a Journal file, ``<folder>/optuna.journal``."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))


def quiet_tune_output() -> None:
    """Our progress lines instead of Tune's console output (this process only).

    Tune's output engine prints a configuration table and a TensorBoard command for a Ray
    session folder whatever the verbosity; the legacy engine at verbosity 0 prints
    nothing. Tune also warns each time syncing the experiment state takes over 5 s, which
    per-epoch checkpoints on a busy laptop make routine.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def write_plan(plan: SearchPlan) -> None:
    """``pneumotune.json`` beside Tune's files: what `status`, `export` and resume need."""
    plan.path.mkdir(parents=True, exist_ok=True)
    exp = plan.experiment
    record = {
        "name": plan.name,
        "data_dir": str(plan.data_dir),
        "experiment_source": str(exp.source) if exp.source else None,
        "metric": exp.metric,
        "mode": exp.mode,
        "epochs": exp.epochs,
        "num_samples": exp.num_samples,
        "searched": [p.name for p in exp.space],
        "tutorial_point": plan.tutorial_point,
        "tutorial_notes": list(plan.tutorial_notes),
    }
    (plan.path / PLAN_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class PreviousSearch:
    name: str
    data_dir: Path


def latest_experiment(storage: Path, experiment: str, name: str | None = None) -> PreviousSearch:
    """The search to resume: ``name`` under ``storage``, else the newest of ``experiment``
    among the folders this user owns (another user's cannot be resumed: see
    :func:`check_resumable`, which the chosen folder then passes or fails).

    A folder counts when its ``pneumotune.json`` is pneumotune's and names the folder
    itself (the name becomes the path that is resumed); others are passed over."""
    storage = Path(storage).expanduser().absolute()
    if name is not None:
        check_name(name, "--name")
    candidates = []
    for plan_file in storage.glob("*/" + PLAN_FILE):
        folder = plan_file.parent
        if name is not None and folder.name != name:
            continue
        if name is None and not folder.name.startswith(f"{experiment}-"):
            continue
        try:
            plan = read_plan(folder)
            mtime = plan_file.stat().st_mtime
            owned = folder.stat().st_uid == os.geteuid()
        except (ResultsError, OSError):
            continue
        if plan["name"] == folder.name and (owned or name is not None):
            candidates.append((mtime, folder.name, plan))
    if not candidates:
        what = f"named {name!r}" if name else f"of experiment {experiment!r} of yours"
        raise UsageError(f"no search {what} to resume under {storage}")
    _, found, plan = max(candidates)
    check_resumable(storage / found)  # before Ray starts: the error comes at once
    if not plan.get("data_dir"):
        raise UsageError(f"{storage / found / PLAN_FILE} records no dataset: pass --data")
    return PreviousSearch(found, Path(plan["data_dir"]))


def check_resumable(folder: Path) -> None:
    """Refuse (:class:`UsageError`, the reason and the fix) to resume a folder that
    someone else can have written.

    Resuming runs what the folder holds: Ray's ``Tuner.restore`` unpickles ``tuner.pkl``,
    the newest ``experiment_state-*.json`` (cloudpickle inside JSON: every trial's
    storage, checkpoint records, its stopper and name creators), ``searcher-state-*.pkl``
    (OptunaSearch pickles itself and the study), ``search_gen_state-*.json`` (a pickle
    despite its name) and ``callback-states-*.pkl``; Tune copies every top-level
    ``*.json`` and ``*.pkl`` to its staging folder to do so; the result grid of the
    resumed run unpickles each failed trial's ``error.pkl``, and each resumed trial loads
    its checkpoint's ``model.keras`` (``params.pkl`` is written, not read, by Ray 2.60).
    A planted pickle is code that runs as the user who resumes. So every entry in the
    folder, the folder itself included, must be owned by this user and writable by no one
    else (group or others), and a symbolic link in it must lead to a file in it (which is
    then checked too). A link to the folder itself is followed: the folder it leads to is
    what is checked.

    The folder's parent is not checked: on the cluster's shared volume it is group-
    writable by design, and a folder swapped in there would be another user's, which
    this check refuses; it is run again just before Ray reads the folder.
    """
    root = Path(folder).expanduser()
    try:
        real = root.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UsageError(f"nothing to resume at {root} (no such folder)") from None
    me = os.geteuid()
    refusal = f"refusing to resume {root}"
    why = "resume unpickles this folder, so it must be yours and not writable by others"
    quoted = shlex.quote(str(root))

    def check(path: Path) -> None:
        info = path.lstat()
        shown = str(path.relative_to(real)) if path != real else "the folder"
        if info.st_uid != me:
            raise UsageError(
                f"{refusal}: {shown} is owned by {_user(info.st_uid)}, not by you "
                f"({_user(me)}); {why}: resume it as its owner, or, if you trust every file "
                f"in it, take it over (sudo chown -R {_user(me, name_only=True)} {quoted})"
            )
        if stat.S_ISLNK(info.st_mode):
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):
                target = None
            if target is None or not target.is_relative_to(real):
                where = "a link that leads nowhere" if target is None else f"a link to {target}"
                raise UsageError(
                    f"{refusal}: {shown} is {where}, outside the folder; {why}: replace the "
                    "link with the file it stands for, or delete it"
                )
            return  # its target is in the folder: the walk checks it
        writable = [who for who, bit in (("group", 0o020), ("others", 0o002)) if info.st_mode & bit]
        if writable[:1] == ["group"] and _private_group(info.st_gid, me):
            writable = writable[1:]  # umask 002 with a group of one's own: still only yours
        if writable:
            raise UsageError(
                f"{refusal}: {shown} is writable by {' and '.join(writable)} (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); {why}: chmod -R go-w {quoted}"
            )

    def unlisted(exc: OSError) -> None:  # os.walk would skip a folder it cannot list
        raise UsageError(f"{refusal}: cannot list {exc.filename} ({exc.strerror})")

    check(real)
    # Links are not followed: check() looks at them.
    for top, dirs, files in os.walk(real, onerror=unlisted):
        dirs.sort()
        for entry in sorted([*dirs, *files]):
            check(Path(top) / entry)


@functools.cache
def _private_group(gid: int, uid: int) -> bool:
    """Whether ``gid`` is ``uid``'s own group (the user-private-group scheme of Debian,
    Ubuntu and Fedora, whose default umask 002 makes every file group-writable): the
    user's primary group, named after the user, with no other member."""
    import grp
    import pwd

    try:
        user, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except KeyError:
        return False
    if user.pw_gid != gid or group.gr_name != user.pw_name:
        return False
    if set(group.gr_mem) - {user.pw_name}:
        return False
    return not any(p.pw_gid == gid and p.pw_uid != uid for p in pwd.getpwall())


def _user(uid: int, name_only: bool = False) -> str:
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no account here (a container's, another machine's)
        return str(uid) if name_only else f"uid {uid}"
    return name if name_only else f"{name} (uid {uid})"


def run_search(
    plan: SearchPlan,
    *,
    resume: bool = False,
    trainable: Trainable | None = None,
    memory_check: bool = True,
    **tuner_options: Any,
) -> SearchSummary:
    """Run (or resume) the search to completion and write ``search.json``.

    Ray must already be initialised (see pneumotune.ray_session.ensure_ray). ``memory_check``:
    refuse a plan whose trials cannot fit in the nodes' memory
    (:func:`pneumotune.search.preflight.check_memory`); our own trainable only.
    """
    import sys

    from ray import tune

    from pneumotune.compat import moved_modules
    from pneumotune.data.dataset import read_manifest
    from pneumotune.search.preflight import check_memory, nodes_now

    if resume:
        check_resumable(plan.path)  # before anything else reads the folder
    quiet_tune_output()
    if memory_check and trainable is None:
        rows = int(read_manifest(plan.data_dir)["counts"]["labelled"])
        for note in check_memory(plan.experiment, nodes_now(), rows):
            print(f"pneumotune: {note}", file=sys.stderr, flush=True)
    data = shared_data(plan)
    wrapped = wrapped_trainable(plan, data, trainable)
    if resume:
        if not tune.Tuner.can_restore(str(plan.path)):
            raise UsageError(f"nothing to resume at {plan.path} (no Tune experiment state there)")
        check_resumable(plan.path)  # again, as late as can be: Ray unpickles it next
        moved_modules.install()  # a folder an older release wrote names moved modules
        tuner = tune.Tuner.restore(str(plan.path), trainable=wrapped, resume_errored=False)
    else:
        if plan.path.exists() and any(plan.path.iterdir()):
            raise UsageError(
                f"{plan.path} already holds an experiment: use --resume to continue it or "
                "--name to start another"
            )
        write_plan(plan)
        if trainable is None:
            tuner_options.setdefault("reuse_actors", reused_actors(plan))
        tuner = build_tuner(plan, wrapped, **tuner_options)
    tuner.fit()
    if plan.experiment.resources.workers_per_trial > 1:
        from pyarrow import fs

        from pneumotune.search.distributed import delete_train_runs

        # Tune ends a trial that reached max_t from outside, which can cut its own clean-up
        # short: whatever Train run folders are left go now that every trial has ended.
        for trial_dir in plan.path.iterdir():
            delete_train_runs(fs.LocalFileSystem(), str(trial_dir))
    summary = summarise(plan.path, ended=True)
    (plan.path / "search.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary
