"""The experiment YAML: shipped files load, bad files fail with messages that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pneumotune.search.config import ConfigError, check_name, load_experiment, parse_experiment

GOOD = {
    "name": "t",
    "epochs": 4,
    "fixed": {"depth": 3, "batch_size": 8},
    "space": {
        "img_size": "stored",
        "base_filters": [8, 16],
        "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True, "default": 1.0e-3},
        "schedule": ["cosine", "cosine_restarts"],
        "restart_cycles": {"choices": [2, 3], "when": {"schedule": "cosine_restarts"}},
        "augment.flip_p": {"low": 0.0, "high": 1.0},
    },
}


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_good_file_and_defaults(tmp_path):
    exp = load_experiment(_write(tmp_path, GOOD))
    assert exp.metric == "val_iou" and exp.mode == "max"
    exp = exp.resolve_sizes([64, 128])
    assert exp.param("img_size").choices == (64, 128)
    cfg = exp.default_train_config()
    # fixed values, then the first choice / the given default / the range midpoint
    assert (cfg.depth, cfg.batch_size, cfg.img_size, cfg.base_filters) == (3, 8, 64, 8)
    assert cfg.lr == 1.0e-3 and cfg.schedule == "cosine" and cfg.augment.flip_p == 0.5
    assert cfg.epochs == 4
    assert exp.default_train_config(epochs=2).epochs == 2


@pytest.mark.parametrize(
    ("num_samples", "startup_trials", "expected"),
    [(1, None, 2), (8, None, 2), (20, None, 5), (100, None, 10), (8, 6, 6)],
)
def test_tpe_starts_modelling_after_a_quarter_of_the_trials(
    tmp_path, num_samples, startup_trials, expected
):
    raw = {**GOOD, "num_samples": num_samples}
    if startup_trials is not None:
        raw["startup_trials"] = startup_trials
    assert load_experiment(_write(tmp_path, raw)).tpe_startup_trials == expected


@pytest.mark.parametrize("name", ["demo", "siim"])
def test_shipped_experiments_load_by_name(name):
    exp = load_experiment(name)
    assert exp.name == name
    sizes = [64, 128] if name == "demo" else [256, 512, 1024]
    exp.resolve_sizes(sizes).default_train_config()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"epochs": 0}, "must be >= 1"),
        ({"startup_trials": 0}, "startup_trials must be >= 1"),
        ({"metric": "accuracy"}, "metric must be one of"),
        ({"colour": 1}, "unknown key(s) ['colour']"),
        ({"fixed": {"learning_rate": 0.1}}, "unknown parameter 'learning_rate'"),
        ({"fixed": {"lr": 0.1}}, "['lr'] are both fixed and searched"),
        ({"asha": {"grace_period": 9}}, "asha.grace_period must be in 1..epochs"),
        ({"asha": {"eta": 3}}, "unknown asha key(s) ['eta']"),
        ({"resources": {"gpu": 1.5}}, "whole number"),
        ({"fixed": {"depth": 3, "batch_size": 0}}, "batch_size must be >= 1"),
        ({"warm_trials": "yes"}, "warm_trials and enqueue_tutorial must be true or false"),
        # The name becomes a folder under the storage path: nothing that leaves it.
        ({"name": "../../etc"}, "experiment name '../../etc' is not allowed"),
        ({"name": "/tmp/x"}, "experiment name '/tmp/x' is not allowed"),
        ({"name": ".hidden"}, "is not allowed"),
        ({"name": "a\x1b[2Jb"}, "is not allowed"),
        ({"name": 7}, "experiment name '7' is not allowed"),
    ],
)
def test_bad_top_level_values(tmp_path, change, fragment):
    raw = {**GOOD, **change}
    with pytest.raises(ConfigError, match=_escape(fragment)) as info:
        load_experiment(_write(tmp_path, raw))
    assert str(tmp_path / "exp.yaml") in str(info.value)  # the message names the file


@pytest.mark.parametrize(
    ("param", "spec", "fragment"),
    [
        ("lr", {"low": 0.1, "high": 0.01}, "low must be < high"),
        ("lr", {"low": 0.0, "high": 0.1, "log": True}, "log range needs low > 0"),
        ("lr", {"low": 0.1}, "needs both low and high"),
        ("lr", {"low": 1e-4, "high": 1e-2, "default": 1.0}, "outside"),
        ("base_filters", {"choices": []}, "non-empty list"),
        ("base_filters", {"choices": [8], "default": 16}, "not one of the choices"),
        ("base_filters", "stored", "only meaningful for img_size"),
        ("base_filters", {"choices": [8], "steps": 2}, "unknown key(s) ['steps']"),
        ("restart_cycles", {"choices": [2], "when": {"sched": "x"}}, "not a parameter"),
    ],
)
def test_bad_parameters(tmp_path, param, spec, fragment):
    raw = {**GOOD, "space": {**GOOD["space"], param: spec}}
    with pytest.raises(ConfigError, match=_escape(fragment)):
        load_experiment(_write(tmp_path, raw))


def test_sizes_must_be_stored():
    raw = {**GOOD, "space": {**GOOD["space"], "img_size": [64, 256]}}
    exp = parse_experiment(raw)
    with pytest.raises(ConfigError, match=r"img_size \[256\] is not stored"):
        exp.resolve_sizes([64, 128])


def test_missing_file_lists_shipped(tmp_path):
    with pytest.raises(ConfigError, match="shipped experiments"):
        load_experiment(tmp_path / "nope.yaml")


def test_yaml_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_experiment(path)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("name", ["demo", "siim-512_v2.1", "A" * 100])
def test_safe_names_pass(name):
    assert check_name(name, "--name") == name


@pytest.mark.parametrize("name", ["", "..", "a/b", "A" * 101, "ünïcode", "a b"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ConfigError, match="--name: experiment name"):
        check_name(name, "--name")
