"""How far any search can get on the surrogate at a budget: the headroom over random+fifo.

    python bench/headroom.py [--surrogate bench/atlas/space32.csv:64] [--budget 4]
                             [--draws 2000] [--json bench/atlas/headroom-surrogate-b4.json]

A search's regret is the surrogate's best minus the best value it saw in ``budget x
max_t`` trial-epochs (bench/replay.py's measure). This asks what a search *could* reach,
with hindsight, in two families that bound what samplers and schedulers do:

* **best of M, trained to the end**: M configs drawn uniformly from the space, every one
  trained for all ``max_t`` epochs. M = budget is random+fifo; M > budget costs more than
  the budget and says how many full trainings a target regret needs.
* **two stages, the best (e, K) with hindsight**: N configs trained ``e`` epochs, the K best
  of them at epoch ``e`` continued to ``max_t``, with ``N*e + K*(max_t - e)`` within the
  budget (one-epoch-top-K is e = 1; an ASHA or Hyperband bracket is a few such stages,
  with its choices made by the same early ranking). The (e, K) shown is the one whose
  median regret is lowest, chosen after the fact: no search knows it in advance.

No seed noise, no concurrency, no wasted epochs: each row is optimistic for its family.
A sampler that models the space (TPE, BO) can do better than uniform draws only when its
model has data to learn from; at budget 4 it has a handful of points in 13 dimensions.

Draws sample from a pool of 2^14 scrambled-Sobol points of the space (bench/surrogate.py's
``sobol_configs``, seed 3), whose predicted curves are computed once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
POOL = 2**14
SEEDS = 20  # the searches per row of a replay (bench/replay.py, bench/peers.py)


def quartiles(regrets: np.ndarray) -> dict[str, float]:
    q25, q50, q75 = np.quantile(regrets, [0.25, 0.5, 0.75])
    return {
        "q25": round(float(q25), 4),
        "median": round(float(q50), 4),
        "q75": round(float(q75), 4),
    }


def best_of(
    curves: np.ndarray, best: float, m: int, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """Regrets of ``draws`` searches that each train ``m`` uniform draws to the end."""
    finals = curves.max(1)
    picks = rng.integers(0, len(curves), size=(draws, m))
    return best - finals[picks].max(1)


def two_stage(
    curves: np.ndarray,
    best: float,
    e: int,
    k: int,
    budget_epochs: int,
    draws: int,
    rng: np.random.Generator,
) -> tuple[int, np.ndarray] | None:
    """Regrets of N configs trained ``e`` epochs, the top ``k`` at epoch e continued (N the
    most the budget allows); None when the budget does not afford it."""
    max_t = curves.shape[1]
    n = (budget_epochs - k * (max_t - e)) // e
    if n < k or n < 1:
        return None
    picks = rng.integers(0, len(curves), size=(draws, n))
    early = curves[picks, :e]  # draws x n x e
    seen_early = early.max(axis=(1, 2))
    top = np.argsort(-early[:, :, e - 1], axis=1)[:, :k]
    chosen = np.take_along_axis(picks, top, axis=1)
    seen_full = curves.max(1)[chosen].max(1)
    return n, best - np.maximum(seen_early, seen_full)


def headroom(spec: str, budget: int, draws: int, seed: int = 0) -> dict[str, Any]:
    from surrogate import load_surrogate, sobol_configs

    bench = load_surrogate(spec)
    curves = bench.values(sobol_configs(bench.params, POOL, seed=3))
    max_t = bench.max_t
    rng = np.random.default_rng(seed)
    budget_epochs = budget * max_t
    out: dict[str, Any] = {
        "command": "python bench/headroom.py " + " ".join(sys.argv[1:]),
        "surrogate": bench.name,
        "best": bench.best,
        "budget": budget,
        "max_t": max_t,
        "draws": draws,
        "tutorial_regret": round(bench.best - bench.final(bench.key(bench.tutorial)), 4),
        "best_of": {},
        "two_stage": {},
    }
    for m in sorted({1, 2, budget, 2 * budget, 4 * budget, 8 * budget, 16 * budget, 32 * budget}):
        out["best_of"][str(m)] = quartiles(best_of(curves, bench.best, m, draws, rng))
    # A replay reports the median of SEEDS searches: how far that median of random+fifo
    # strays from the true one by the draw of seeds alone.
    fifo = best_of(curves, bench.best, budget, draws * SEEDS, rng).reshape(draws, SEEDS)
    low, high = np.quantile(np.median(fifo, axis=1), [0.05, 0.95])
    out["median_of_seeds"] = {
        "seeds": SEEDS,
        "q05": round(float(low), 4),
        "q95": round(float(high), 4),
    }
    for e in (1, 2, 3, 4, 6, 8, 12):
        for k in (1, 2, 3, 4):
            got = two_stage(curves, bench.best, e, k, budget_epochs, draws, rng)
            if got is not None:
                n, regrets = got
                out["two_stage"][f"e{e}k{k}"] = {"e": e, "k": k, "n": n, **quartiles(regrets)}
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    random_fifo = result["best_of"][str(result["budget"])]["median"]
    lines = [
        f"{result['surrogate']}, budget {result['budget']} x {result['max_t']} trial-epochs, "
        f"{result['draws']} draws; best {result['best']:.4f}; the tutorial point's regret "
        f"{result['tutorial_regret']:.4f}",
        f"random+fifo (best of {result['budget']}, full): median regret {random_fifo:.4f}; "
        f"half of it: {random_fifo / 2:.4f}",
    ]
    for m, q in result["best_of"].items():
        lines.append(
            f"  best of {m:>4} full trainings: median {q['median']:.4f}  q75 {q['q75']:.4f}"
        )
    spread = result["median_of_seeds"]
    lines.append(
        f"  the median of {spread['seeds']} random+fifo searches: 90% of the time in "
        f"[{spread['q05']:.4f}, {spread['q95']:.4f}]"
    )
    ranked = sorted(result["two_stage"].values(), key=lambda r: r["median"])
    for r in ranked[:5]:
        lines.append(
            f"  two stages e={r['e']:>2} K={r['k']} (N={r['n']:>3}): median {r['median']:.4f}  "
            f"q75 {r['q75']:.4f}  ({r['median'] / random_fifo:.2f}x random+fifo)"
        )
    one = [r for r in ranked if r["e"] == 1]
    if one:
        r = one[0]
        lines.append(
            f"  one-epoch-top-K, best K={r['k']}: median {r['median']:.4f} "
            f"({r['median'] / random_fifo:.2f}x random+fifo)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--surrogate", default=str(HERE / "atlas" / "space32.csv") + ":64")
    parser.add_argument("--budget", type=int, default=4, help="full trainings (default 4)")
    parser.add_argument("--draws", type=int, default=2000, help="searches per row (2000)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    if args.budget < 1 or args.draws < 10:
        parser.error("--budget must be >= 1 and --draws >= 10")
    result = headroom(args.surrogate, args.budget, args.draws)
    print("\n".join(summary_lines(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
