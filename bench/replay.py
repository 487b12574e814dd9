"""Search strategies compared on a recorded learning-curve atlas, over many seeds.

    python bench/replay.py --atlas bench/atlas/synth64.csv --seeds 20 [--seed-offset 0]
                           --budget 4 [--json OUT] [--strategies ours,random+fifo,...]
                           [--scale 0.003] [--smoke-test]

B (``--budget``) counts full trainings: a search may report B x max_t epochs in all.
Each strategy runs the product's real searcher and scheduler through Ray Tune on the
recorded curves (pneumotune.search.replay), once per seed. Per strategy: the median and
quartiles of the regret (the atlas's best val_iou minus the best the search saw) and
the median trial-epochs until the search first came within 0.01 of the atlas best
("never" counts as never). ``--json`` writes the table with the atlas's facts (best,
each epoch's rank correlation with the full-length score, the tutorial's score).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from atlas import TUTORIAL  # bench/atlas.py: the grid's tutorial point

from pneumotune.search.replay import (
    METRIC,
    Atlas,
    Strategy,
    load_atlas,
    run_one,
    spearman_by_epoch,
    summarise,
)


def strategies() -> dict[str, Strategy]:
    ours = shipped_strategy()
    same_space = {"fixed": ours.fixed}
    return {
        "random+fifo": Strategy("random", asha=False),
        "random+asha": Strategy("random", asha=True, grace=ours.grace, reduction=ours.reduction),
        "tpe+fifo": Strategy("tpe", asha=False, fidelity=False),
        "tpe+asha": Strategy("tpe", asha=True, fidelity=False, tutorial=True, grace=2, reduction=2),
        "gp+asha": Strategy("gp", asha=True, grace=ours.grace, reduction=ours.reduction),
        # Random search in the product's space: what the space alone is worth.
        "random+fifo/space": Strategy("random", asha=False, **same_space),
        "random+asha/space": Strategy(
            "random", asha=True, grace=ours.grace, reduction=ours.reduction, **same_space
        ),
        "ours": ours,
        # The same with promotion ASHA: trials below a rung's top pause and resume if later
        # arrivals rank them in it, instead of stopping (search.promotion).
        "ours+promotion": dataclasses.replace(ours, mode="promote"),
    }


def shipped_strategy() -> Strategy:
    """What the product ships: demo.yaml's ASHA and start-up settings, FidelityOptunaSearch,
    and its space mapped onto the atlas's axes: demo.yaml always schedules the positive
    share (``pos_share_start`` 0.5-0.9), so the product never trains the atlas's "natural"
    level."""
    from pneumotune.search.config import load_experiment

    exp = load_experiment("demo")
    spec = exp.param("pos_share_start")
    scheduled = spec is not None and (spec.low or 0) > 0 and None not in (spec.choices or ())
    return Strategy(
        "tpe",
        asha=True,
        fidelity=True,
        tutorial=exp.enqueue_tutorial,
        grace=exp.asha.grace_period,
        reduction=exp.asha.reduction_factor,
        startup=exp.startup_trials,
        fixed=(("pos_share", "0.8-0.4"),) if scheduled else (),
    )


def parse_strategy(spec: str, known: dict[str, Strategy]) -> Strategy:
    """``NAME`` or ``NAME:field=value,...``: a known strategy with some fields changed, e.g.
    ``ours:grace=4,reduction=3,startup=4`` (a before/after row for a default)."""
    name, _, changes = spec.partition(":")
    if name not in known:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(known)}")
    fields = {f.name: f for f in dataclasses.fields(Strategy)}
    values: dict[str, Any] = {}
    for change in filter(None, changes.split(",")):
        key, _, text = change.partition("=")
        if key not in fields:
            raise ValueError(f"{spec}: {key!r} is not one of {sorted(fields)}")
        value: Any = text
        if text in ("true", "false"):
            value = text == "true"
        elif text in ("none", "None"):
            value = None
        elif key in ("grace", "startup"):
            value = int(text)
        elif key == "reduction":
            value = float(text)
        elif key == "fixed":  # fixed=axis/level+axis/level
            value = tuple(tuple(p.split("/", 1)) for p in text.split("+") if p)
        values[key] = value
    return dataclasses.replace(known[name], **values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--atlas", type=Path, default=Path(__file__).parent / "atlas" / "synth64.csv"
    )
    parser.add_argument(
        "--surrogate",
        default=None,
        metavar="SPACE_ATLAS_CSV[:N]",
        help="replay on bench/surrogate.py's model of this continuous-space atlas (demo.yaml's "
        "own space: strategies' fixed axes do not apply) instead of --atlas",
    )
    parser.add_argument("--seeds", type=int, default=20, help="searches per strategy")
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--budget", type=int, default=4, help="full trainings (default 4)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--strategies",
        default="random+fifo;random+asha;tpe+fifo;tpe+asha;ours;ours+promotion",
        help=f"';'-separated, of {', '.join(strategies())}; NAME:field=value,... changes "
        "fields of one (sampler, asha, fidelity, tutorial, grace, reduction, mode, startup)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=0.003,
        help="replayed seconds per recorded second (default 0.003: a 5 s epoch takes 15 ms, "
        "well above Tune's per-result latency)",
    )
    parser.add_argument("--smoke-test", action="store_true", help="2 seeds, budget 2")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.seeds, args.budget = 2, 2
    known = strategies()
    try:  # ";" separates strategies, since a variant's changes use ","
        chosen = {s.strip(): parse_strategy(s.strip(), known) for s in args.strategies.split(";")}
    except ValueError as exc:
        parser.error(str(exc))

    import ray

    if args.surrogate:
        from surrogate import load_surrogate

        bench: Any = load_surrogate(args.surrogate)
        chosen = {n: dataclasses.replace(st, fixed=()) for n, st in chosen.items()}
        facts, label = bench.facts(), bench.name
    else:
        bench = load_atlas(args.atlas, TUTORIAL)
        facts, label = atlas_facts(bench, args.atlas), args.atlas.name
    print(
        f"{label}: {facts['configs']} configs x {bench.max_t} epochs, best "
        f"{METRIC} {bench.best:.4f}; budget {args.budget} x {bench.max_t} trial-epochs, "
        f"seeds {args.seed_offset}..{args.seed_offset + args.seeds - 1}",
        flush=True,
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="pneumotune-replay-"))
    try:
        for name, strategy in chosen.items():
            t0 = time.perf_counter()
            runs = []
            for seed in range(args.seed_offset, args.seed_offset + args.seeds):
                runs.append(run_one(bench, strategy, seed, args.budget, args.scale, workdir))
                shutil.rmtree(workdir / f"s{seed}", ignore_errors=True)
            results[name] = summarise(bench, runs)
            results[name]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"  {name:14} {json.dumps(results[name])}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        ray.shutdown()
    print_table(results, args.budget)
    if args.json:
        out = {
            "budget": args.budget,
            "seeds": [args.seed_offset, args.seed_offset + args.seeds - 1],
            "atlas": facts,
            "strategies": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def atlas_facts(atlas: Atlas, path: Path) -> dict[str, Any]:
    tutorial_key = tuple(atlas.tutorial.get(a, "") for a in atlas.axes)
    return {
        "path": path.name,
        "configs": len(atlas.curves),
        "max_t": atlas.max_t,
        "best": round(atlas.best, 4),
        "tutorial_final": round(atlas.final(tutorial_key), 4)
        if tutorial_key in atlas.curves
        else None,
        "spearman_epoch_vs_final": spearman_by_epoch(atlas),
    }


def print_table(results: dict[str, Any], budget: int) -> None:
    base = results.get("random+fifo", {}).get("median_regret")
    width = max(14, *(len(name) for name in results))
    print(f"\nbudget {budget}: regret = atlas best - best seen (median [q25, q75])")
    print(
        f"{'strategy':{width}} {'median':>8} {'q25':>8} {'q75':>8} {'/ random+fifo':>14} "
        f"{'epochs to 0.01':>15} {'never':>6} {'picked final':>13}"
    )
    for name, r in results.items():
        ratio = f"{r['median_regret'] / base:.2f}" if base else "-"
        to_best = r["median_epochs_to_best"]
        to_best = "never" if to_best is None else f"{to_best:g}"
        print(
            f"{name:{width}} {r['median_regret']:8.4f} {r['q25_regret']:8.4f} "
            f"{r['q75_regret']:8.4f} {ratio:>14} {to_best:>15} {r['never_within']:>6} "
            f"{r['median_picked_final']:13.4f}"
        )


if __name__ == "__main__":
    sys.exit(main())
