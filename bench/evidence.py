"""The tables of docs/search-evidence.md, generated from the JSON files in bench/atlas/.

    python bench/evidence.py            # rewrite the tables in docs/search-evidence.md
    python bench/evidence.py --check    # exit 1 if a table there differs from its JSON

The document's prose is written by hand; every table sits between two markers naming
the JSON it comes from::

    <!-- table: peers-surrogate-b4.json -->
    ... (generated: do not edit)
    <!-- end table -->

and is rendered from that file alone, so a number in a table is always what a bench
command wrote (each JSON says which command, seeds and atlas). The kinds of JSON:
bench/peers.py's (peers, with our rows), bench/replay.py's (strategies),
bench/surrogate.py's (held-out accuracy), bench/atlas_agreement.py's (the resolution
study) and bench/headroom.py's (what any search could reach).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ATLAS_DIR = BENCH / "atlas"
DOC = BENCH.parent / "docs" / "search-evidence.md"
BLOCK = re.compile(
    r"(<!-- table: (?P<name>[\w.+-]+\.json) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S
)


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _searches(data: dict[str, Any]) -> str:
    """A peers or replay JSON: one row per searcher (peers.py's columns)."""
    from peers import HEADER, table_rows  # bench/peers.py: one set of columns everywhere

    rows: dict[str, Any] = {}
    for name, r in {**data.get("peers", {}), **data.get("strategies", {})}.items():
        rows[name] = dict(r, within=r["runs"] - r["never_within"])
    for name, r in data.get("ours", {}).items():
        rows[name] = dict(r, within=r["runs"] - r["never_within"])
    first, last = data["seeds"]
    atlas = data["atlas"]
    title = (
        f"{atlas['path']} ({atlas['configs']} configs, best {atlas['best']:.4f}), budget "
        f"{data['budget']} x {atlas['max_t']} trial-epochs, seeds {first}-{last}"
    )
    header = [h for h in HEADER if h != "seconds"]
    body = [r[: len(HEADER) - 1] for r in table_rows(rows)]  # seconds: machine-dependent
    return f"*{title}*\n\n" + _md(header, body)


def _surrogate(data: dict[str, Any]) -> str:
    rows = [
        [
            name + (" (used)" if name == data["used"] else ""),
            f"{m['spearman_epoch24']:.3f}",
            f"{m['spearman_best_epoch']:.3f}",
            f"{m['spearman_epoch1']:.3f}",
            f"{m['rmse']:.4f}",
        ]
        for name, m in data["models"].items()
    ]
    s = data["surrogate"]
    text = (
        f"*{data['atlas']}: {data['configs']} configs x {data['max_t']} epochs, "
        f"{data['folds']}-fold cross-validation over configs (Spearman, predicted vs recorded, "
        f"held out)*\n\n"
        + _md(["model", "epoch 24", "best epoch", "epoch 1", "RMSE"], rows)
        + f"\n\nEpoch 1 vs best epoch (Spearman over configs): recorded "
        f"{data['recorded_epoch1_vs_best_epoch']:.3f}, the surrogate's on 2,048 Sobol points "
        f"{s['epoch1_vs_best_epoch_on_2048_sobol_points']:.3f}. Surrogate best {s['best']:.4f} "
        f"(recorded best {s['recorded_best']:.4f})."
    )
    if "later_configs" in data:
        h = data["later_configs"]
        text += (
            f" Configs {h['ids'][0]}-{h['ids'][1]} ({h['configs']}), recorded after the fit and "
            f"never seen by it: Spearman {h['spearman_epoch24']:.3f} at epoch 24, "
            f"{h['spearman_best_epoch']:.3f} at the best epoch, RMSE {h['rmse']:.4f}."
        )
    if "repeats" in data:
        r = data["repeats"]
        text += (
            f" Seed noise, {r['configs']} configs run twice: Spearman of their best epochs "
            f"{r['spearman_best_epoch_seed0_vs_seed1']:.3f}, mean difference "
            f"{r['mean_abs_diff_best_epoch']:.4f}."
        )
    return text


def _agreement(data: dict[str, Any]) -> str:
    rows = [
        [what, str(r["n"]), f"{r['spearman']:.3f}", f"{r['kendall']:.3f}"]
        for what, r in data["between"].items()
    ]
    rows += [
        [f"seed 0 vs seed 1, {name}", str(r["n"]), f"{r['spearman']:.3f}", f"{r['kendall']:.3f}"]
        for name, r in data["within_seeds"].items()
    ]
    seconds = ", ".join(f"{k} {v:g} s" for k, v in data["median_epoch_seconds"].items())
    overlap = ", ".join(f"top {k}: {v}" for k, v in data["top_overlap_final"].items())
    return (
        f"*{data['cheap']} vs {data['reference']}: rank agreement over configs*\n\n"
        + _md(["score", "configs", "Spearman", "Kendall"], rows)
        + f"\n\nShared top configs (final score): {overlap}. Median epoch: {seconds}."
    )


def _headroom(data: dict[str, Any]) -> str:
    """bench/headroom.py's JSON: best-of-M and the best two-stage splits, with hindsight."""
    budget = data["budget"]
    random_fifo = data["best_of"][str(budget)]["median"]

    def row(what: str, cost: str, q: dict[str, float]) -> list[str]:
        ratio = f"{q['median'] / random_fifo:.2f}"
        return [what, cost, f"{q['median']:.4f}", f"{q['q75']:.4f}", ratio]

    rows = [
        row(
            f"best of {m}, trained to the end" + (" (random+fifo)" if int(m) == budget else ""),
            f"{int(m) / budget:g}x",
            q,
        )
        for m, q in data["best_of"].items()
    ]
    ranked = sorted(data["two_stage"].values(), key=lambda r: r["median"])
    rows += [
        row(f"{r['n']} configs {r['e']} epoch(s), top {r['k']} to the end", "1x", r)
        for r in ranked[:3]
    ]
    tutorial = data["tutorial_regret"]
    rows.append(
        [
            "the tutorial point alone",
            f"{1 / budget:g}x",
            f"{tutorial:.4f}",
            "-",
            f"{tutorial / random_fifo:.2f}",
        ]
    )
    spread = data["median_of_seeds"]
    return (
        f"*{data['surrogate']} (best {data['best']:.4f}), budget {budget} x {data['max_t']} "
        f"trial-epochs, {data['draws']} draws per row, uniform samples of the space*\n\n"
        + _md(["search", "cost / budget", "median regret", "q75", "x random+fifo"], rows)
        + f"\n\nThe median of {spread['seeds']} random+fifo searches (a replay's row) lies in "
        f"[{spread['q05']:.4f}, {spread['q95']:.4f}] 90% of the time, by the draw of seeds alone."
    )


def render(name: str) -> str:
    data = json.loads((ATLAS_DIR / name).read_text())
    if "models" in data:
        return _surrogate(data)
    if "between" in data:
        return _agreement(data)
    if "best_of" in data:
        return _headroom(data)
    if "peers" in data or "strategies" in data:
        return _searches(data)
    raise ValueError(f"bench/atlas/{name}: not a JSON this knows how to render")


def regenerate(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        return m.group(1) + render(m.group("name")) + "\n" + m.group(4)

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="default docs/search-evidence.md")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    text = args.doc.read_text()
    new = regenerate(text)
    tables = len(BLOCK.findall(text))
    if args.check:
        if new != text:
            print(f"{args.doc}: tables differ from bench/atlas/*.json; run bench/evidence.py")
            return 1
        print(f"{args.doc}: {tables} tables match their JSON")
        return 0
    args.doc.write_text(new)
    print(f"{args.doc}: {tables} tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
