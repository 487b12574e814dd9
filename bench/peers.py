"""The searchers our users would pick instead of ours, replayed on a learning-curve atlas.

    python bench/peers.py --atlas bench/atlas/synth64.csv --budget 4 --seeds 20
                          [--seed-offset 0] [--only NAME ...] [--space grid product]
                          [--peer-seeds NAME=N ...] [--json OUT] [--markdown OUT]
                          [--ours REPLAY_JSON | --ours none] [--from-json PEERS_JSON]
    python bench/peers.py --smoke-test      # every peer, 1 seed, budget 2, invariants checked

Each peer runs its library's own optimizer classes (ask/tell, or the scheduler API its
tuner drives) on recorded curves, under bench/replay.py's protocol so that the numbers sit
beside ours:

* budget: B (``--budget``) x max_t trial-epochs, counted as reported epochs; the search
  ends at the B x max_t-th report (Ray's ``EpochBudget`` stopper and the ``Record``
  callback of pneumotune.search.replay do the same), in-flight trials are cut there;
* clock: 2 concurrent trials; each epoch of a trial takes its recorded ``epoch_seconds``
  (the first epoch of every fresh trial includes its recorded start-up); a worker that
  frees up asks for its next job at once; a job that resumes a checkpoint pays the
  recorded seconds of the epochs it trains, not the restore (as the replay's promotion
  mode); results reach the optimizer in the order of that clock. The replay gets this
  order from Ray sleeping ``seconds x scale``; here one discrete-event loop
  (:func:`replay`) simulates it exactly and identically for every peer, so a difference
  between two rows is the optimizers', never the harness's;
* curves: a config replays the curve of the atlas's first recorded seed (seed 0); the
  atlas's repeats only enter ``best`` and the picked config's full-length score, as in
  :func:`pneumotune.search.replay.summarise`, which this module calls unchanged;
* regret: the atlas best (any config, seed, epoch) minus the best val_iou the search saw
  in any reported epoch; "epochs to 0.01": trial-epochs reported until the first within
  0.01; "picked final": the full-length score (best epoch, averaged over recorded seeds)
  of the config the search saw its best value from;
* seeds: seed s seeds the library's sampler / scheduler (``seed``, ``random_seed``).

A search whose library stops suggesting before the budget is spent (its searcher has
tried every config of the 48-config grid and does not repeat one, or a fixed plan is
done) ends there with the epochs it used: "ended early" counts those seeds.

The benchmark is pneumotune.search.replay's interface (``Benchmark``: a space of the
product's own ``ParamSpec`` and the curve of a config), the same the product's replay
runs on. ``AtlasBenchmark`` is the grid atlas: one categorical axis per CSV axis column,
its levels as recorded (``lr`` too is categorical, as in the product's replay space).
``--surrogate`` replays bench/surrogate.py's model of the continuous-space atlas instead:
demo.yaml's space with float (optionally log) and categorical params, which every peer
translates to its library's space. A conditional param (demo.yaml's ``step_gamma``, only
for ``schedule: step``) is searched by the peers unconditionally; the surrogate ignores it
unless the schedule is ``step``, as the trainable does.

Resource = epochs, min 1, max max_t (24). The peers and their settings (library defaults
unless said; "rf" is the reduction factor):

random+fifo        Optuna RandomSampler via ask/tell, every trial trained to max_t.
optuna-tpe+sha     Optuna TPESampler (defaults: 10 start-up trials, univariate) with
                   SuccessiveHalvingPruner(min_resource=1, reduction_factor=4 [Optuna's
                   default], min_early_stopping_rate=0); ask/tell, trial.report each epoch,
                   should_prune -> tell PRUNED, a finished trial tells its last epoch's value.
optuna-tpe+hb      the same with HyperbandPruner(min_resource=1, max_resource=max_t,
                   reduction_factor=3 [default]); 3 brackets (Optuna's own count).
kt-hyperband       keras_tuner.oracles.HyperbandOracle(max_epochs=max_t, factor=3 [default],
                   hyperband_iterations=1000 so that the budget, not the iteration count,
                   ends the search); create_trial / update_trial / end_trial, a round>0 trial
                   resumes the checkpoint of ``tuner/trial_id`` and trains epochs
                   tuner/initial_epoch+1..tuner/epochs. Its minimum resource is not
                   settable: Keras Tuner derives it, ceil(24/3^2) = 3 epochs (rungs 3, 8, 24).
st-asha-stop       Syne Tune (0.14.2, legacy_baselines) ASHA type="stopping", grace_period=1,
                   reduction_factor=3, brackets=1 (defaults): rungs 1, 3, 9. All Syne Tune
                   peers: the scheduler API its Tuner drives (suggest, on_trial_add,
                   on_trial_result -> CONTINUE / PAUSE / STOP, on_trial_remove,
                   on_trial_complete) on a TimeKeeper that reads the replay's clock (as its
                   simulator backend does); searcher defaults, so the first trial is the
                   space's "midpoint" config and no config is suggested twice
                   (allow_duplicates=False): on the grid a searcher can run out.
st-asha-promote    the same, type="promotion" (paused trials resume their checkpoint).
st-hyperband       SyncHyperband (synchronous Hyperband): grace_period=1, reduction_factor=3,
                   all brackets (defaults): rungs 1, 3, 9, 24 (the last rung: max_t).
st-bohb            Syne Tune's BOHB: asynchronous, ASHA (stopping, rf 3, grace 1) + KDE
                   searcher (defaults).
st-mobster         MOBSTER: ASHA (stopping, rf 3, grace 1) + GP searcher (``gp_multitask``),
                   defaults.
st-hypertune       HyperTune: gp_independent (default), stopping, rf 3, grace 1, and
                   brackets = all 4 (its class defaults to 1 bracket, with which its bracket
                   distribution, the point of Hyper-Tune, has nothing to choose; its authors'
                   benchmark passes the bracket count).
st-dyhpo           DyHPO: type legacy_dyhpo, grace 1, rung_increment 2 (rungs 1, 3, 5, ...),
                   probability_sh and opt_skip_period=3 as the class sets them.
dehb               DEHB (0.1.2) ask/tell: min_fidelity=1, max_fidelity=max_t, eta=3 (default),
                   DE defaults (mutation 0.5, crossover 0.5, rand1_bin). Fidelities 2.67, 8,
                   24 epochs, run as ceil(): 3, 8, 24. As DEHB's own examples (and its budget
                   accounting) do, each job trains from scratch: a config promoted to 8
                   epochs trains epochs 1..8 again. Fitness = 1 - val_iou of the job's last epoch.
smac-mf            SMAC3 (2.4.1) MultiFidelityFacade (RF surrogate + Hyperband intensifier,
                   eta=3 default), min_budget=1, max_budget=max_t, ask/tell; n_trials from
                   SMAC's own get_n_trials_for_hyperband_multifidelity(B x max_t epochs), which
                   sizes its initial design (a quarter of n_trials). Budgets 2.67, 8, 24 run as
                   ceil() and from scratch, as DEHB; cost = 1 - val_iou of the last epoch.
smac-hb            SMAC3 HyperbandFacade (random configs + the same Hyperband intensifier).
one-epoch-topk     Egele et al. 2023 ("Is one epoch all you need for multi-fidelity HPO?"):
                   train N distinct random configs 1 epoch (N = half the budget, at most the
                   grid's size), then continue the top K by their epoch-1 val_iou from their
                   epoch-1 checkpoint to max_t, K = (budget - N) // (max_t - 1): the largest
                   that fits. Ties at epoch 1 keep the random sampling order.

``--space product`` also runs every peer in the product's space (bench/replay.py's shipped
strategy holds pos_share at 0.8-0.4: its ``ours`` and ``*/space`` rows search 24 of the 48
configs), rows NAME/space. ``--ours`` adds our strategies' rows from bench/replay.py's JSON
(default bench/atlas/replay-bB.json when its atlas and budget match), labelled with their
seeds, which may differ from the peers'; ``--from-json`` re-renders an earlier run's table
with other ``--ours`` rows, running nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import io
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Tiny GP / RF fits: BLAS threads only add overhead (and the machine runs other work).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np

from pneumotune.search.config import ParamSpec
from pneumotune.search.replay import (
    METRIC,
    AtlasBenchmark,
    Benchmark,
    load_atlas,
    summarise,
)

BENCH = Path(__file__).parent
WORKERS = 2

# --------------------------------------------------------------------------- benchmarks


def random_config(params: Sequence[ParamSpec], rng: np.random.Generator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in params:
        if p.choices is not None:
            out[p.name] = p.choices[int(rng.integers(len(p.choices)))]  # type: ignore[index]
        elif p.log:
            out[p.name] = float(np.exp(rng.uniform(np.log(p.low), np.log(p.high))))
        else:
            out[p.name] = float(rng.uniform(p.low, p.high))
        if p.integer and not p.choices is not None:
            out[p.name] = round(out[p.name])
    return out


# --------------------------------------------------------------------------- the replay


@dataclass
class Job:
    """Train ``config`` from epoch ``start`` (its checkpoint; 0: fresh) to epoch ``stop``."""

    config: dict[str, Any]
    start: int
    stop: int
    handle: Any = None  # the peer's own (a trial, a job_info, ...)
    last: float = math.nan  # the val_iou of the last epoch it reported (set by the replay)


class Peer(ABC):
    """A searcher under the replay's clock. ``now``: simulated seconds since the start."""

    @abstractmethod
    def suggest(self, now: float, worker: int) -> Job | None:
        """The next job for a free worker, or None to wait for a running job to end."""

    @abstractmethod
    def result(self, job: Job, epoch: int, value: float, now: float) -> bool:
        """An epoch's val_iou; False stops (or pauses) the job after this epoch."""

    @abstractmethod
    def finish(self, job: Job, epoch: int, now: float, stopped: bool) -> None:
        """The job ended at ``epoch``: it reached ``job.stop``, or ``result`` said stop."""

    plans_its_budget = False  # True: a fixed plan that may end before the budget is spent

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the library holds (files, log handlers)."""


@dataclass
class Run:
    seen: list[tuple[float, Hashable]]  # (val_iou, cell) of every reported epoch, in order
    jobs: int = 0
    exhausted: bool = False  # the peer stopped suggesting before the budget was spent
    planned: bool = False  # ... as its fixed plan may (Peer.plans_its_budget)


def replay(bench: Benchmark, peer: Peer, budget_epochs: int, workers: int = WORKERS) -> Run:
    """Run ``peer`` on ``bench`` until ``budget_epochs`` epochs were reported."""
    run = Run([])
    heap: list[tuple[float, int, int]] = []  # (time the worker's epoch ends, order, worker)
    running: dict[int, tuple[Job, int, Sequence[tuple[float, float]], Hashable]] = {}
    idle = list(range(workers))
    order = 0

    def fill(now: float) -> None:
        nonlocal order
        while idle:
            job = peer.suggest(now, idle[0])
            if job is None:
                return
            if not 0 <= job.start < job.stop <= bench.max_t:
                raise ValueError(f"{type(peer).__name__}: a job of epochs {job.start}..{job.stop}")
            worker = idle.pop(0)
            curve = bench.curve(job.config)
            running[worker] = (job, job.start + 1, curve, bench.key(job.config))
            heapq.heappush(heap, (now + curve[job.start][1], order, worker))
            order += 1
            run.jobs += 1

    fill(0.0)
    while heap:
        now, _, worker = heapq.heappop(heap)
        job, epoch, curve, cell = running[worker]
        value = curve[epoch - 1][0]
        run.seen.append((value, cell))
        if len(run.seen) >= budget_epochs:
            return run
        job.last = value
        go_on = peer.result(job, epoch, value, now)
        if go_on and epoch < job.stop:
            running[worker] = (job, epoch + 1, curve, cell)
            heapq.heappush(heap, (now + curve[epoch][1], order, worker))
            order += 1
            continue
        del running[worker]
        idle.append(worker)
        idle.sort()
        peer.finish(job, epoch, now, stopped=not go_on)
        fill(now)
    run.exhausted, run.planned = True, peer.plans_its_budget
    return run


# --------------------------------------------------------------------------- the peers


def fidelity_epochs(fidelity: float, max_t: int) -> int:
    """A library's real-valued fidelity (e.g. 24/9) as whole epochs: rounded up."""
    return min(max_t, max(1, math.ceil(fidelity - 1e-6)))


class OptunaPeer(Peer):
    def __init__(self, bench: Benchmark, seed: int, sampler: str, pruner: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.params, self.max_t = optuna, bench.params, bench.max_t
        samplers = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        }
        pruners = {
            "none": optuna.pruners.NopPruner,
            "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
            "hb": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=self.max_t),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature warnings
            self.study = optuna.create_study(
                # HyperbandPruner assigns brackets by a hash of the study's name: not a random one
                study_name=f"peers-{sampler}-{pruner}-s{seed}",
                direction="maximize",
                sampler=samplers[sampler](),
                pruner=pruners[pruner](),
            )

    def suggest(self, now: float, worker: int) -> Job:
        trial = self.study.ask()
        config = {}
        for p in self.params:
            if p.choices is not None:
                config[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.integer:
                config[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
            else:
                config[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        return Job(config, 0, self.max_t, trial)

    def result(self, job: Job, epoch: int, value: float, now: float) -> bool:
        job.handle.report(value, epoch)
        return not job.handle.should_prune()

    def finish(self, job: Job, epoch: int, now: float, stopped: bool) -> None:
        if stopped:
            self.study.tell(job.handle, state=self.optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(job.handle, job.last)


class KerasTunerHyperband(Peer):
    def __init__(self, bench: Benchmark, seed: int, workdir: Path) -> None:
        os.environ.setdefault("KERAS_BACKEND", "numpy")  # the oracle needs no training backend
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras_tuner as kt

        hp = kt.HyperParameters()
        for p in bench.params:
            if p.choices is not None:
                hp.Choice(p.name, list(p.choices))
            elif p.integer:
                hp.Int(p.name, int(p.low), int(p.high), sampling="log" if p.log else "linear")
            else:
                hp.Float(p.name, p.low, p.high, sampling="log" if p.log else "linear")
        self.oracle = kt.oracles.HyperbandOracle(
            objective=kt.Objective(METRIC, "max"),
            max_epochs=bench.max_t,
            hyperband_iterations=1000,
            seed=seed or 1_000_003,  # Keras Tuner takes seed 0 for "no seed" (a random one)
            hyperparameters=hp,
        )
        # Keras Tuner has no public setter: its own BaseTuner.__init__ makes this call
        # (1.4.8); the oracle writes its trials and state under that folder.
        self.oracle._set_project_dir(str(workdir), f"kt-{seed}")
        self.oracle.verbose = 0
        self.names = [p.name for p in bench.params]

    def suggest(self, now: float, worker: int) -> Job | None:
        trial = self.oracle.create_trial(f"worker{worker}")
        if trial.status != "RUNNING":  # IDLE: a round waits for results; STOPPED: done
            return None
        values = trial.hyperparameters.values
        config = {n: values[n] for n in self.names}
        return Job(config, values["tuner/initial_epoch"], values["tuner/epochs"], trial)

    def result(self, job: Job, epoch: int, value: float, now: float) -> bool:
        trial = self.oracle.update_trial(job.handle.trial_id, {METRIC: value}, step=epoch)
        return trial.status != "STOPPED"

    def finish(self, job: Job, epoch: int, now: float, stopped: bool) -> None:
        job.handle.status = "COMPLETED"
        self.oracle.end_trial(job.handle)


class SimulatedTimeKeeper:
    """Syne Tune's time keeper on the replay's clock (its simulator does the same)."""

    def __init__(self) -> None:
        self.now = 0.0

    def start_of_time(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def time_stamp(self) -> datetime:
        return datetime(2000, 1, 1) + timedelta(seconds=self.now)

    def advance(self, step: float) -> None:
        self.now += step


SYNE_TUNE = {  # peer name -> (legacy_baselines class, its keyword arguments)
    "st-asha-stop": ("ASHA", {"type": "stopping"}),
    "st-asha-promote": ("ASHA", {"type": "promotion"}),
    "st-hyperband": ("SyncHyperband", {}),
    "st-bohb": ("BOHB", {}),
    "st-mobster": ("MOBSTER", {}),
    "st-hypertune": ("HyperTune", {"brackets": "all"}),
    "st-dyhpo": ("DyHPO", {}),
}


class SyneTunePeer(Peer):
    """A Syne Tune scheduler driven as its Tuner drives it (suggest, on_trial_add,
    on_trial_result -> CONTINUE / PAUSE / STOP, on_trial_remove, on_trial_complete)."""

    def __init__(self, bench: Benchmark, seed: int, name: str) -> None:
        logging.getLogger("syne_tune").setLevel(logging.ERROR)
        if not hasattr(np, "NAN"):  # Syne Tune 0.14.2 (numpy<1.27) spells nan the numpy-1 way
            np.NAN = np.nan  # (SyncHyperband, when its searcher has no new config left)
        from syne_tune.backend.time_keeper import TimeKeeper
        from syne_tune.backend.trial_status import Trial
        from syne_tune.config_space import choice, lograndint, loguniform, randint, uniform
        from syne_tune.optimizer import legacy_baselines
        from syne_tune.optimizer.scheduler import SchedulerDecision

        space: dict[str, Any] = {}
        for p in bench.params:
            if p.choices is not None:
                space[p.name] = choice(list(p.choices))
            elif p.integer:
                space[p.name] = (lograndint if p.log else randint)(int(p.low), int(p.high))
            else:
                space[p.name] = (loguniform if p.log else uniform)(p.low, p.high)
        cls_name, kwargs = SYNE_TUNE[name]
        kwargs = dict(kwargs)
        if kwargs.get("brackets") == "all":  # one per rung below max_t (grace 1, rf 3) + max_t's
            kwargs["brackets"] = 1 + sum(1 for k in range(10) if 3**k < bench.max_t)
        resource = {"max_resource_level" if cls_name.startswith("Sync") else "max_t": bench.max_t}
        keeper = type("Keeper", (SimulatedTimeKeeper, TimeKeeper), {})()
        self.keeper = keeper
        self.scheduler = getattr(legacy_baselines, cls_name)(
            space,
            metric=METRIC,
            mode="max",
            resource_attr="epoch",
            random_seed=seed,
            **resource,
            **kwargs,
        )
        if hasattr(self.scheduler, "set_time_keeper"):  # (its constructor argument is broken)
            self.scheduler.set_time_keeper(keeper)
        self.Trial, self.decision = Trial, SchedulerDecision
        self.names = [p.name for p in bench.params]
        self.max_t = bench.max_t
        self.trials: dict[int, Any] = {}
        self.last_epoch: dict[int, int] = {}

    def suggest(self, now: float, worker: int) -> Job | None:
        self.keeper.now = now
        new_id = len(self.trials)
        suggestion = self.scheduler.suggest(new_id)
        if suggestion is None:
            return None
        if suggestion.spawn_new_trial_id:
            if suggestion.checkpoint_trial_id is not None:
                raise NotImplementedError("a new trial from another trial's checkpoint")
            trial = self.Trial(new_id, dict(suggestion.config), self.keeper.time_stamp())
            self.trials[new_id] = trial
            self.last_epoch[new_id] = 0
            self.scheduler.on_trial_add(trial)
        else:
            trial = self.trials[suggestion.checkpoint_trial_id]
            if suggestion.config is not None:
                trial.config = dict(suggestion.config)
        config = {n: trial.config[n] for n in self.names}
        return Job(config, self.last_epoch[trial.trial_id], self.max_t, trial)

    def result(self, job: Job, epoch: int, value: float, now: float) -> bool:
        self.keeper.now = now
        trial = job.handle
        self.last_epoch[trial.trial_id] = epoch
        decision = self.scheduler.on_trial_result(trial, {METRIC: value, "epoch": epoch})
        if decision == self.decision.CONTINUE:
            return True
        self.scheduler.on_trial_remove(trial)  # STOP or PAUSE: the Tuner removes it
        return False

    def finish(self, job: Job, epoch: int, now: float, stopped: bool) -> None:
        self.keeper.now = now
        if not stopped:  # ran to max_t: the Tuner tells the scheduler it completed
            self.scheduler.on_trial_complete(job.handle, {METRIC: job.last, "epoch": epoch})


class ConfigSpacePeer(Peer):
    """Shared by DEHB and SMAC: a ConfigSpace space and from-scratch fidelity jobs."""

    def __init__(self, bench: Benchmark, seed: int) -> None:
        from ConfigSpace import Categorical, ConfigurationSpace, Float, Integer

        self.cs = ConfigurationSpace(seed=seed)
        for p in bench.params:
            if p.choices is not None:
                self.cs.add(Categorical(p.name, list(p.choices)))
            elif p.integer:
                self.cs.add(Integer(p.name, (int(p.low), int(p.high)), log=p.log))
            else:
                self.cs.add(Float(p.name, (p.low, p.high), log=p.log))
        self.names = [p.name for p in bench.params]
        self.max_t = bench.max_t

    def config_of(self, configuration: Any) -> dict[str, Any]:
        return {n: configuration[n] for n in self.names}

    def result(self, job: Job, epoch: int, value: float, now: float) -> bool:
        return True


class DehbPeer(ConfigSpacePeer):
    def __init__(self, bench: Benchmark, seed: int, workdir: Path) -> None:
        super().__init__(bench, seed)
        from dehb import DEHB

        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.dehb = DEHB(
                cs=self.cs,
                min_fidelity=1,
                max_fidelity=bench.max_t,
                n_workers=1,  # ask/tell from our loop: no Dask client
                seed=seed,
                output_path=str(workdir / f"dehb-{seed}"),
                log_level="ERROR",
                save_freq="end",  # never: we do not call run()
            )
        self.seconds = 0.0

    def suggest(self, now: float, worker: int) -> Job:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = self.dehb.ask()
        epochs = fidelity_epochs(info["fidelity"], self.max_t)
        return Job(self.config_of(info["config"]), 0, epochs, {"info": info, "t0": now})

    def finish(self, job: Job, epoch: int, now: float, stopped: bool) -> None:
        h = job.handle
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.dehb.tell(h["info"], {"fitness": 1.0 - job.last, "cost": now - h["t0"]})

    def close(self) -> None:
        from loguru import logger

        logger.remove()  # DEHB adds a stdout and a file sink per instance


class SmacPeer(ConfigSpacePeer):
    def __init__(self, bench: Benchmark, seed: int, workdir: Path, facade: str, budget: int):
        super().__init__(bench, seed)
        import smac
        from smac.intensifier.hyperband_utils import get_n_trials_for_hyperband_multifidelity

        with contextlib.redirect_stdout(io.StringIO()):
            n_trials = get_n_trials_for_hyperband_multifidelity(
                total_budget=budget, min_budget=1, max_budget=bench.max_t, print_summary=False
            )
        scenario = smac.Scenario(
            self.cs,
            name=f"smac-{seed}",
            output_directory=workdir / f"smac-{seed}",
            deterministic=True,
            n_trials=n_trials,
            min_budget=1,
            max_budget=bench.max_t,
            seed=seed,
        )
        cls = {"mf": smac.MultiFidelityFacade, "hb": smac.HyperbandFacade}[facade]

        def unused(config: Any, seed: int = 0, budget: float = 1.0) -> float:
            raise RuntimeError("ask/tell only")

        self.smac = cls(
            scenario,
            unused,
            intensifier=cls.get_intensifier(scenario),
            overwrite=True,
            logging_level=logging.ERROR,
        )
        from smac.runhistory.dataclasses import TrialValue

        self.TrialValue = TrialValue
        self.n_trials = n_trials
        self.exhausted = False

    def suggest(self, now: float, worker: int) -> Job | None:
        from smac.main.exceptions import ConfigurationSpaceExhaustedException

        if self.exhausted:
            return None
        try:
            info = self.smac.ask()
        except (ConfigurationSpaceExhaustedException, StopIteration):  # the grid is used up
            self.exhausted = True  # (its generator raises the one, then the other)
            return None
        epochs = fidelity_epochs(info.budget, self.max_t)
        return Job(self.config_of(info.config), 0, epochs, {"info": info, "t0": now})

    def finish(self, job: Job, epoch: int, now: float, stopped: bool) -> None:
        h = job.handle
        value = self.TrialValue(cost=1.0 - job.last, time=now - h["t0"])
        self.smac.tell(h["info"], value, save=False)


class OneEpochTopK(Peer):
    plans_its_budget = True  # N + K (max_t - 1) <= the budget: it may end a few epochs early

    def __init__(self, bench: Benchmark, seed: int, budget: int) -> None:
        rng = np.random.default_rng(seed)
        grid = bench.grid()
        n = budget // 2
        if grid is not None:
            n = min(n, len(grid))
            configs = [grid[i] for i in rng.permutation(len(grid))[:n]]
        else:
            configs = [random_config(bench.params, rng) for _ in range(n)]
        self.k = (budget - n) // (bench.max_t - 1)  # all K run to max_t
        self.n, self.max_t = n, bench.max_t
        self.queue = [Job(c, 0, 1, i) for i, c in enumerate(configs)]
        self.screened: list[tuple[float, int, dict[str, Any]]] = []
        self.continued = False

    def suggest(self, now: float, worker: int) -> Job | None:
        if not self.queue and not self.continued and len(self.screened) == self.n:
            self.continued = True  # screening done: the top K resume their epoch-1 checkpoint
            ranked = sorted(self.screened, key=lambda x: (-x[0], x[1]))  # ties: sampling order
            self.queue = [Job(c, 1, self.max_t, i) for _, i, c in ranked[: self.k]]
        return self.queue.pop(0) if self.queue else None

    def result(self, job: Job, epoch: int, value: float, now: float) -> bool:
        if job.stop == 1:
            self.screened.append((value, job.handle, job.config))
        return True

    def finish(self, job: Job, epoch: int, now: float, stopped: bool) -> None:
        pass


# --------------------------------------------------------------------------- registry

Factory = Callable[[Benchmark, int, int, Path], Peer]  # (bench, seed, budget epochs, workdir)

PEERS: dict[str, Factory] = {
    "random+fifo": lambda b, s, n, d: OptunaPeer(b, s, "random", "none"),
    "optuna-tpe+sha": lambda b, s, n, d: OptunaPeer(b, s, "tpe", "sha"),
    "optuna-tpe+hb": lambda b, s, n, d: OptunaPeer(b, s, "tpe", "hb"),
    "kt-hyperband": lambda b, s, n, d: KerasTunerHyperband(b, s, d),
    **{name: (lambda b, s, n, d, _name=name: SyneTunePeer(b, s, _name)) for name in SYNE_TUNE},
    "dehb": lambda b, s, n, d: DehbPeer(b, s, d),
    "smac-mf": lambda b, s, n, d: SmacPeer(b, s, d, "mf", n),
    "smac-hb": lambda b, s, n, d: SmacPeer(b, s, d, "hb", n),
    "one-epoch-topk": lambda b, s, n, d: OneEpochTopK(b, s, n),
}

SETTINGS = {  # one line each for the JSON and the markdown; the module docstring says why
    "random+fifo": "Optuna RandomSampler, every trial to max_t",
    "optuna-tpe+sha": "Optuna TPE + SuccessiveHalvingPruner(min_resource=1, rf=4)",
    "optuna-tpe+hb": "Optuna TPE + HyperbandPruner(min_resource=1, max_resource=max_t, rf=3)",
    "kt-hyperband": "Keras Tuner HyperbandOracle(max_epochs=max_t, factor=3): rungs 3, 8, 24",
    "st-asha-stop": "Syne Tune ASHA stopping, grace 1, rf 3",
    "st-asha-promote": "Syne Tune ASHA promotion, grace 1, rf 3",
    "st-hyperband": "Syne Tune SyncHyperband, grace 1, rf 3, all brackets",
    "st-bohb": "Syne Tune BOHB (async, KDE), stopping, grace 1, rf 3",
    "st-mobster": "Syne Tune MOBSTER (gp_multitask), stopping, grace 1, rf 3",
    "st-hypertune": "Syne Tune HyperTune (gp_independent), stopping, grace 1, rf 3, 4 brackets",
    "st-dyhpo": "Syne Tune DyHPO, grace 1, rung_increment 2",
    "dehb": "DEHB, fidelity 1..max_t, eta 3 (runs 3, 8, 24 epochs from scratch)",
    "smac-mf": "SMAC3 MultiFidelityFacade, budget 1..max_t, eta 3 (from scratch)",
    "smac-hb": "SMAC3 HyperbandFacade, budget 1..max_t, eta 3 (from scratch)",
    "one-epoch-topk": "N configs 1 epoch (N = budget/2, <= grid), top K to max_t",
}


def run_peer(
    bench: Benchmark, name: str, seeds: Sequence[int], budget: int, workdir: Path
) -> tuple[list[Run], dict[str, Any]]:
    epochs = budget * bench.max_t
    runs = []
    t0 = time.perf_counter()
    for seed in seeds:
        folder = workdir / f"{name}-s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        random.seed(seed)  # for a library that draws from the global generators
        np.random.seed(seed)
        quiet = contextlib.redirect_stdout(io.StringIO())  # the libraries' progress lines
        with quiet, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecations, KDE's degenerate bandwidths
            peer = PEERS[name](bench, seed, epochs, folder)
            try:
                runs.append(replay(bench, peer, epochs))
            finally:
                peer.close()
        shutil.rmtree(folder, ignore_errors=True)
    summary = summarise(bench, [r.seen for r in runs])  # type: ignore[arg-type]
    summary["within"] = summary["runs"] - summary["never_within"]
    summary["mean_jobs"] = round(statistics.fmean(r.jobs for r in runs), 1)
    summary["exhausted"] = sum(r.exhausted for r in runs)
    summary["median_epochs_used"] = statistics.median(len(r.seen) for r in runs)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["seeds"] = [seeds[0], seeds[-1]]
    summary["settings"] = SETTINGS[name]
    return runs, summary


# --------------------------------------------------------------------------- output


def our_rows(path: Path | None, budget: int, atlas_name: str) -> dict[str, Any]:
    """bench/replay.py's rows (its JSON), when it is for this atlas and budget."""
    if path is None or not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("budget") != budget or data.get("atlas", {}).get("path") != atlas_name:
        print(f"(not adding {path}: another atlas or budget)", file=sys.stderr)
        return {}
    first, last = data["seeds"]
    rows = {}
    for name, r in data["strategies"].items():
        r = dict(r, within=r["runs"] - r["never_within"], source=f"{path.name}")
        rows[f"{name} [ours, seeds {first}-{last}]"] = r
    return rows


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    base = results.get("random+fifo", {}).get("median_regret")
    rows = []
    for name, r in results.items():
        to_best = r["median_epochs_to_best"]
        rows.append(
            [
                name,
                f"{r['median_regret']:.4f} [{r['q25_regret']:.4f}, {r['q75_regret']:.4f}]",
                f"{r['median_regret'] / base:.2f}" if base else "-",
                f"{r['within']}/{r['runs']}",
                "never" if to_best is None else f"{to_best:g}",
                f"{r['median_picked_final']:.4f}",
                str(r.get("exhausted", "-")),
                f"{r['median_epochs_used']:g}" if "median_epochs_used" in r else "-",
                f"{r['seconds']:g}" if "seconds" in r else "-",
            ]
        )
    return rows


HEADER = [
    "searcher",
    "regret median [q25, q75]",
    "/ random+fifo",
    "within 0.01",
    "epochs to 0.01",
    "picked final",
    "ended early",
    "epochs used",
    "seconds",
]


def print_table(results: dict[str, Any], title: str) -> None:
    rows = [HEADER, *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    print(f"\n{title}")
    for r in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def markdown(results: dict[str, Any], title: str, notes: Sequence[str]) -> str:
    lines = [f"### {title}", ""]
    lines.append("| " + " | ".join(HEADER) + " | settings |")
    lines.append("|" + "---|" * (len(HEADER) + 1))
    for name, row in zip(results, table_rows(results), strict=True):
        settings = results[name].get("settings", "bench/replay.py")
        lines.append("| " + " | ".join([*row, settings]) + " |")
    lines += ["", *notes, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--atlas", type=Path, default=BENCH / "atlas" / "synth64.csv")
    parser.add_argument("--seeds", type=int, default=20, help="searches per peer")
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--budget", type=int, default=4, help="full trainings (default 4)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        choices=list(PEERS),
        help=f"peers to run, of: {', '.join(PEERS)}",
    )
    parser.add_argument(
        "--peer-seeds",
        nargs="+",
        default=[],
        metavar="NAME=N",
        help="fewer seeds for slow peers: NAME runs the first N of the seeds",
    )
    parser.add_argument(
        "--surrogate",
        default=None,
        metavar="SPACE_ATLAS_CSV[:N]",
        help="replay on bench/surrogate.py's model of this continuous-space atlas (demo.yaml's "
        "space) instead of --atlas; --space does not apply",
    )
    parser.add_argument(
        "--space",
        nargs="+",
        default=["grid"],
        choices=["grid", "product"],
        help="grid: every atlas axis searched (default); product: the product's space, as "
        "bench/replay.py's shipped strategy (its fixed axes held), rows named NAME/space",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        metavar="PEERS_JSON",
        help="run nothing: take the peers' rows from these earlier --json files (a later "
        "file's row replaces an earlier one's), e.g. to add --ours rows",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    parser.add_argument(
        "--ours",
        nargs="+",
        default=["auto"],
        metavar="REPLAY_JSON",
        help="bench/replay.py's JSON(s) to add our rows from; 'auto' (default): "
        "bench/atlas/replay-bB.json if it exists for this atlas and budget; 'none'",
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="every peer (or --only) for 1 seed at budget 2, checking the replay's invariants",
    )
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.seeds, args.budget = 1, 2
    names = args.only or list(PEERS)
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    fewer = {}
    for spec in args.peer_seeds:
        name, _, n = spec.partition("=")
        if name not in PEERS or not n.isdigit():
            parser.error(f"--peer-seeds {spec}: NAME=N with NAME one of {', '.join(PEERS)}")
        fewer[name] = int(n)

    # bench/replay.py: the same atlas facts in the JSON, the same product space
    from replay import TUTORIAL, atlas_facts, shipped_strategy

    if args.surrogate:  # one space: demo.yaml's own, rows without a /space suffix
        from surrogate import load_surrogate

        surrogate = load_surrogate(args.surrogate)
        benches: dict[str, Benchmark] = {"grid": surrogate}
        spaces: dict[str, tuple] = {"grid": ()}
        facts, label = surrogate.facts(), surrogate.name
        args.space = ["grid"]
    else:
        atlas = load_atlas(args.atlas, TUTORIAL)
        spaces = {"grid": (), "product": shipped_strategy().fixed}
        benches = {
            space: AtlasBenchmark(atlas, name=args.atlas.name, fixed=fixed)
            for space, fixed in spaces.items()
        }
        facts, label = atlas_facts(atlas, args.atlas), args.atlas.name
    any_bench = benches["grid"]
    epochs = args.budget * any_bench.max_t
    if not args.from_json:
        print(
            f"{label}: {facts['configs']} configs x {any_bench.max_t} epochs, best "
            f"{METRIC} {any_bench.best:.4f}; budget {args.budget} x {any_bench.max_t} "
            f"trial-epochs, {WORKERS} workers, seeds {seeds[0]}..{seeds[-1]}",
            flush=True,
        )
    results: dict[str, Any] = {}
    failures = []
    if args.from_json:  # re-render earlier runs' rows (e.g. with other --ours rows)
        names, spaces_seen = [], {}
        for path in args.from_json:
            earlier = json.loads(path.read_text())
            if earlier["budget"] != args.budget or earlier["atlas"]["path"] != facts["path"]:
                parser.error(f"--from-json {path}: another atlas or budget")
            if seeds and [seeds[0], seeds[-1]] != earlier["seeds"] and results:
                parser.error(f"--from-json {path}: other seeds than {seeds[0]}-{seeds[-1]}")
            seeds = list(range(earlier["seeds"][0], earlier["seeds"][1] + 1))
            results.update(earlier["peers"])
            spaces_seen.update(earlier["spaces"])
        order = {name: i for i, name in enumerate(PEERS)}  # the registry's order, grid first
        results = dict(
            sorted(
                results.items(),
                key=lambda kv: (kv[0].endswith("/space"), order.get(kv[0].split("/")[0], 99)),
            )
        )
        args.space = list(spaces_seen)
    workdir = Path(tempfile.mkdtemp(prefix="pneumotune-peers-"))
    try:
        for space in args.space if names else ():
            bench = benches[space]
            for name in names:
                row = name if space == "grid" else f"{name}/space"
                its_seeds = seeds[: fewer.get(name, len(seeds))]
                runs, results[row] = run_peer(bench, name, its_seeds, args.budget, workdir)
                results[row]["fixed"] = dict(spaces[space])
                print(f"  {row:16} {json.dumps(results[row])}", flush=True)
                if args.smoke_test:
                    failures += smoke_failures(row, runs, epochs, bench)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ours: dict[str, Any] = {}
    for spec in [] if args.smoke_test else args.ours:
        if spec == "none":
            continue
        auto = f"replay-{'surrogate-' if args.surrogate else ''}b{args.budget}.json"
        path = BENCH / "atlas" / auto if spec == "auto" else Path(spec)
        ours.update(our_rows(path, args.budget, facts["path"]))
    title = (
        f"{label}, budget {args.budget} x {any_bench.max_t} trial-epochs, {WORKERS} "
        f"workers, seeds {seeds[0]}-{seeds[-1]}: regret = best {any_bench.best:.4f} - best "
        f"val_iou seen"
    )
    print_table({**results, **ours}, title)
    if args.json:
        out = {
            "budget": args.budget,
            "seeds": [seeds[0], seeds[-1]],
            "workers": WORKERS,
            "atlas": facts,
            "versions": versions(),
            "spaces": {space: dict(spaces[space]) for space in args.space},
            "peers": results,
            "ours": ours,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        notes = [
            f"Regret: the atlas best minus the best val_iou a search saw in {epochs} reported "
            f"trial-epochs ({args.budget} x max_t), {WORKERS} concurrent trials on the recorded "
            "epoch seconds; median [q25, q75] over seeds. Within 0.01: seeds that came within "
            "0.01 of the atlas best; epochs to 0.01: median trial-epochs until then (never "
            "counts as infinite). / random+fifo: median regret over that of the peers' "
            "random+fifo on the full grid. Picked final: median full-length score of the "
            "config each search saw its best value from. Ended early: seeds whose searcher stopped "
            "suggesting before the budget was spent (no config left that it would repeat, or "
            "a fixed plan done); epochs used: their median trial-epochs. Seconds: this "
            "machine's wall time for all seeds (a shared 2-core machine: indicative only).",
            "Rows marked [ours, ...] are bench/replay.py's, through Ray Tune, on the seeds shown.",
        ]
        if "product" in args.space:
            held = ", ".join(f"{a} = {v}" for a, v in spaces["product"])
            notes.append(
                f"Rows NAME/space search the product's space ({held}: bench/replay.py's shipped "
                "strategy, as its `ours` and `*/space` rows); the regret's reference stays the "
                "whole atlas's best."
            )
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown({**results, **ours}, title, notes))
        print(f"wrote {args.markdown}")
    for failure in failures:
        print(f"SMOKE TEST FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def smoke_failures(row: str, runs: Sequence[Run], epochs: int, bench: Benchmark) -> list[str]:
    out = []
    cells = {bench.key(c): c for c in bench.grid() or ()}  # a grid: key -> config
    for run in runs:
        if not run.exhausted and len(run.seen) != epochs:
            out.append(f"{row}: {len(run.seen)} epochs, not {epochs}")
        if run.exhausted and not run.planned:
            out.append(f"{row}: stopped suggesting at {len(run.seen)} epochs")
        for value, cell in run.seen:
            if cells and cell not in cells:
                out.append(f"{row}: {cell} is not a config of the space searched")
                continue
            config = cells.get(cell) or dict(
                zip((p.name for p in bench.params), cell, strict=True)  # type: ignore[arg-type]
            )
            if value not in [v for v, _ in bench.curve(config)]:
                out.append(f"{row}: {value} is not on {cell}'s curve")
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("optuna", "keras-tuner", "syne-tune", "dehb", "smac", "ConfigSpace"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":
        # SMAC3 iterates sets of configurations, so its choices follow str hashes: a fixed
        # hash seed makes every peer's run a function of its seed alone.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sys.exit(main())
