"""Do two atlases of the same grid rank its configs alike? The resolution study behind the
space atlas: is a cheaper image size (or dataset) as good a judge of configs as 64 px?

    python bench/atlas_agreement.py bench/atlas/synth32.csv bench/atlas/synth64.csv

Spearman and Kendall correlations between the two atlases' seed-0 scores of each config
(24-epoch val IoU, best epoch, epoch 1), top-k overlaps, each atlas's epoch seconds; and,
as the yardstick, each atlas's agreement with itself across seeds (its repeats, seed 0 vs
seed 1): a cheaper atlas that agrees with 64 px as well as 64 px agrees with itself ranks
configs as well as the noise allows. Writes bench/atlas/<a>-vs-<b>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from scipy.stats import kendalltau, spearmanr

Curves = dict[tuple[int, int], dict[int, float]]


def load(path: Path, metric: str = "val_iou") -> tuple[Curves, list[float]]:
    curves: Curves = {}
    seconds = []
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            key = (int(r["config_id"]), int(r["seed"]))
            curves.setdefault(key, {})[int(r["epoch"])] = float(r[metric])
            seconds.append(float(r["epoch_seconds"]))
    return curves, seconds


def complete(curves: Curves, max_t: int) -> Curves:
    return {k: c for k, c in curves.items() if len(c) >= max_t}


def scores(curves: Curves, max_t: int) -> dict[str, dict[tuple[int, int], float]]:
    return {
        "final": {k: c[max_t] for k, c in curves.items()},
        "best": {k: max(c.values()) for k, c in curves.items()},
        "epoch1": {k: c[1] for k, c in curves.items()},
    }


def agreement(a: dict, b: dict) -> dict[str, float | int]:
    keys = sorted(set(a) & set(b))
    x, y = [a[k] for k in keys], [b[k] for k in keys]
    return {
        "n": len(keys),
        "spearman": round(float(spearmanr(x, y)[0]), 3),
        "kendall": round(float(kendalltau(x, y)[0]), 3),
    }


def top_overlap(a: dict, b: dict, k: int) -> int:
    keys = set(a) & set(b)
    best = lambda d: set(sorted(keys, key=d.get, reverse=True)[:k])  # noqa: E731
    return len(best(a) & best(b))


def self_agreement(curves: Curves, max_t: int) -> dict[str, float | int]:
    """Seed 0 vs seed 1 on the atlas's repeated configs (final scores)."""
    ids = sorted(c for c, s in curves if s == 1 and (c, 0) in curves)
    first = {c: curves[(c, 0)][max_t] for c in ids}
    second = {c: curves[(c, 1)][max_t] for c in ids}
    if len(ids) < 3:
        return {"n": len(ids)}
    out = agreement(first, second)
    out["median_abs_diff"] = round(statistics.median(abs(first[c] - second[c]) for c in ids), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cheap", type=Path, help="the cheaper atlas's CSV")
    parser.add_argument("reference", type=Path, help="the reference atlas's CSV (64 px)")
    parser.add_argument("--max-t", type=int, default=24)
    args = parser.parse_args(argv)
    (cheap, cheap_s), (ref, ref_s) = load(args.cheap), load(args.reference)
    cheap, ref = complete(cheap, args.max_t), complete(ref, args.max_t)
    seed0 = lambda c: {k[0]: v for k, v in c.items() if k[1] == 0}  # noqa: E731
    a, b = scores(seed0(cheap), args.max_t), scores(seed0(ref), args.max_t)
    report = {
        "cheap": args.cheap.name,
        "reference": args.reference.name,
        "between": {what: agreement(a[what], b[what]) for what in a},
        "top_overlap_final": {k: top_overlap(a["final"], b["final"], k) for k in (5, 10)},
        "within_seeds": {
            args.cheap.name: self_agreement(cheap, args.max_t),
            args.reference.name: self_agreement(ref, args.max_t),
        },
        "median_epoch_seconds": {
            args.cheap.name: round(statistics.median(cheap_s), 2),
            args.reference.name: round(statistics.median(ref_s), 2),
        },
    }
    print(json.dumps(report, indent=1))
    out = args.reference.parent / f"{args.cheap.stem}-vs-{args.reference.stem}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
