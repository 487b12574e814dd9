"""The search report and `status --watch` on real Tune experiment folders.

A real search (Ray Tune + OptunaSearch + ASHA) over the cheap trainable builds the
folder in seconds: 8 trials, ASHA stops, one planted failure, a conditional parameter,
the experiment read from a YAML file (so the report finds the searched ranges). A tiny
untrained ResUNet saved into the best checkpoint stands in for a trained one for the
predictions figure; the slow test runs a real tiny ResUNet search end to end.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console

from pneumotune import cli
from pneumotune.data.dataset import read_meta
from pneumotune.reports.figures import empty_axes
from pneumotune.search.config import load_experiment, parse_experiment
from pneumotune.search.reports import plots, report
from pneumotune.search.reports.importance import (
    MIN_FINISHED_TRIALS,
    distributions,
    finished_trials,
    load_specs,
    param_importances,
)
from pneumotune.search.results import PLAN_FILE, summarise
from pneumotune.search.tuner import plan_search, run_search
from pneumotune.search.watch.table import is_finished, watch
from tests.search_tests.cheap import cheap_trial

YAML = """\
name: report
epochs: 4
num_samples: 8
max_concurrent: 2
seed: 3
max_failures: 0
asha: {grace_period: 1, reduction_factor: 2}
fixed: {depth: 2}
space:
  img_size: stored
  base_filters: [8, 16, 32]
  lr: {low: 1.0e-4, high: 1.0e-2, log: true}
  schedule: [cosine, cosine_restarts]
  restart_cycles: {choices: [2, 3], when: {schedule: cosine_restarts}}
"""
SECTIONS = (
    "overview",
    "trials",
    "curves",
    "best_so_far",
    "parallel",
    "importance",
    "best_vs_tutorial",
    "predictions",
)
FAIL_BELOW_LR = 2.0e-4  # trials below this lr fail at epoch 2 (seed 3 samples some)
PLANTED = "planted failure at epoch 2"


def make_failing_trial(fail_below_lr: float):
    """The cheap trainable, except that a low-lr trial reports a score good enough for ASHA
    to keep it at epoch 1, then raises: a failure after an epoch, with a curve to mark."""

    def trial(config, data):
        import tempfile

        from ray import tune

        if config["lr"] >= fail_below_lr:
            return cheap_trial(config, data)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"epoch": 1}))
            tune.report({"val_iou": 0.3}, checkpoint=tune.Checkpoint.from_directory(d))
        raise RuntimeError(PLANTED)

    return trial


@pytest.fixture(scope="module")
def search_dir(tiny_dataset, ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "report.yaml").write_text(YAML)
    exp = load_experiment(root / "report.yaml")
    plan = plan_search(exp, tiny_dataset, name="report", storage=root / "results")
    run_search(plan, trainable=make_failing_trial(FAIL_BELOW_LR))
    return plan.path


@pytest.fixture(scope="module")
def without_model(search_dir, tmp_path_factory):
    """The report before any checkpoint holds a Keras model (the cheap trainable's own)."""
    return report.report_search(search_dir, tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def with_model(search_dir, without_model, tmp_path_factory):
    """A tiny untrained ResUNet of the best trial's config saved into its best checkpoint."""
    from pneumotune.model.config import TrainConfig
    from pneumotune.model.train import build_model
    from pneumotune.search.checkpoint import MODEL_FILE

    summary = summarise(search_dir)
    best = summary.best
    checkpoint = best.best_checkpoint(summary.metric, summary.mode)
    model = build_model(TrainConfig.from_flat({**best.config, "base_filters": 4}))
    model.save(checkpoint / MODEL_FILE)
    return report.report_search(search_dir, tmp_path_factory.mktemp("full"))


def _html(result) -> str:
    return result.html.read_text(encoding="utf-8")


def _section_html(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}".*?</section>', page, re.S)
    assert match, f"section {key} missing"
    return match.group(0)


def _not_blank(png: bytes) -> bool:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    return image is not None and image.size > 0 and float(image.std()) > 5.0


def test_the_search_has_what_the_report_must_show(search_dir):
    summary = summarise(search_dir)
    counts = summary.counts()
    assert counts.get("stopped by ASHA", 0) >= 1, summary.describe()
    assert counts.get("failed", 0) >= 1, summary.describe()
    assert len(finished_trials(summary)) >= MIN_FINISHED_TRIALS, summary.describe()
    assert summary.tutorial is not None and summary.best is not None
    assert any("restart_cycles" in t.config for t in summary.trials)
    assert any("restart_cycles" not in t.config for t in summary.trials)
    assert json.loads((search_dir / PLAN_FILE).read_text())["experiment_source"]


def test_every_section_is_present_with_data(with_model):
    page = _html(with_model)
    assert with_model.sections == SECTIONS
    assert set(with_model.figures) == set(SECTIONS) - {"overview", "trials"}
    for key in SECTIONS:
        _section_html(page, key)
    for key, path in with_model.figures.items():
        png = path.read_bytes()
        assert _not_blank(png), f"{key}.png is blank"
        # The page embeds the same picture: it opens offline, without the PNG files.
        assert base64.b64encode(png).decode("ascii") in _section_html(page, key)
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_every_figure_draws_data(search_dir):
    summary = summarise(search_dir)
    specs, _ = load_specs(json.loads((search_dir / PLAN_FILE).read_text()))
    imp = param_importances(summary, specs)
    figures = {
        "curves": plots.fig_curves(summary),
        "best_so_far": plots.fig_best_so_far(summary),
        "parallel": plots.fig_parallel(summary, specs),
        "importance": plots.fig_importance(imp.values),
        "best_vs_tutorial": plots.fig_best_vs_tutorial(summary),
    }
    for name, fig in figures.items():
        assert fig is not None, name
        assert not empty_axes(fig), name


def test_curves_mark_asha_stops_and_failures(search_dir):
    summary = summarise(search_dir)
    fig = plots.fig_curves(summary)
    markers = [line.get_marker() for line in fig.axes[0].lines]
    stopped = sum(t.outcome == "stopped by ASHA" for t in summary.trials)
    failed = sum(t.outcome == "failed" and bool(t.history) for t in summary.trials)
    assert markers.count("x") == stopped
    assert markers.count("X") == failed
    assert markers.count("*") == 1  # the best trial's best epoch


def test_best_so_far_counts_every_trial_epoch(search_dir):
    summary = summarise(search_dir)
    events = plots.epoch_events(summary)
    assert len(events) == sum(len(t.history) for t in summary.trials)
    best_line = plots.fig_best_so_far(summary).axes[0].lines[0]
    ys = best_line.get_ydata()
    assert list(ys) == sorted(ys)  # never goes down (val_iou: higher is better)
    assert ys[-1] == pytest.approx(summary.best.best(summary.metric, summary.mode)[0])


def test_overview_counts_outcomes_and_shows_failure_reasons(with_model, search_dir):
    summary = summarise(search_dir)
    overview = _section_html(_html(with_model), "overview")
    for outcome, n in summary.counts().items():
        assert f"<td>trials {outcome}</td><td>{n}</td>" in overview
    assert f"<td>trial-epochs used</td><td>{summary.trial_epochs} (" in overview
    assert PLANTED in overview
    for t in summary.trials:
        if t.outcome == "failed":
            assert f"<td>{t.trial_id}</td>" in overview
    gain = summary.gain_over_tutorial()
    assert f"{gain:+.4f} val_iou" in overview


def test_importance_has_a_number_for_each_searched_parameter(with_model, search_dir):
    summary = summarise(search_dir)
    section = _section_html(_html(with_model), "importance")
    cells = dict(re.findall(r"<tr[^>]*><td>([\w.]+)</td><td>([^<]+)</td>", section))
    finished = finished_trials(summary)
    for name in summary.searched:
        if any(name in t.config for t in finished):
            assert re.fullmatch(r"\d\.\d{3}", cells[name]), (name, cells)
    imp = param_importances(
        summary, load_specs(json.loads((search_dir / PLAN_FILE).read_text()))[0]
    )
    assert sum(imp.values.values()) == pytest.approx(1.0)
    assert "PED-ANOVA" in section
    # The ranges came from the YAML: no note about inferred ranges.
    assert "inferred" not in section


def test_importance_says_what_it_needs_with_too_few_trials(search_dir):
    summary = summarise(search_dir)
    few = dataclasses.replace(summary, trials=finished_trials(summary)[: MIN_FINISHED_TRIALS - 1])
    imp = param_importances(few, {})
    assert not imp.values
    assert f"needs at least {MIN_FINISHED_TRIALS} finished trials" in imp.reason
    section = report.importance_section(imp)
    assert section.png is None and imp.reason in section.paragraphs


def test_distributions_from_the_yaml_or_inferred(search_dir):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    summary = summarise(search_dir)
    trials = finished_trials(summary)
    specs, why = load_specs(json.loads((search_dir / PLAN_FILE).read_text()))
    assert why == ""
    dists, notes = distributions(summary, trials, specs)
    assert dists["lr"] == FloatDistribution(1.0e-4, 1.0e-2, log=True)
    assert dists["base_filters"] == CategoricalDistribution([8, 16, 32])
    assert set(dists["img_size"].choices) >= {t.config["img_size"] for t in trials}
    assert notes == []
    inferred, notes = distributions(summary, trials, {})
    lrs = [t.config["lr"] for t in trials]
    assert inferred["lr"].low == min(lrs) and inferred["lr"].high == max(lrs)
    assert notes and "range of values the trials used" in notes[0]
    # A conditional parameter gets a distribution from the trials that sampled it.
    if any("restart_cycles" in t.config for t in trials):
        assert set(inferred["restart_cycles"].choices) <= {2, 3}


def test_best_vs_tutorial_highlights_the_differences(search_dir):
    summary = summarise(search_dir)
    plan = json.loads((search_dir / PLAN_FILE).read_text())
    section = report.best_vs_tutorial_section(summary, plan)
    table = section.tables[0]
    best, tut = summary.best, summary.tutorial
    assert best is not tut  # the cheap score peaks at lr 1e-3 with wide filters: TPE beats it
    differing = {r[0] for i, r in enumerate(table.rows) if i in table.marked}
    expected = {
        p
        for p in summary.searched
        if (p in best.config or p in tut.config) and best.config.get(p) != tut.config.get(p)
    }
    assert differing == expected and differing
    assert all(r[3] == "differs" for i, r in enumerate(table.rows) if i in table.marked)
    assert section.png is not None


def test_predictions_section(without_model, with_model):
    plain = _section_html(_html(without_model), "predictions")
    assert "holds no model.keras" in plain
    assert "predictions" not in without_model.figures
    full = _section_html(_html(with_model), "predictions")
    assert "validation fold" in full and "positive" in full
    assert _not_blank(with_model.figures["predictions"].read_bytes())


def test_parallel_axes_place_values_in_the_searched_range():
    from pneumotune.search.config import ParamSpec

    sizes = plots.param_axis("img_size", [64, 64, 32, 64], ParamSpec("img_size", ("stored",)))
    assert (sizes.position(32), sizes.position(64)) == (0.0, 1.0)
    lr = plots.param_axis("lr", [1e-3], ParamSpec("lr", low=1e-4, high=1e-2, log=True))
    assert lr.kind == "log" and lr.position(1e-3) == pytest.approx(0.5)
    assert [label for _, label in lr.ticks()] == ["0.0001", "0.001", "0.01"]
    observed = plots.param_axis("loss_bce", [1.0, 3.0, 2.0], None)
    assert observed.kind == "linear" and observed.position(2.0) == pytest.approx(0.5)


def test_report_of_a_search_that_has_not_started(search_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(search_dir / PLAN_FILE, empty / PLAN_FILE)
    result = report.report_search(empty, tmp_path / "out")
    assert result.running and result.sections == SECTIONS and not result.figures
    page = _html(result)
    assert "No trial has reported an epoch yet." in page
    assert f"needs at least {MIN_FINISHED_TRIALS} finished trials" in page
    assert "No trial has a score yet" in page


def test_no_image_or_patient_identifier_in_the_page(with_model, tiny_dataset):
    page = _html(with_model)
    meta = read_meta(tiny_dataset)
    for value in [*meta["image_id"], *meta["patient_id"].dropna()]:
        assert str(value) not in page


def test_report_command_detects_a_search_directory(search_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["report", str(search_dir), "--out", str(out), "--samples", "2"]) == 0
    assert "Wrote the search report" in capsys.readouterr().out
    assert "Search report: report" in (out / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- running searches
@pytest.fixture
def running_copy(search_dir, tmp_path):
    """A copy of the search as it looked mid-run: a trial back to RUNNING after one epoch,
    no search.json yet. ``finish()`` puts the finished files back, as the search would."""
    copy = tmp_path / "running"
    shutil.copytree(search_dir, copy, ignore=shutil.ignore_patterns("report"))
    state_file = sorted(copy.glob("experiment_state-*.json"))[-1]
    finished_state = state_file.read_text()
    raw = json.loads(finished_state)
    trial_json, runtime = raw["trial_data"][0]  # the tutorial point: ran all epochs
    trial = json.loads(trial_json)
    trial["status"] = "RUNNING"
    raw["trial_data"][0] = [json.dumps(trial), runtime]
    state_file.write_text(json.dumps(raw))
    results = copy / trial["relative_logdir"] / "result.json"
    full = results.read_text()
    results.write_text(full.splitlines()[0] + "\n")
    search_json = (copy / "search.json").read_text()
    (copy / "search.json").unlink()

    def finish() -> None:
        state_file.write_text(finished_state)
        results.write_text(full)
        (copy / "search.json").write_text(search_json)

    return copy, finish


def test_report_of_a_running_search_shows_what_exists(running_copy, tmp_path):
    copy, _ = running_copy
    result = report.report_search(copy, tmp_path / "out")
    assert result.running
    page = _html(result)
    assert "The search is still running (1 trials running" in page
    assert "<td>trials running</td><td>1</td>" in page
    assert "curves" in result.figures and "best_so_far" in result.figures


def test_status_watch_renders_and_exits_when_the_search_finishes(running_copy):
    copy, finish = running_copy
    assert not is_finished(summarise(copy))
    naps = []

    def nap(seconds: float) -> None:  # the search finishes while the watcher sleeps
        naps.append(seconds)
        finish()

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    last = watch(copy, 0.5, console=console, sleep=nap)
    assert naps == [0.5]
    assert is_finished(last)
    text = out.getvalue()
    assert "running" in text and "finished" in text
    for t in last.trials:
        assert t.trial_id in text


def test_status_watch_without_a_terminal_prints_plain_text_once(search_dir, capsys):
    assert cli.main(["status", str(search_dir), "--watch", "--interval", "0.1"]) == 0
    out = capsys.readouterr().out
    summary = summarise(search_dir)
    assert out.count(f"Search {summary.name} at") == 1
    assert "Best trial" in out and PLANTED in out


def test_status_watch_rejects_a_bad_interval(search_dir, capsys):
    assert cli.main(["status", str(search_dir), "--watch", "--interval", "0"]) == 2
    assert "--interval must be > 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real search
@pytest.mark.slow
def test_report_of_a_tiny_real_resunet_search(tiny_dataset, ray_local, tmp_path):
    exp = parse_experiment(
        {
            "name": "tiny-report",
            "epochs": 1,
            "num_samples": 2,
            "max_concurrent": 2,
            "seed": 0,
            "fixed": {"depth": 2, "batch_size": 8, "img_size": 32},
            "space": {"base_filters": [4, 8], "lr": {"low": 3.0e-4, "high": 3.0e-3, "log": True}},
        }
    )
    plan = plan_search(exp, tiny_dataset, name="tiny", storage=tmp_path / "results")
    summary = run_search(plan)
    assert all(t.outcome == "completed" for t in summary.trials), summary.describe()
    result = report.report_search(plan.path, tmp_path / "out", samples=4)
    page = _html(result)
    assert "predictions" in result.figures
    assert _not_blank(result.figures["predictions"].read_bytes())
    assert f"needs at least {MIN_FINISHED_TRIALS} finished trials" in page
    # The experiment did not come from a file: the parallel axes say their ranges are observed.
    assert "the search recorded no experiment YAML" in _section_html(page, "parallel")
