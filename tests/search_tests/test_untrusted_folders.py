"""Results folders someone else may have written: resume refuses what it would unpickle
from them, status/report/export read nothing outside them and say so, and hostile JSON
ends in one line, never a traceback.

Every test works on a copy of one real search (Ray Tune + OptunaSearch + ASHA over the
cheap trainable), changed the way a hostile or broken folder would be: real files, real
modes and owners (the tests run as root, so ``os.chown`` to uid 65534 works), real links.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import stat
import time
import zipfile
from pathlib import Path

import pytest

from pneumotune import cli
from pneumotune.errors import UsageError
from pneumotune.search.results import MAX_RESULT_BYTES, ResultsError, summarise
from pneumotune.search.tuner import (
    check_resumable,
    latest_experiment,
    plan_search,
    run_search,
)
from tests.search_tests.cheap import cheap_trial
from tests.search_tests.helpers import wiring_experiment

NAME = "trusted"
OTHER_UID = 65534  # nobody
SHARED_GID = 100  # "users": a group that is nobody's own
SECRET = "SECRET-LINE-FROM-ELSEWHERE"


def _experiment():
    return wiring_experiment(
        name="untrusted",
        epochs=2,
        num_samples=3,
        seed=5,
        max_failures=0,
        space={"img_size": "stored", "base_filters": [8, 16], "lr": [1.0e-3, 1.0e-2]},
    )


@pytest.fixture(scope="module")
def original(tiny_dataset, ray_local, tmp_path_factory):
    """A finished real search: its folder is never changed (tests change copies)."""
    storage = tmp_path_factory.mktemp("untrusted-original")
    plan = plan_search(_experiment(), tiny_dataset, name=NAME, storage=storage)
    run_search(plan, trainable=cheap_trial)
    return plan.path


@pytest.fixture
def folder(original, tmp_path):
    """A copy of the search under tmp_path/storage, modes as the search wrote them."""
    return Path(shutil.copytree(original, tmp_path / "storage" / NAME))


@pytest.fixture
def plan(folder, tiny_dataset):
    return plan_search(_experiment(), tiny_dataset, name=NAME, storage=folder.parent)


@pytest.fixture
def secret(tmp_path):
    """A file outside the search folder that nothing may print: an error file's format."""
    path = tmp_path / "elsewhere" / "secret.txt"
    path.parent.mkdir()
    path.write_text(f"Failure # 1 (occurred at 2030-01-01_00-00-00)\nRuntimeError: {SECRET}\n")
    return path


def _trials(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.name.startswith("trial_"))


def _state_file(folder: Path) -> Path:
    return sorted(folder.glob("experiment_state-*.json"))[-1]


def _edit_state(folder: Path, edit) -> None:
    """Apply ``edit(trial, runtime)`` (dicts, changed in place) to each trial's state."""
    path = _state_file(folder)
    raw = json.loads(path.read_text())
    rows = []
    for trial_json, runtime_json in raw["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        edit(trial, runtime)
        rows.append([json.dumps(trial), json.dumps(runtime)])
    raw["trial_data"] = rows
    path.write_text(json.dumps(raw))


class Planted:
    """Unpickling this creates ``marker``: the code a planted pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --------------------------------------------------------------------------- resume (pickles)


@pytest.mark.slow
def test_a_folder_of_yours_resumes(plan):
    check_resumable(plan.path)
    states = set(plan.path.glob("experiment_state-*.json"))
    summary = run_search(plan, resume=True, trainable=cheap_trial)
    assert set(plan.path.glob("experiment_state-*.json")) > states  # Tune restored it
    assert len(summary.trials) == 3
    assert all(t.outcome in ("completed", "stopped by ASHA") for t in summary.trials)


def test_a_planted_pickle_in_a_group_writable_folder_never_runs(plan, tmp_path):
    marker = tmp_path / "planted-code-ran"
    payload = pickle.dumps(Planted(marker))
    tuner_pkl = plan.path / "tuner.pkl"
    tuner_pkl.write_bytes(payload)
    os.chown(tuner_pkl, -1, SHARED_GID)
    tuner_pkl.chmod(0o664)  # what a member of a shared group could have written
    with pytest.raises(UsageError) as refused:
        run_search(plan, resume=True, trainable=cheap_trial)
    assert str(refused.value) == (
        f"refusing to resume {plan.path}: tuner.pkl is writable by group (mode 0664); resume "
        "unpickles this folder, so it must be yours and not writable by others: "
        f"chmod -R go-w {plan.path}"
    )
    assert not marker.exists()
    pickle.loads(payload)  # what the refusal prevented: the file runs code when unpickled
    assert marker.exists()


@pytest.mark.parametrize(
    ("where", "mode", "said"),
    [
        ("trial", 0o757, "writable by others (mode 0757)"),
        ("searcher", 0o666, "writable by group and others (mode 0666)"),
        ("folder", 0o775, "the folder is writable by group (mode 0775)"),
        ("checkpoint", 0o775, "writable by group (mode 0775)"),
    ],
)
def test_anything_others_can_write_is_refused(folder, where, mode, said):
    trial = _trials(folder)[0]
    path = {
        "trial": trial,
        "searcher": next(folder.glob("searcher-state-*.pkl")),
        "folder": folder,
        "checkpoint": next(trial.glob("checkpoint_*")),
    }[where]
    os.chown(path, -1, SHARED_GID)
    path.chmod(mode)
    with pytest.raises(UsageError, match="chmod -R go-w") as refused:
        check_resumable(folder)
    assert said in str(refused.value)
    os.system(f"chmod -R go-w {folder}")  # the fix the message gives
    check_resumable(folder)


def test_a_file_of_another_user_is_refused(folder):
    params = _trials(folder)[1] / "params.pkl"
    os.chown(params, OTHER_UID, OTHER_UID)
    with pytest.raises(UsageError) as refused:
        check_resumable(folder)
    text = str(refused.value)
    assert text.startswith(
        f"refusing to resume {folder}: {params.relative_to(folder)} is owned by "
    )
    assert f"(uid {OTHER_UID})" in text or f"uid {OTHER_UID}," in text
    assert "not by you" in text and "resume it as its owner" in text


def test_links_are_followed_only_inside_the_folder(folder, secret):
    state = next(folder.glob("search_gen_state-*.json"))  # a pickle despite its name
    kept = folder / "kept-state"
    state.rename(kept)
    state.symlink_to(kept)  # a link to a file in the folder: that file is checked
    check_resumable(folder)
    state.unlink()
    state.symlink_to(secret)
    with pytest.raises(UsageError, match=re.escape(f"is a link to {secret}, outside the folder")):
        check_resumable(folder)
    state.unlink()
    state.symlink_to(folder / "no-such-file")
    with pytest.raises(UsageError, match="is a link that leads nowhere"):
        check_resumable(folder)
    state.unlink()
    # The folder given through a link: the folder it leads to is checked.
    kept.rename(state)
    link = folder.parent / "via-link"
    link.symlink_to(folder)
    check_resumable(link)


def test_the_command_refuses_in_one_line_before_ray_starts(folder, capsys):
    (folder / "tuner.pkl").chmod(0o666)
    code = cli.main(
        ["search", "--config", "demo", "--resume", "--name", NAME, "--storage", str(folder.parent)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"pneumotune search: error: refusing to resume {folder}: tuner.pkl ")
    assert "Traceback" not in err and err.count("\n") == 1


def test_latest_search_is_one_of_yours(original, tmp_path, tiny_dataset):
    storage = tmp_path / "storage"
    storage.mkdir()
    mine = storage / "untrusted-1"
    theirs = storage / "untrusted-2"
    broken = storage / "untrusted-3"
    for folder in (mine, theirs, broken):
        shutil.copytree(original, folder)
        plan = json.loads((folder / "pneumotune.json").read_text())
        (folder / "pneumotune.json").write_text(json.dumps({**plan, "name": folder.name}))
        time.sleep(0.01)  # newest last
    (broken / "pneumotune.json").write_text('{"name": "untrusted-3", "epochs": ')
    os.chown(theirs, OTHER_UID, OTHER_UID)
    found = latest_experiment(storage, "untrusted")
    assert found.name == "untrusted-1" and found.data_dir == tiny_dataset
    # Named, another user's search is found, then refused.
    with pytest.raises(UsageError, match="the folder is owned by"):
        latest_experiment(storage, "untrusted", "untrusted-2")
    # A plan whose name is not its folder's (it would resume another path) does not count.
    (mine / "pneumotune.json").write_text(json.dumps({**plan, "name": "../untrusted-2"}))
    with pytest.raises(UsageError, match="no search of experiment 'untrusted' of yours"):
        latest_experiment(storage, "untrusted")


# --------------------------------------------------------------------------- paths out of it


def test_status_prints_nothing_from_outside_the_folder(folder, secret, tmp_path, capsys):
    trials = _trials(folder)
    # 1. error.txt as a link to another file, its trial marked as failed
    (trials[0] / "error.txt").symlink_to(secret)
    # 2. a trial folder named by an absolute path, holding its own error file
    outside = secret.parent / "trial_outside"
    outside.mkdir()
    (outside / "error.txt").write_text(secret.read_text())
    (outside / "params.json").write_text(json.dumps({"lr": 0.5}))
    # 3. a result.json that is a link out of the folder
    (trials[1] / "result.json").unlink()
    (trials[1] / "result.json").symlink_to(secret)
    first, second = trials[0].name, trials[2].name

    def edit(trial, runtime):
        if trial["relative_logdir"] == first:
            trial["status"] = "ERROR"
        if trial["relative_logdir"] == second:
            trial["status"] = "ERROR"
            trial["relative_logdir"] = str(outside)
        runtime["error_filename"] = str(secret)  # Tune's own record of it: not used

    _edit_state(folder, edit)
    assert cli.main(["status", str(folder)]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "Not read: " + f"{first}/error.txt leads outside the search folder: not read" in out
    assert f"{trials[1].name}/result.json leads outside the search folder" in out
    assert "'s folder leads outside the search folder" in out
    summary = summarise(folder)
    assert all(t.path is None or t.path.parent == folder for t in summary.trials)


def test_progress_reads_no_error_file_outside_the_trial(ray_local, secret, tmp_path):
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from pneumotune.search.watch.progress import ProgressLines

    storage = StorageContext(
        storage_path=str(tmp_path / "s"), experiment_dir_name="e", trial_dir_name="trial_x"
    )
    trial = Trial("cheap", stub=True, config={"lr": 1e-3}, trial_id="x", storage=storage)
    trial.run_metadata.error_filename = str(secret)  # absolute: os.path.join gives it back
    out = io.StringIO()
    ProgressLines("val_iou", "max", 2, out=out).on_trial_error(0, [], trial)
    assert SECRET not in out.getvalue()
    assert "its error file is not a file in the trial's folder: not read" in out.getvalue()


def _best_trial_dir(folder: Path) -> tuple[Path, Path]:
    best, checkpoint = summarise(folder).best_trial_checkpoint()
    return best.path, checkpoint


def test_export_loads_no_checkpoint_from_outside_the_folder(folder, original, tmp_path, capsys):
    trial_dir, checkpoint = _best_trial_dir(folder)
    original_trial = original / trial_dir.name
    elsewhere = tmp_path / "elsewhere-checkpoint"
    shutil.copytree(checkpoint, elsewhere)
    (elsewhere / "model.keras").write_bytes(b"a model from elsewhere")
    relative = os.path.relpath(elsewhere, trial_dir)
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    for row in rows:
        row["checkpoint_dir_name"] = relative  # "../../../elsewhere-checkpoint"
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = cli.main(["export", str(folder), "--out", str(tmp_path / "model")])
    err = capsys.readouterr().err
    assert code == 2
    assert "names checkpoints outside its folder" in err and err.count("\n") == 1
    # Absolute names, and a model file that is a link out of its checkpoint, the same.
    names = [row["checkpoint_dir_name"] for row in rows]
    for row in rows:
        row["checkpoint_dir_name"] = str(elsewhere)
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ResultsError, match="names checkpoints outside its folder"):
        summarise(folder).best_trial_checkpoint()
    shutil.rmtree(trial_dir)
    shutil.copytree(original_trial, trial_dir)
    for d in trial_dir.glob("checkpoint_*"):
        (d / "model.keras").symlink_to(elsewhere / "model.keras")
    with pytest.raises(ResultsError, match="names checkpoints outside its folder"):
        summarise(folder).best_trial_checkpoint()
    assert names


# --------------------------------------------------------------------------- hostile JSON


def _plan_text(folder: Path) -> dict:
    return json.loads((folder / "pneumotune.json").read_text())


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (lambda p: json.dumps({**p, "epochs": "ten"}), "epochs must be a whole number"),
        (lambda p: json.dumps({**p, "epochs": float("inf")}), "epochs must be a whole number"),
        (lambda p: json.dumps(p)[:-1] + ', "x": ' + "9" * 5000 + "}", "cannot be read"),
        (lambda p: json.dumps({k: v for k, v in p.items() if k != "metric"}), "metric must be"),
        (lambda p: json.dumps([p]), "a JSON object was expected"),
        (lambda p: json.dumps({**p, "name": "../../etc"}), "name must be a folder name"),
        (lambda p: json.dumps({**p, "mode": 1}), 'mode must be "max" or "min"'),
        (lambda p: json.dumps({**p, "searched": {"lr": 1}}), "searched must be"),
        (lambda p: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (lambda p: json.dumps({**p, "x": "y" * (2 << 20)}), "more than the 1 MB"),
    ],
)
def test_a_hostile_plan_file_is_one_line(folder, text, said, capsys):
    (folder / "pneumotune.json").write_text(text(_plan_text(folder)))
    assert cli.main(["status", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pneumotune status: error: {folder}/pneumotune.json")
    assert said in err and "Traceback" not in err and err.count("\n") == 1


def test_export_and_report_of_a_hostile_plan_are_one_line(folder, tmp_path, capsys):
    (folder / "pneumotune.json").write_text(json.dumps({**_plan_text(folder), "epochs": -3}))
    assert cli.main(["export", str(folder), "--out", str(tmp_path / "m")]) == 2
    assert cli.main(["report", str(folder), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("pneumotune export: error: ") and "epochs must be" in err[0]
    assert err[1].startswith("pneumotune report: error: ") and "epochs must be" in err[1]
    assert len(err) == 2


def test_status_reads_around_hostile_trial_files(folder, original, capsys):
    trials = _trials(folder)
    # Huge and non-finite numbers, wrong types, rows that are not objects.
    with (trials[0] / "result.json").open("a") as f:
        f.write(json.dumps({"training_iteration": 7, "val_iou": 10**400}) + "\n")
        f.write('{"training_iteration": 8, "val_iou": 1e999, "memory_mb": 1e999}\n')
        f.write(json.dumps({"training_iteration": "nine", "val_iou": 0.9}) + "\n")
        f.write(json.dumps([1, 2, 3]) + "\n")
    # A result.json past the cap (sparse: costs no disk), never read into memory.
    with (trials[1] / "result.json").open("r+b") as f:
        f.truncate(MAX_RESULT_BYTES + 1)
    # FIFOs where Tune's files were: reading one would block for ever.
    (trials[2] / "result.json").unlink()
    os.mkfifo(trials[2] / "result.json")
    late = folder / "trial_late"  # a trial the state does not know: its params.json is read
    late.mkdir()
    os.mkfifo(late / "params.json")
    # An error file with a failure count no int() takes, and escape sequences.
    (trials[0] / "error.txt").write_text(
        "Failure # " + "9" * 5000 + " (occurred at x)\n"
        "Failure # 1 (occurred at y)\nRuntimeError: \x1b[2Jcleared your screen\n"
    )

    def edit(trial, runtime):
        trial["status"] = "ERROR"
        trial["experiment_tag"] = "abc_x"
        trial["config"] = {**trial["config"], "base_filters": "\x1b]0;title\x07" + "w" * 500}
        runtime["num_failures"] = "lots"

    _edit_state(folder, edit)
    raw = json.loads(_state_file(folder).read_text())
    raw["trial_data"] += [[1, 2], ["{}", "{}"], [json.dumps({"trial_id": "../x"}), "{}"]]
    _state_file(folder).write_text(json.dumps(raw))

    assert cli.main(["status", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2Jcleared your screen" in out  # escaped, as ledgers write it
    assert "Not read: 3 trial state(s) of experiment_state-" in out
    assert f"Not read: {trials[0].name}/result.json" not in out  # its odd lines only
    assert f"2 line(s) of {trials[0].name}/result.json are not Tune's reports" in out
    assert f"{trials[1].name}/result.json is 64 MB, more than the 64 MB" in out
    assert f"{trials[2].name}/result.json is not a regular file: not read" in out
    assert "trial_late/params.json is not a regular file: not read" in out
    summary = summarise(folder)
    assert len(summary.trials) == 4
    first = next(t for t in summary.trials if t.path == trials[0])
    assert first.epochs == 8 and first.best("val_iou", "max")[0] < 1  # 10**400, inf: no score
    json.dumps(summary.to_json())
    assert cli.main(["report", str(folder), "--out", str(folder / "report")]) == 0


def test_a_state_file_past_its_cap_or_not_tunes_gives_the_folders_view(folder, capsys):
    state = _state_file(folder)
    state.write_text(json.dumps({"trial_data": "not a list"}))
    summary = summarise(folder)
    assert len(summary.trials) == 3
    assert summary.notes == [
        f"{state.name} is not Tune's experiment state: trial states come from the trial folders"
    ]
    with state.open("r+b") as f:
        f.truncate((256 << 20) + 1)
    assert "is 256 MB, more than the 256 MB" in summarise(folder).notes[0]


# --------------------------------------------------------------------------- sizes in files


@pytest.fixture
def keras_checkpoint(folder, tiny_dataset):
    """The best trial's best checkpoint with a real model.keras of its config in it."""
    from pneumotune.data.dataset import read_manifest
    from pneumotune.model.config import TrainConfig
    from pneumotune.model.train import build_model, compile_model

    best, checkpoint = summarise(folder).best_trial_checkpoint()
    cfg = TrainConfig.from_flat(best.config)
    labelled = read_manifest(tiny_dataset)["counts"]["labelled"]
    model = compile_model(build_model(cfg), cfg, n_train=labelled * 3 // 4)
    model.save(checkpoint / "model.keras")
    return checkpoint / "model.keras", cfg


def _set_total_steps(model_file: Path, value) -> None:
    """Rewrite the learning-rate table's total_steps in a saved model's config.json."""
    with zipfile.ZipFile(model_file) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    config["compile_config"]["optimizer"]["config"]["learning_rate"]["config"]["total_steps"] = (
        value
    )
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(model_file, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def test_export_checks_the_checkpoint_against_its_trial(
    folder, keras_checkpoint, tiny_dataset, tmp_path, capsys
):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the learning-rate table is TensorFlow's")
    from pneumotune.search.products.export_best import export_best

    model_file, cfg = keras_checkpoint
    exported = export_best(folder, tmp_path / "model")  # the real thing exports
    assert exported.config.img_size == cfg.img_size
    # A table claiming 10**9 steps: refused before anything is allocated for it.
    _set_total_steps(model_file, 10**9)
    t0 = time.perf_counter()
    code = cli.main(["export", str(folder), "--out", str(tmp_path / "m2")])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - t0 < 60
    assert f"{model_file}: a saved learning-rate table claims 1000000000 steps; its run " in err
    assert f"({cfg.epochs} epochs x " in err and err.count("\n") == 1


def test_export_refuses_a_model_of_another_size_or_kind(folder, keras_checkpoint, tmp_path):
    from pneumotune.search.products.export_best import export_best

    model_file, cfg = keras_checkpoint
    best, _ = summarise(folder).best_trial_checkpoint()
    other = 64 if cfg.img_size == 32 else 32
    _edit_config = {**best.config, "img_size": other}

    def edit(trial, runtime):
        if trial["trial_id"] == best.trial_id:
            trial["config"] = _edit_config

    _edit_state(folder, edit)
    with pytest.raises(ResultsError, match=f"its trial's config says img_size {other}"):
        export_best(folder, tmp_path / "m")

    _edit_state(folder, lambda trial, runtime: trial.update(config={"img_size": "big"}))
    with pytest.raises(ResultsError, match="is not a training config"):
        export_best(folder, tmp_path / "m")
    _edit_state(folder, lambda trial, runtime: trial.update(config=best.config))
    model_file.write_bytes(b"not a zip")
    with pytest.raises(ResultsError, match=r"model\.keras cannot be loaded: "):
        export_best(folder, tmp_path / "m")


def test_modes_are_what_a_fresh_search_writes(original):
    """The check passes a search as Tune writes it under a umask that gives no one else
    write access (022, 077): no false refusal."""
    umask = int(
        next(
            line.split()[1]
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("Umask:")
        ),
        8,
    )
    if umask & 0o022 != 0o022:
        pytest.skip(f"this process' umask {umask:04o} lets its files be written by others")
    check_resumable(original)
    for path in original.rglob("*"):
        assert not path.lstat().st_mode & (stat.S_IWGRP | stat.S_IWOTH), path


def test_group_write_in_a_group_of_ones_own_is_yours(folder):
    """Debian, Ubuntu and Fedora give each user a group of their own and umask 002: their
    searches are group-writable, yet writable by them alone. (The tests run as root, whose
    primary group, root, has no other member.)"""
    searcher = next(folder.glob("searcher-state-*.pkl"))
    os.chown(searcher, -1, os.getegid())
    searcher.chmod(0o664)
    check_resumable(folder)
