"""Replay a search strategy on recorded learning curves (an atlas), through Ray Tune.

An atlas is a CSV of learning curves recorded once (bench/atlas.py trains a grid of
configs to max_t with the product's own trainable): ``config_id``, one column per axis
(the level labels), ``seed``, ``epoch``, ``val_iou`` (and the other val metrics),
``epoch_seconds``. A replay runs the product's real Tuner (:func:`build_tuner`: the
searcher class, Optuna's sampler, ASHA or FIFO, the tutorial's point first) with a
trainable that trains nothing: given a config of the grid it reports that config's
recorded curve, each epoch after its recorded seconds x ``scale``, so that concurrent
trials end, and ASHA decides, in the order the real run would. A config recorded with
several seeds replays its first seed's curve (the others measure the noise; a replay's
numbers do not change while an atlas gains repeats). With promotion ASHA
(``Strategy.mode="promote"``: the product's :class:`search.promotion.PromotionScheduler`)
the replayed trial reports a checkpoint (its epoch) each epoch and a paused trial resumes
from it, as a real trial resumes from its model; the restore's cost is not replayed (the
budget counts epochs, not seconds).

The measure of a search is its regret: the atlas's best val_iou (over all configs and
epochs) minus the best val_iou it saw within its budget of ``budget x max_t``
trial-epochs. bench/replay.py compares strategies over many seeds.

What a replay needs of its curves is :class:`Benchmark`: a space of the product's own
:class:`ParamSpec` and the curve of any config in it. :class:`AtlasBenchmark` is a grid
atlas (categorical axes, recorded curves); bench/surrogate.py's is a model fitted on a
continuous-space atlas, so that a search can propose any point of demo.yaml's space.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pneumotune.search.config import ParamSpec

from ray import tune

NEAR = 0.01  # "came within 0.01 of the atlas best"
METRIC = "val_iou"


class EpochBudget(tune.Stopper):
    """A Tune stopper: the whole search ends once ``epochs`` epochs were reported."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.seen = epochs, 0

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.seen += 1
        return False

    def stop_all(self) -> bool:
        return self.seen >= self.epochs


# --------------------------------------------------------------------------- the atlas


@dataclass(frozen=True)
class Atlas:
    axes: tuple[str, ...]
    levels: dict[str, tuple[str, ...]]  # each axis' levels, in the CSV's order
    # (level per axis) -> one curve per recorded seed: [(val_iou, epoch_seconds), ...]
    curves: dict[tuple[str, ...], list[list[tuple[float, float]]]]
    max_t: int
    tutorial: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> float:
        return max(v for runs in self.curves.values() for c in runs for v, _ in c)

    def final(self, key: tuple[str, ...]) -> float:
        """A config's full-length score: its best epoch, averaged over recorded seeds."""
        return statistics.fmean(max(v for v, _ in c) for c in self.curves[key])


def load_atlas(path: Path, tutorial: dict[str, str] | None = None) -> Atlas:
    """Read an atlas CSV (columns: config_id, one per axis, seed, epoch, val_iou, ...,
    epoch_seconds). ``tutorial``: the tutorial's level on every axis, kept when the atlas
    has that config."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    header = list(rows[0])
    axes = tuple(header[header.index("config_id") + 1 : header.index("seed")])
    runs: dict[tuple[tuple[str, ...], str], list[tuple[int, float, float]]] = defaultdict(list)
    for r in rows:
        key = tuple(r[a] for a in axes)
        runs[key, r["seed"]].append((int(r["epoch"]), float(r[METRIC]), float(r["epoch_seconds"])))
    max_t = max(len(v) for v in runs.values())
    curves: dict[tuple[str, ...], list[list[tuple[float, float]]]] = defaultdict(list)
    for (key, _seed), epochs in runs.items():  # the CSV's order: levels as recorded
        if len(epochs) == max_t:  # a run cut short (an atlas still growing) is left out
            curves[key].append([(v, s) for _, v, s in sorted(epochs)])
    levels = {a: tuple(dict.fromkeys(k[i] for k in curves)) for i, a in enumerate(axes)}
    grid = math.prod(len(v) for v in levels.values())
    if len(curves) != grid:  # a searcher could propose a config nobody recorded
        raise ValueError(
            f"{path}: {len(curves)} of the grid's {grid} configs have a full curve of "
            f"{max_t} epochs; a replay needs them all (an atlas still being recorded?)"
        )
    known = tutorial is not None and all(tutorial.get(a) in levels[a] for a in axes)
    return Atlas(axes, levels, dict(curves), max_t, dict(tutorial) if known else {})


def spearman_by_epoch(atlas: Atlas) -> dict[int, float]:
    """Rank correlation, over configs, of each epoch's score with the full-length score."""
    from scipy.stats import spearmanr

    keys = sorted(atlas.curves)
    final = [atlas.final(k) for k in keys]
    out = {}
    for epoch in range(1, atlas.max_t + 1):
        at = [statistics.fmean(c[epoch - 1][0] for c in atlas.curves[k]) for k in keys]
        rho = spearmanr(at, final).statistic
        out[epoch] = round(float(rho), 3) if not math.isnan(rho) else None
    return out


# --------------------------------------------------------------------------- benchmarks


class Benchmark(Protocol):
    """What a replay needs of its curves: a space and the curve of any config in it."""

    name: str
    params: tuple[ParamSpec, ...]  # the searched space
    max_t: int
    best: float  # the regret's reference: the best val_iou of the benchmark
    tutorial: dict[str, Any]  # the tutorial's point in ``params`` ({}: none)

    def curve(self, config: Mapping[str, Any]) -> Sequence[tuple[float, float]]:
        """``(val_iou, epoch_seconds)`` of epochs 1..max_t of ``config``."""
        ...

    def key(self, config: Mapping[str, Any]) -> Hashable:
        """The cell a run records for ``config`` (what :meth:`final` takes)."""
        ...

    def final(self, key: Hashable) -> float:
        """The full-length score of a config (its best epoch)."""
        ...

    def grid(self) -> list[dict[str, Any]] | None:
        """Every config of a finite space, or None for a continuous one."""
        ...


@dataclass
class AtlasBenchmark:
    """A grid atlas as a :class:`Benchmark`: categorical axes, the recorded curves (the first
    seed's). ``fixed``: axes held at one level, not searched (``Strategy.fixed``: the
    product's space); the regret's reference stays the whole atlas's best."""

    atlas: Atlas
    name: str = "atlas"
    fixed: tuple[tuple[str, str], ...] = ()
    params: tuple[ParamSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        from pneumotune.search.config import ParamSpec

        held = dict(self.fixed)
        self.params = tuple(
            ParamSpec(a, choices=self.atlas.levels[a]) for a in self.atlas.axes if a not in held
        )

    @property
    def max_t(self) -> int:
        return self.atlas.max_t

    @property
    def best(self) -> float:
        return self.atlas.best

    @property
    def tutorial(self) -> dict[str, Any]:
        """The tutorial's point in this space: a held axis keeps its level, as the product
        moves a tutorial value its space lacks to the space's default."""
        held = dict(self.fixed)
        return {a: v for a, v in self.atlas.tutorial.items() if a not in held}

    def key(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        held = dict(self.fixed)
        return tuple(str(held[a] if a in held else config[a]) for a in self.atlas.axes)

    def curve(self, config: Mapping[str, Any]) -> list[tuple[float, float]]:
        return self.atlas.curves[self.key(config)][0]

    def final(self, key: Hashable) -> float:
        return self.atlas.final(key)  # type: ignore[arg-type]

    def grid(self) -> list[dict[str, Any]]:
        held = dict(self.fixed)
        out = []
        for k in self.atlas.curves:
            config = dict(zip(self.atlas.axes, k, strict=True))
            if all(config[a] == level for a, level in held.items()):
                out.append({a: v for a, v in config.items() if a not in held})
        return out


# --------------------------------------------------------------------------- replay


def replay_trial(config: dict[str, Any], bench: Benchmark, scale: float, checkpoints: bool = False):
    """A Tune function trainable: the benchmark's curve of ``config``, from the epoch after
    its checkpoint's when Tune resumes it. ``checkpoints``: report one (the epoch) each
    epoch, for a scheduler that pauses trials (a stopping one needs none)."""
    curve = bench.curve(config)
    start = 0
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            start = int((Path(d) / "epoch").read_text())
    for epoch, (value, seconds) in enumerate(curve[start:], start + 1):
        time.sleep(seconds * scale)
        metrics = {METRIC: value, "epoch": epoch, "epoch_seconds": seconds, "resumed_from": start}
        if not checkpoints:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory(prefix="pneumotune-replay-ckpt-") as d:
            (Path(d) / "epoch").write_text(str(epoch))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


@dataclass(frozen=True)
class Strategy:
    sampler: str  # tpe | random | gp
    asha: bool
    fidelity: bool = True  # FidelityOptunaSearch (ours) or Ray's stock OptunaSearch
    tutorial: bool = False  # the tutorial's point first, as the product does
    grace: int | None = None  # None: the shipped demo.yaml's
    reduction: float | None = None
    mode: str = "stop"  # ASHA's: stop (Ray's ASHAScheduler) | promote (search.promotion)
    startup: int | None = None  # TPE start-up trials; None: the experiment's rule
    # Axes held at one level, not searched: the product's space may lack an atlas level
    # (demo.yaml always schedules the positive share, so it never trains "natural").
    fixed: tuple[tuple[str, str], ...] = ()


def run_one(
    bench: Benchmark | Atlas,
    strategy: Strategy,
    seed: int,
    budget: int,
    scale: float,
    workdir: Path,
):
    """One search on a running Ray: ``(value, key)`` of every epoch it reported, in order,
    up to ``budget`` x max_t of them (``key``: the benchmark's, for a grid atlas the cell,
    a tuple of levels). An :class:`Atlas` is replayed as an :class:`AtlasBenchmark` with
    the strategy's fixed axes."""
    from pneumotune.search.config import AshaSettings, ExperimentConfig
    from pneumotune.search.tuner import SearchPlan, build_tuner, quiet_tune_output

    if isinstance(bench, Atlas):
        bench = AtlasBenchmark(bench, fixed=strategy.fixed)
    epochs = budget * bench.max_t
    asha = AshaSettings(
        grace_period=strategy.grace or 1,
        reduction_factor=strategy.reduction or 2,
        mode=strategy.mode,
    )
    exp = ExperimentConfig(
        name="replay",
        epochs=bench.max_t,
        num_samples=10 * epochs,  # the budget ends the search, not the sample count
        max_concurrent=2,
        seed=seed,
        startup_trials=strategy.startup,
        asha=asha,
        fixed=dict(getattr(bench, "fixed", ())),
        space=bench.params,
    )
    if strategy.startup is None:
        # The experiment's rule (a quarter of num_samples) assumes num_samples is what the
        # budget buys: here the budget buys ~2B ASHA trials or B FIFO trials.
        trials = budget * (3 if strategy.asha else 1)
        exp = replace(exp, startup_trials=min(10, max(2, trials // 4)))
    point = dict(bench.tutorial) if strategy.tutorial else {}
    plan = SearchPlan(exp, workdir, f"s{seed}", workdir, point, ())
    recorded: list[tuple[float, Hashable]] = []

    class Record(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if len(recorded) < epochs:
                recorded.append((float(result[METRIC]), bench.key(trial.config)))

    paused = strategy.asha and strategy.mode == "promote"  # its trials resume from checkpoints
    trainable = tune.with_resources(
        tune.with_parameters(replay_trial, bench=bench, scale=scale, checkpoints=paused),
        {"cpu": 0.5},
    )
    tuner = build_tuner(
        plan,
        trainable,
        sampler=strategy.sampler,
        early_stopping=strategy.asha,
        fidelity=strategy.fidelity,
        stop=EpochBudget(epochs),
        callbacks=[Record()],
        reuse_actors=True,  # a replayed trial starts in milliseconds, not a new process
    )
    quiet_tune_output()
    with contextlib.redirect_stdout(io.StringIO()):  # the progress lines of ~100 searches
        tuner.fit()
    return recorded


def summarise(bench: Benchmark | Atlas, runs: list[list[tuple[float, Hashable]]]) -> dict[str, Any]:
    """Over ``runs`` (from :func:`run_one`): regret quartiles, trial-epochs to within NEAR
    of the atlas best, and the full-length score of the config each search would pick
    (the one it saw its best value from)."""
    regrets, to_best, picked = [], [], []
    for seen in runs:
        best_value, best_cell = max(seen, key=lambda x: x[0])
        regrets.append(bench.best - best_value)
        picked.append(bench.final(best_cell))
        reached = next((i + 1 for i, (v, _) in enumerate(seen) if v >= bench.best - NEAR), None)
        to_best.append(math.inf if reached is None else reached)
    q = statistics.quantiles(regrets, n=4, method="inclusive") if len(regrets) > 1 else regrets * 3
    median_epochs = statistics.median(to_best)
    return {
        "median_regret": round(statistics.median(regrets), 4),
        "q25_regret": round(q[0], 4),
        "q75_regret": round(q[2], 4),
        "median_epochs_to_best": None if math.isinf(median_epochs) else median_epochs,
        "never_within": sum(math.isinf(x) for x in to_best),
        "median_picked_final": round(statistics.median(picked), 4),
        "runs": len(runs),
    }
