"""bench/surrogate.py and bench/evidence.py: the surrogate fitted on a continuous-space atlas
answers for any point of demo.yaml's space, ranks held-out configs as they were recorded,
and plugs into the peers' replay; the docs' tables are what the JSONs say.

The atlas here is written by the test: a known landscape over demo.yaml's own space
(val_iou rises with base_filters and with lr towards its middle, curves saturate), so
that a surrogate that ranks held-out configs well is one that learnt it.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

pytest.importorskip("sklearn")

import surrogate  # noqa: E402  (bench/surrogate.py)

MAX_T = 6


def _landscape(point: dict) -> float:
    width = 0.15 if str(point["base_filters"]) == "16" else 0.0
    lr = -abs(math.log(float(point["lr"]) / 1e-3))  # best at 1e-3
    return 0.3 + width + 0.2 * lr + 0.05 * float(point["pos_share_start"])


@pytest.fixture(scope="module")
def atlas_csv(tmp_path_factory):
    from atlas import space_design  # bench/atlas.py: the atlas's own Sobol design

    design = space_design("demo", 40, seed=0)
    path = tmp_path_factory.mktemp("space") / "space.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config_id", *design.columns, "seed", "epoch", "val_iou", "epoch_seconds"])
        for i, (cells, values) in enumerate(zip(design.configs, design.values, strict=True)):
            top = _landscape(values)
            for e in range(1, MAX_T + 1):
                v = round(top * (1 - math.exp(-e / 2)), 5)
                w.writerow([i, *(cells[c] for c in design.columns), 0, e, v, 1.0 + e / 10])
    return path


def test_spec_names_the_configs_fitted(atlas_csv):
    assert surrogate.parse_spec(f"{atlas_csv}:32") == (atlas_csv, 32)
    assert surrogate.parse_spec(str(atlas_csv)) == (atlas_csv, None)
    bench = surrogate.load_surrogate(f"{atlas_csv}:32")
    assert bench.configs == 32 and bench.name == f"surrogate:{atlas_csv.name}:32"
    with pytest.raises(ValueError, match="not all complete"):
        surrogate.load_surrogate(f"{atlas_csv}:41")  # the atlas has 40
    with pytest.raises(ValueError, match="needs at least"):
        surrogate.load_surrogate(f"{atlas_csv}:10")


def test_a_run_with_lost_epochs_is_left_out_and_named(atlas_csv, tmp_path):
    """A run whose first epochs were lost when an atlas session ended (bench/atlas.py
    writes it with the hole) is no complete curve: the surrogate of its N leaves it out
    and names it; a new atlas session trains it again (atlas.recorded_runs)."""
    from atlas import recorded_runs

    rows = list(csv.DictReader(atlas_csv.open(newline="")))
    holed = [r for r in rows if not (r["config_id"] == "5" and r["epoch"] in ("1", "2"))]
    path = tmp_path / "holed.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(holed)
    runs = surrogate.read_runs(path, surrogate.space(), 32)
    assert runs.holed == {(5, 0): [1, 2]} and (5, 0) not in runs.curves
    bench = surrogate.load_surrogate(f"{path}:32")
    assert bench.name.endswith(":32") and bench.configs == 31
    assert bench.facts()["left_out"] == [5]
    assert (5, 0) not in recorded_runs(path, MAX_T) and (6, 0) in recorded_runs(path, MAX_T)


def test_any_point_has_a_curve_and_held_out_ranks_hold(atlas_csv):
    result = surrogate.cross_validate(atlas_csv, folds=5)
    gp = result["models"]["gaussian-process"]
    assert gp["spearman_epoch24"] > 0.8, gp  # it learnt the landscape, not the noise
    assert "later_configs" not in result  # fitted on all: none were recorded after
    # Fitted on the first 32, the 8 recorded after it are ranked as they were recorded.
    later = surrogate.cross_validate(f"{atlas_csv}:32", folds=3)["later_configs"]
    assert later["configs"] == 8 and later["ids"] == [32, 39], later
    assert later["spearman_epoch24"] > 0.7, later
    bench = surrogate.load_surrogate(atlas_csv)
    point = {p.name: p.resolved_default() for p in bench.params}
    curve = bench.curve(point)
    assert len(curve) == MAX_T and [s for _, s in curve] == pytest.approx(
        [1.0 + e / 10 for e in range(1, MAX_T + 1)]
    )
    values = [v for v, _ in curve]
    assert values == sorted(values)  # saturating curves stay rising
    # A curve is the key's: any config of the same key has the same curve, and final()
    # of the key is the curve's best epoch.
    nudged = dict(point, lr=point["lr"] + 1e-9)
    assert bench.key(nudged) == bench.key(point) and bench.curve(nudged) == curve
    assert bench.final(bench.key(point)) == max(values)
    # Inactive conditionals are not part of a key (step_gamma without schedule: step).
    assert bench.key(dict(point, schedule="cosine", step_gamma=0.4)) == bench.key(
        dict(point, schedule="cosine")
    )
    assert bench.best >= max(values)
    wide, narrow = dict(point, base_filters=16), dict(point, base_filters=8)
    assert bench.final(bench.key(wide)) > bench.final(bench.key(narrow))


def test_repeats_measure_seed_noise_over_the_whole_atlas(atlas_csv, tmp_path):
    """Seed noise is the atlas's: a fit on the first 32 configs still counts the repeat of
    config 36 (bench/atlas.py runs its repeats after every seed-0 run)."""
    rows = list(csv.DictReader(atlas_csv.open(newline="")))
    again = [
        dict(r, seed="1", val_iou=str(round(float(r["val_iou"]) - 0.01, 5)))
        for r in rows
        if r["config_id"] in ("0", "12", "24", "36")
    ]
    path = tmp_path / "repeated.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + again)
    noise = surrogate.cross_validate(f"{path}:32", folds=3)["repeats"]
    assert noise["configs"] == 4
    assert noise["spearman_best_epoch_seed0_vs_seed1"] == 1.0  # the same order, 0.01 lower
    assert noise["mean_abs_diff_best_epoch"] == pytest.approx(0.01, abs=1e-4)


def test_peers_replay_on_the_surrogate(atlas_csv):
    from peers import run_peer

    bench = surrogate.load_surrogate(atlas_csv)
    runs, summary = run_peer(bench, "one-epoch-topk", [0, 1], budget=2, workdir=atlas_csv.parent)
    assert summary["runs"] == 2 and all(len(r.seen) <= 2 * MAX_T for r in runs)
    for run in runs:
        for value, key in run.seen:
            config = dict(zip((p.name for p in bench.params), key, strict=True))
            assert value in [v for v, _ in bench.curve(config)]


def test_docs_tables_are_the_jsons():
    """docs/search-evidence.md's tables are what bench/evidence.py renders from the JSONs."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "evidence.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_headroom_two_stages_and_best_of():
    """bench/headroom.py: best-of-M and the two-stage split, on curves whose answers are
    known (config i's curve rises to i / 100; epoch 1 ranks them exactly, or in reverse)."""
    import numpy as np
    from headroom import best_of, two_stage

    finals = np.arange(100) / 100
    rising = np.outer(finals, np.linspace(0.2, 1.0, 10))  # 100 configs x 10 epochs
    rng = np.random.default_rng(0)
    best = 0.99
    # Trained to the end, more draws can only help; one draw's median regret is ~0.5.
    one, many = best_of(rising, best, 1, 4000, rng), best_of(rising, best, 64, 4000, rng)
    assert 0.4 < float(np.median(one)) < 0.6 and float(np.median(many)) < 0.03
    # Budget of 2 full trainings (20 epochs): e=1, K=1 affords 11 configs at epoch 1.
    n, regrets = two_stage(rising, best, 1, 1, 20, 4000, rng)
    assert n == 11
    # epoch 1 ranks exactly: the pick is the best of 11, as good as best-of-11 trained fully
    assert (
        abs(float(np.median(regrets)) - float(np.median(best_of(rising, best, 11, 4000, rng))))
        < 0.02
    )
    # epoch 1 ranks in reverse: the continued config is the worst drawn
    reverse = rising.copy()
    reverse[:, 0] = 0.1 * (1.0 - finals)  # below every final: only its ranking matters
    _, fooled = two_stage(reverse, best, 1, 1, 20, 4000, rng)
    assert float(np.median(fooled)) > float(np.median(regrets)) + 0.2
    assert two_stage(rising, best, 1, 3, 20, 10, rng) is None  # 3 x 9 epochs > 20
