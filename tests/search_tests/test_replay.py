"""The replay on real Ray Tune: the trainable reports the recorded curve of the config the
real searcher proposed, and trials that ASHA stopped reach Optuna as PRUNED with their
per-epoch values (Ray's stock OptunaSearch tells them COMPLETE)."""

from __future__ import annotations

import optuna
import pytest

from pneumotune.search.replay import Strategy, load_atlas, run_one, summarise
from pneumotune.search.tuner import JOURNAL_FILE, journal_storage
from tests.search_tests.helpers import LEVELS, MAX_T, curve, write_atlas


@pytest.fixture(scope="module")
def atlas_csv(tmp_path_factory):
    return write_atlas(tmp_path_factory.mktemp("atlas") / "tiny.csv", first_seeds=(0, 1))


def test_atlas_table(atlas_csv):
    atlas = load_atlas(atlas_csv, {"lr": "1e-3", "width": "16"})
    assert atlas.axes == ("lr", "width") and atlas.max_t == MAX_T
    assert atlas.levels == LEVELS
    assert len(atlas.curves[("1e-3", "8")]) == 2  # two seeds recorded
    assert atlas.best == pytest.approx(curve("3e-3", "16", 0)[-1])
    assert atlas.tutorial == {"lr": "1e-3", "width": "16"}
    assert load_atlas(atlas_csv, {"lr": "5e-3", "width": "16"}).tutorial == {}
    best_cell, other = ("3e-3", "16"), ("1e-2", "8")
    runs = [[(atlas.best - 0.2, other), (atlas.best, best_cell)], [(atlas.best - 0.1, other)]]
    s = summarise(atlas, runs)
    assert s["median_regret"] == pytest.approx(0.05) and s["runs"] == 2
    assert s["never_within"] == 1 and s["median_epochs_to_best"] is None  # median of 2, never
    finals = sorted([atlas.final(best_cell), atlas.final(other)])
    assert s["median_picked_final"] == pytest.approx(sum(finals) / 2, abs=1e-4)


def _study(folder, name):
    return optuna.load_study(study_name=name, storage=journal_storage(folder))


@pytest.mark.slow
@pytest.mark.parametrize("fidelity", [True, False])
def test_replayed_curves_and_the_state_optuna_is_told(ray_local, atlas_csv, tmp_path, fidelity):
    atlas = load_atlas(atlas_csv)
    strategy = Strategy("tpe", asha=True, fidelity=fidelity, grace=1, reduction=2, startup=2)
    seen = run_one(atlas, strategy, seed=3, budget=3, scale=0.05, workdir=tmp_path)
    assert len(seen) == 3 * MAX_T
    assert all(cell in atlas.curves for _, cell in seen)

    study = _study(tmp_path / "s3", "s3")
    assert (tmp_path / "s3" / JOURNAL_FILE).is_file()
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 3
    states = {t.state for t in finished}
    for t in finished:
        curve = [v for v, _ in atlas.curves[(t.params["lr"], t.params["width"])][0]]
        values = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        assert values == curve[: len(values)], t.params  # the recorded curve, in order
        if fidelity:
            expected = optuna.trial.TrialState.COMPLETE
            if len(values) < MAX_T:
                expected = optuna.trial.TrialState.PRUNED
            assert t.state == expected, (len(values), t.state)
            assert t.value == values[-1]
    if fidelity:
        assert states == {optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE}
    else:
        # Ray's stock searcher: an ASHA-stopped trial is COMPLETE with its early score.
        assert states == {optuna.trial.TrialState.COMPLETE}
        assert any(len(t.intermediate_values) < MAX_T for t in finished)
