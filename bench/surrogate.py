"""A surrogate benchmark: the learning curve of any point of demo.yaml's space, fitted on
the continuous-space atlas (bench/atlas.py --space demo), so that a replayed search can
propose points nobody trained, as the product does.

    python bench/surrogate.py [--atlas bench/atlas/space32.csv] [--configs N] [--folds 10]
                              [--json OUT]

prints (and writes as JSON) how well the surrogate predicts configs it was not fitted on:
``--folds``-fold cross-validation over the atlas's configs (seed-0 curves), the rank
correlation (Spearman) of predicted vs recorded scores at epoch 24 and at the best epoch,
for the model used and for a tree ensemble beside it; and whether the surrogate keeps the
property multi-fidelity methods live on, how well epoch 1 ranks configs by their final
score (recorded vs predicted).

The model: one Gaussian process over the space (Matern 5/2, one length scale per input,
plus white noise; scikit-learn, hyperparameters fitted by maximum likelihood), all
``max_t`` epochs as outputs sharing the kernel. Inputs: a numeric param's position in its
range, in [0, 1] (in log for ``log`` params); a categorical param one 0/1 column per choice
(one column for two choices). A conditional param that is inactive (``step_gamma``
without ``schedule: step``) sits at its default's position: the trainable ignores it, and
so does the model (the atlas trained such configs without it). A curve is the GP's mean:
no seed noise (the atlas's repeats measure it; a replay of the grid atlas also replays
one curve per config). Epoch seconds: the atlas's mean at that epoch for the config's
``base_filters``.

``best`` (the regret's reference) is the highest predicted value over 2^14 scrambled-Sobol
points of the space and the atlas's own configs. bench/replay.py and bench/peers.py take
``--surrogate CSV[:N]`` to replay on it.

The atlas grows while it is built (its configs are trained in design order), so a
surrogate is named by the atlas and how many of its first configs it is fitted on:
``space32.csv:64`` is configs 0-63 (seed 0), whatever the CSV holds beyond them; the same
spec gives the same surrogate on any later CSV. A run whose epochs were lost when an atlas
session ended (written with the hole, see bench/atlas.py) is left out of the fit and named
(``left_out`` in the facts and the JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import warnings
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumotune.search.config import ParamSpec
from pneumotune.search.replay import METRIC

ATLAS = Path(__file__).parent / "atlas" / "space32.csv"
EXPERIMENT = "demo"  # the space the atlas was designed in (bench/atlas.py --space demo)
BEST_SAMPLE = 2**14


def space(experiment: str = EXPERIMENT) -> tuple[ParamSpec, ...]:
    """The experiment's searched params, img_size excluded (the atlas holds it fixed)."""
    from pneumotune.search.config import load_experiment

    return tuple(p for p in load_experiment(experiment).space if p.name != "img_size")


def features(params: Sequence[ParamSpec], config: Mapping[str, Any]) -> list[float]:
    """``config`` as the model's inputs (see the module docstring)."""
    out: list[float] = []
    active: dict[str, Any] = {}
    for p in params:
        value = config.get(p.name)
        on = p.active(active) and value not in (None, "")
        if on:
            active[p.name] = value
        if p.choices is not None:
            text = str(value if on else p.resolved_default())
            names = [str(c) for c in p.choices]
            if text not in names:
                raise ValueError(f"{p.name}={value!r} is not one of {names}")
            hot = [1.0 if text == c else 0.0 for c in names]
            out += hot[1:] if len(names) == 2 else hot
            continue
        x = float(value) if on else float(p.resolved_default())
        low, high = float(p.low), float(p.high)  # type: ignore[arg-type]
        if p.log:
            x, low, high = math.log(x), math.log(low), math.log(high)
        out.append((x - low) / (high - low))
    return out


@dataclass
class Runs:
    """The atlas's complete runs: per (config_id, seed) the training values and the curve."""

    configs: dict[int, dict[str, str]] = field(default_factory=dict)
    curves: dict[tuple[int, int], list[tuple[float, float]]] = field(default_factory=dict)
    max_t: int = 0
    # Runs that reached max_t with epochs lost when an atlas session ended (bench/atlas.py's
    # export_csv): recorded, but left out of the fit. (config_id, seed) -> the lost epochs.
    holed: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    def seed0(self) -> list[int]:
        return sorted(c for c, s in self.curves if s == 0)


def read_runs(path: Path, params: Sequence[ParamSpec], configs: int | None = None) -> Runs:
    """The atlas's complete runs of config_id < ``configs`` (None: all)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = [p.name for p in params if p.name not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no column for {missing}: not an atlas of this space")
    epochs: dict[tuple[int, int], list[tuple[int, float, float]]] = defaultdict(list)
    values: dict[int, dict[str, str]] = {}
    for r in rows:
        key = (int(r["config_id"]), int(r["seed"]))
        if configs is not None and key[0] >= configs:
            continue
        values[key[0]] = {p.name: r[p.name] for p in params}
        epochs[key].append((int(r["epoch"]), float(r[METRIC]), float(r["epoch_seconds"])))
    from atlas import lost_epochs  # bench/atlas.py: what a complete run is

    max_t = max(epoch for e in epochs.values() for epoch, _, _ in e)
    curves, holed = {}, {}
    for key, e in epochs.items():
        seen = {epoch for epoch, _, _ in e}
        lost = lost_epochs(seen, max_t)
        if not lost and len(e) == max_t:
            curves[key] = [(v, s) for _, v, s in sorted(e)]
        elif lost and max_t in seen:
            holed[key] = lost
    return Runs(values, curves, max_t, holed)


def gp_model(inputs: int) -> Any:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = ConstantKernel(0.01) * Matern(
        length_scale=np.ones(inputs), length_scale_bounds=(0.05, 100.0), nu=2.5
    ) + WhiteKernel(1e-3, (1e-6, 1e-1))
    return GaussianProcessRegressor(
        kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0
    )


def trees_model(inputs: int) -> Any:
    from sklearn.ensemble import ExtraTreesRegressor

    return ExtraTreesRegressor(300, min_samples_leaf=2, random_state=0)


def bench_name(path: Path, configs: int) -> str:
    """The surrogate's name: the atlas and the ``N`` of ``CSV:N`` (its first N configs,
    fitted on those of them with complete curves)."""
    return f"surrogate:{path.name}:{configs}"


def fitted_ids(runs: Runs, path: Path, upto: int | None) -> tuple[list[int], list[int]]:
    """The seed-0 configs a surrogate of ``CSV:upto`` is fitted on, and those it leaves out
    (epochs lost: :attr:`Runs.holed`); ValueError while configs below ``upto`` are still
    to be recorded."""
    ids = runs.seed0()
    left_out = sorted(c for c, seed in runs.holed if seed == 0)
    if upto is not None and sorted(ids + left_out) != list(range(upto)):
        raise ValueError(
            f"{path}: configs 0-{upto - 1} are not all complete ({len(ids)} are): the atlas "
            "has not recorded them yet"
        )
    return ids, left_out


MODELS = {"gaussian-process": gp_model, "extra-trees": trees_model}
USED = "gaussian-process"


def fit(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a length scale at its bound: an unimportant input
        return model.fit(x, y)


@dataclass
class SurrogateBenchmark:
    """A :class:`pneumotune.search.replay.Benchmark` over demo.yaml's continuous space."""

    name: str
    params: tuple[ParamSpec, ...]
    max_t: int
    model: Any
    seconds: dict[str, list[float]]  # base_filters -> mean seconds of each epoch
    tutorial: dict[str, Any]
    configs: int  # the atlas configs it was fitted on
    best: float = math.nan
    left_out: list[int] = field(default_factory=list)  # configs with epochs lost (Runs.holed)

    def key(self, config: Mapping[str, Any]) -> tuple[Any, ...]:
        """The config's active values (floats to 6 digits): what a run records."""
        active: dict[str, Any] = {}
        for p in self.params:
            if p.active(active) and config.get(p.name) not in (None, ""):
                v = config[p.name]
                active[p.name] = round(float(v), 6) if p.choices is None else str(v)
        return tuple(active.get(p.name) for p in self.params)

    def values(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        x = np.array([features(self.params, c) for c in configs])
        return np.asarray(self.model.predict(x)).reshape(len(configs), self.max_t)

    def curve(self, config: Mapping[str, Any]) -> list[tuple[float, float]]:
        """The predicted curve of ``config``'s key: the same for every config of a key."""
        key = self.key(config)
        values = self.values([{p.name: v for p, v in zip(self.params, key, strict=True)}])[0]
        seconds = self.seconds.get(str(config.get("base_filters")), self.seconds["*"])
        return [(round(float(v), 6), s) for v, s in zip(values, seconds, strict=True)]

    def final(self, key: Hashable) -> float:
        config = {p.name: v for p, v in zip(self.params, key, strict=True)}  # type: ignore[arg-type]
        return max(v for v, _ in self.curve(config))

    def grid(self) -> None:
        return None

    def facts(self) -> dict[str, Any]:
        """What a replay's JSON says of its benchmark (bench/replay.py's atlas_facts)."""
        return {
            "path": self.name,
            "configs": self.configs,
            "max_t": self.max_t,
            "best": self.best,
            "model": str(self.model.kernel_),
            **({"left_out": self.left_out} if self.left_out else {}),
        }


def sobol_configs(params: Sequence[ParamSpec], n: int, seed: int) -> list[dict[str, Any]]:
    from atlas import unit_to_value  # bench/atlas.py: the atlas's own mapping
    from scipy.stats import qmc

    out = []
    for row in qmc.Sobol(d=len(params), scramble=True, seed=seed).random(n):
        point: dict[str, Any] = {}
        for p, u in zip(params, row, strict=True):
            if p.active(point):
                point[p.name] = unit_to_value(p, float(u))
        out.append(point)
    return out


def parse_spec(spec: str | Path) -> tuple[Path, int | None]:
    """``CSV[:N]`` -> (the atlas, how many of its first configs; None: all)."""
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit():
        return Path(head), int(tail)
    return Path(text), None


def load_surrogate(spec: str | Path = ATLAS, experiment: str = EXPERIMENT) -> SurrogateBenchmark:
    """Fit the surrogate named by ``spec`` (``CSV[:N]``; seconds, deterministic)."""
    from pneumotune.search.config import load_experiment
    from pneumotune.search.space import tutorial_point

    path, upto = parse_spec(spec)
    params = space(experiment)
    runs = read_runs(path, params, upto)
    ids, left_out = fitted_ids(runs, path, upto)
    if len(ids) < 2 * len(params):
        raise ValueError(
            f"{path}: {len(ids)} complete configs; a surrogate of {len(params)} params "
            f"needs at least {2 * len(params)}"
        )
    x = np.array([features(params, runs.configs[i]) for i in ids])
    y = np.array([[v for v, _ in runs.curves[i, 0]] for i in ids])
    model = fit(gp_model(x.shape[1]), x, y)
    by_width: dict[str, list[list[float]]] = defaultdict(list)
    for (i, _), curve in runs.curves.items():
        seconds = [s for _, s in curve]
        by_width[runs.configs[i].get("base_filters", "")].append(seconds)
        by_width["*"].append(seconds)
    seconds = {
        w: [round(statistics.fmean(e), 3) for e in zip(*c, strict=True)]
        for w, c in by_width.items()
    }
    point, _ = tutorial_point(load_experiment(experiment))
    bench = SurrogateBenchmark(
        bench_name(path, len(ids) + len(left_out)),
        params,
        runs.max_t,
        model,
        seconds,
        {k: v for k, v in point.items() if any(p.name == k for p in params)},
        len(ids),
        left_out=left_out,
    )
    probe = sobol_configs(params, BEST_SAMPLE, seed=1) + [runs.configs[i] for i in ids]
    bench.best = round(float(bench.values(probe).max()), 6)
    return bench


def cross_validate(spec: str | Path, folds: int, experiment: str = EXPERIMENT) -> dict[str, Any]:
    """Held-out accuracy of each model in :data:`MODELS` (see the module docstring)."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold

    path, upto = parse_spec(spec)
    params = space(experiment)
    runs = read_runs(path, params, upto)
    ids, left_out = fitted_ids(runs, path, upto)
    x = np.array([features(params, runs.configs[i]) for i in ids])
    y = np.array([[v for v, _ in runs.curves[i, 0]] for i in ids])

    def rho(a: np.ndarray, b: np.ndarray) -> float:
        return round(float(spearmanr(a, b).statistic), 3)

    out: dict[str, Any] = {
        "atlas": bench_name(path, len(ids) + len(left_out)),
        "configs": len(ids),
        **({"left_out": left_out} if left_out else {}),
        "max_t": runs.max_t,
        "folds": folds,
        "used": USED,
        "recorded_epoch1_vs_best_epoch": rho(y[:, 0], y.max(1)),
        "models": {},
    }
    for name, make in MODELS.items():
        predicted = np.zeros_like(y)
        for train, test in KFold(folds, shuffle=True, random_state=0).split(x):
            predicted[test] = fit(make(x.shape[1]), x[train], y[train]).predict(x[test])
        out["models"][name] = {
            "spearman_epoch24": rho(predicted[:, -1], y[:, -1]),
            "spearman_best_epoch": rho(predicted.max(1), y.max(1)),
            "spearman_epoch1": rho(predicted[:, 0], y[:, 0]),
            "rmse": round(float(np.sqrt(((predicted - y) ** 2).mean())), 4),
        }
    # Every complete run of the atlas, fitted on or not: its later configs and its repeats.
    recorded = read_runs(path, params) if upto is not None else runs
    # Seed noise, where the atlas has repeats: how well one seed ranks the other (a fact of
    # the atlas, not of the fit, so every repeat counts).
    repeats = sorted(i for i, s in recorded.curves if s == 1 and (i, 0) in recorded.curves)
    if len(repeats) >= 3:
        a = np.array([[v for v, _ in recorded.curves[i, 0]] for i in repeats])
        b = np.array([[v for v, _ in recorded.curves[i, 1]] for i in repeats])
        out["repeats"] = {
            "configs": len(repeats),
            "spearman_best_epoch_seed0_vs_seed1": rho(a.max(1), b.max(1)),
            "mean_abs_diff_best_epoch": round(float(np.abs(a.max(1) - b.max(1)).mean()), 4),
        }
    bench = load_surrogate(spec, experiment)
    if upto is not None:
        # Configs the fit never saw, recorded after it: the plainest held-out check, since
        # neither the model nor its kernel was chosen looking at them.
        after = sorted(i for i, s in recorded.curves if s == 0 and i >= upto)
        if len(after) >= 3:
            got = np.array([[v for v, _ in recorded.curves[i, 0]] for i in after])
            predicted = bench.values([recorded.configs[i] for i in after])
            out["later_configs"] = {
                "configs": len(after),
                "ids": [after[0], after[-1]],
                "spearman_epoch24": rho(predicted[:, -1], got[:, -1]),
                "spearman_best_epoch": rho(predicted.max(1), got.max(1)),
                "rmse": round(float(np.sqrt(((predicted - got) ** 2).mean())), 4),
            }
    sample = bench.values(sobol_configs(params, 2048, seed=2))
    out["surrogate"] = {
        "best": bench.best,
        "recorded_best": round(float(y.max()), 4),
        "epoch1_vs_best_epoch_on_2048_sobol_points": rho(sample[:, 0], sample.max(1)),
        "kernel": str(bench.model.kernel_),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--atlas", type=Path, default=ATLAS, help=f"default {ATLAS.name}")
    parser.add_argument(
        "--configs", type=int, default=None, help="fit on the first N configs (default: all)"
    )
    parser.add_argument("--folds", type=int, default=10, help="cross-validation folds (10)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be >= 2")
    spec = f"{args.atlas}:{args.configs}" if args.configs else str(args.atlas)
    result = cross_validate(spec, args.folds)
    print(
        f"{result['atlas']}: {result['configs']} configs x {result['max_t']} epochs, "
        f"{args.folds}-fold cross-validation (Spearman of predicted vs recorded, held out)"
    )
    for name, m in result["models"].items():
        mark = "  (used)" if name == result["used"] else ""
        print(
            f"  {name:17} epoch 24 {m['spearman_epoch24']:.3f}  best epoch "
            f"{m['spearman_best_epoch']:.3f}  epoch 1 {m['spearman_epoch1']:.3f}  "
            f"RMSE {m['rmse']:.4f}{mark}"
        )
    s = result["surrogate"]
    print(
        f"epoch 1 vs best epoch: recorded {result['recorded_epoch1_vs_best_epoch']:.3f}, "
        f"surrogate {s['epoch1_vs_best_epoch_on_2048_sobol_points']:.3f}; surrogate best "
        f"{s['best']:.4f} (recorded best {s['recorded_best']:.4f})"
    )
    if "later_configs" in result:
        h = result["later_configs"]
        print(
            f"configs {h['ids'][0]}-{h['ids'][1]}, recorded after the fit ({h['configs']}): "
            f"Spearman epoch 24 {h['spearman_epoch24']:.3f}, best epoch "
            f"{h['spearman_best_epoch']:.3f}, RMSE {h['rmse']:.4f}"
        )
    if "repeats" in result:
        r = result["repeats"]
        print(
            f"repeats: {r['configs']} configs, seed 0 vs seed 1 Spearman "
            f"{r['spearman_best_epoch_seed0_vs_seed1']:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
