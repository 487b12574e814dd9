"""What the stock Ray dashboard shows of a search, read through its REST API with the token,
as a user's browser would: trial actors named with their id and settings, epoch lines in
their logs, the experiment on the job, per-trial series at the node's metrics port, the
Optuna study in a Journal file; and a second search beside a running one."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml

from pneumotune.search.tuner import journal_storage
from pneumotune.search.watch.trial_telemetry import (
    epoch_line,
    resume_line,
    runner_label,
    trial_label,
    trial_state_counts,
)

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("config", "label"),
    [
        (
            {"img_size": 64, "base_filters": 8, "lr": 0.00123456, "schedule": "cosine", "x": 1},
            "trial_ab12 img_size=64 base_filters=8 lr=0.00123 schedule=cosine",
        ),
        (
            {"lr": 0.001, "batch_size": 16, "depth": 4, "img_size": 64, "base_filters": 8},
            "trial_ab12 img_size=64 base_filters=8 depth=4 lr=0.001 batch_size=16",
        ),
        ({"lr": 0.001}, "trial_ab12 lr=0.001"),
        ({}, "trial_ab12"),
    ],
)
def test_trial_label(config, label):
    assert trial_label("ab12", config) == label


def test_epoch_and_resume_lines():
    metrics = {"val_iou": 0.5, "val_dice": 0.6, "loss": 1.25, "epoch_seconds": 4.04, "lr": 1e-3}
    assert epoch_line("ab12", 3, 24, metrics) == (
        "trial_ab12 epoch   3/24  loss 1.2500  val_iou 0.5000  val_dice 0.6000  lr 1.00e-03  4.0 s"
    )
    metrics["images_per_s"] = 512.4
    assert epoch_line("ab12", 3, 24, metrics).endswith("  4.0 s (512 img/s)")
    assert epoch_line("ab12", 1, 2, {}) == "trial_ab12 epoch   1/2"
    assert resume_line("ab12", 5, 24) == "trial_ab12 resumed from its checkpoint after epoch 5/24"


@dataclass
class _Trial:  # the two attributes of a Tune Trial the counts read
    status: str
    last_result: dict


def test_trial_state_counts():
    trials = [
        _Trial("RUNNING", {"training_iteration": 1}),
        _Trial("PENDING", {}),
        _Trial("TERMINATED", {"training_iteration": 2}),
        _Trial("TERMINATED", {"training_iteration": 6}),
        _Trial("ERROR", {"training_iteration": 3}),
    ]
    assert trial_state_counts(trials, 6) == {
        "running": 2,
        "stopped": 1,
        "completed": 1,
        "failed": 1,
    }


# --------------------------------------------------------------------------- real search


def _token() -> str:
    done = subprocess.run(
        [str(BIN / "ray"), "get-auth-token"], capture_output=True, text=True, timeout=60
    )
    token = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if not token:
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    return token


def _get(url: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
        # The dashboard dropped the connection (seen once on a loaded 2-core CI machine,
        # on the log endpoint, which proxies to the node's agent): status 0, so that a
        # polling loop asks again and a single request fails with the reason.
        return 0, f"{type(exc).__name__}: {exc}"


def _actor(url: str, token: str, wanted, alive: bool = True, timeout: float = 240) -> dict:
    """The first actor of the dashboard's Actors table that ``wanted(actor)`` accepts (and
    is ALIVE, if ``alive``), polled for until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _get(f"{url}/logical/actors", token)
        assert status in (0, 200), body[:300]
        if status == 200:
            for a in json.loads(body)["data"]["actors"].values():
                a["reprName"] = a.get("reprName") or ""
                if (a.get("state") == "ALIVE" or not alive) and wanted(a):
                    return a
        time.sleep(1)
    raise AssertionError("no such actor appeared in the dashboard's Actors table")


def _experiment(tmp_path: Path, name: str, epochs: int, concurrent: int, grace: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "metric": "val_iou",
                "epochs": epochs,
                "num_samples": 2,
                "max_concurrent": concurrent,
                "max_failures": 0,
                "resources": {"cpu": 1, "gpu": 0},
                "asha": {"grace_period": grace, "reduction_factor": 2},
                "fixed": {"img_size": 32, "depth": 2, "batch_size": 8, "base_filters": 4},
                "space": {"lr": {"low": 1.0e-3, "high": 3.0e-3, "log": True}},
            }
        )
    )
    return path


def _start(tmp_path: Path, config: Path, dataset: Path, name: str) -> subprocess.Popen:
    log = (tmp_path / f"{name}.log").open("w")
    return subprocess.Popen(
        [str(BIN / "pneumotune"), "search", "--config", str(config), "--data", str(dataset),
         "--storage", str(tmp_path / "results"), "--name", name],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )  # fmt: skip


def _dashboard_url(log: Path, proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"Ray dashboard\s+(http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return found.group(1)
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no dashboard URL printed:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_running_search_in_the_dashboard_and_a_second_search_beside_it(tiny_dataset, tmp_path):
    token = _token()
    # Two trials one after the other, neither stopped early: the second runs in the first
    # one's actor (warm_trials, on by default).
    # 80 epochs each: the search must outlive the reads below on a loaded machine (with 30
    # it once ended before its runner's log was read: connection refused).
    watched = _experiment(tmp_path, "watched", 80, 1, grace=80)
    first = _start(tmp_path, watched, tiny_dataset, "watched")
    try:
        url = _dashboard_url(tmp_path / "watched.log", first)
        # A second search while the first holds its dashboard port: its own Ray, the next
        # free loopback port, and both complete.
        second = _start(tmp_path, _experiment(tmp_path, "beside", 1, 1), tiny_dataset, "beside")
        url_beside = _dashboard_url(tmp_path / "beside.log", second)
        assert url_beside != url

        assert _get(f"{url}/logical/actors", None)[0] == 401  # token auth is on
        # The running trial, named with its id and settings by its tag actor, and the
        # actor that trains it (the pid the tag names).
        tag = _actor(url, token, lambda a: a["reprName"].startswith("trial_"))
        found = re.fullmatch(
            r"trial_(\w+) img_size=32 base_filters=4 depth=2 lr=[0-9.e-]+ schedule=\w+ "
            r"batch_size=\d+ runner pid=(\d+)",
            tag["reprName"],
        )
        assert found, tag["reprName"]
        trial_id, pid = found.group(1), int(found.group(2))
        assert (tmp_path / "results" / "watched" / f"trial_{trial_id}").is_dir()
        runner = _actor(url, token, lambda a: a["reprName"] == runner_label(pid))
        assert int(runner["pid"]) == pid and tag["pid"] != runner["pid"]

        # Its log: a line per epoch with the validation metrics.
        lines, deadline = [], time.monotonic() + 120
        while len(lines) < 2 and time.monotonic() < deadline:
            status, text = _get(
                f"{url}/api/v0/logs/file?actor_id={runner['actorId']}&suffix=out&lines=1000", token
            )
            lines = [x for x in text.splitlines() if x.startswith(f"trial_{trial_id} epoch ")]
            time.sleep(1)
        assert len(lines) >= 2, text[-2000:]
        assert "val_iou" in lines[0] and "val_dice" in lines[0] and "loss" in lines[0]

        # The job carries the experiment's name.
        status, body = _get(f"{url}/api/jobs/", token)
        assert status == 200
        jobs = [j for j in json.loads(body) if j["metadata"].get("experiment") == "watched"]
        assert jobs and jobs[0]["metadata"]["job_name"] == "watched"  # the Name column

        # The node's metrics export port has the trial's series (Ray exports every ~10 s).
        _, body = _get(f"{url}/nodes?view=summary", token)
        port = json.loads(body)["data"]["summary"][0]["raylet"]["metricsExportPort"]
        patterns = (
            rf'ray_pneumotune_trial_metric\{{[^}}]*trial_id="{trial_id}"',
            r'ray_pneumotune_trial_epoch\{[^}]*experiment="watched"',
            r'ray_pneumotune_search_trials\{[^}]*experiment="watched"',  # the driver's
        )
        series, deadline = "", time.monotonic() + 120
        while time.monotonic() < deadline:
            series = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20)
            series = series.read().decode()
            if all(re.search(p, series) for p in patterns):
                break
            time.sleep(2)
        for pattern in patterns:
            assert re.search(pattern, series), [x for x in series.splitlines() if "pneumo" in x]

        # The next trial runs in the same actor, and its own tag names it there.
        tag2 = _actor(
            url, token, lambda a: re.fullmatch(rf"trial_\w+ .* runner pid={pid}", a["reprName"])
            and not a["reprName"].startswith(f"trial_{trial_id} "), alive=False,
        )  # fmt: skip
        trial2 = tag2["reprName"].split()[0]
        assert (tmp_path / "results" / "watched" / trial2).is_dir()

        assert second.wait(timeout=400) == 0, (tmp_path / "beside.log").read_text()[-3000:]
        assert first.wait(timeout=400) == 0, (tmp_path / "watched.log").read_text()[-3000:]
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None and proc.poll() is None:
                proc.kill()

    out = (tmp_path / "watched.log").read_text()
    journal = tmp_path / "results" / "watched" / "optuna.journal"
    assert f"optuna-dashboard {journal}" in out and "tensorboard --logdir" in out
    assert "ray get-auth-token" in out
    study = optuna.load_study(study_name="watched", storage=journal_storage(journal.parent))
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state.is_finished() and set(t.params) == {"lr"}
        assert len(t.intermediate_values) >= 1


@pytest.mark.slow
def test_a_warm_trials_tag_has_the_trials_lines_in_its_log(tmp_path):
    """Issue 23: the row that names a trial (its tag) shows the trial's epoch lines, even
    those sent before the tag was ALIVE and right before the trial ended."""
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.search_tests.tag_log_driver", str(tmp_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[2],
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    try:
        deadline = time.monotonic() + 400
        while not (tmp_path / "info.json").exists() and time.monotonic() < deadline:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(1)
        info = json.loads((tmp_path / "info.json").read_text())
        url, sent, token = info["url"], info["sent"], _token()
        assert len(sent) == 2, info

        runners, sent_before_alive = set(), []
        for trial_id, sent_at in sent.items():
            named = f"trial_{trial_id} "
            tag = _actor(url, token, lambda a, named=named: a["reprName"].startswith(named), False)
            runners.add(tag["reprName"].rsplit("runner pid=", 1)[1])
            lines, deadline = [], time.monotonic() + 120
            while len(lines) < 2 and time.monotonic() < deadline:
                _, text = _get(
                    f"{url}/api/v0/logs/file?actor_id={tag['actorId']}&suffix=out&lines=1000",
                    token,
                )
                lines = [x for x in text.splitlines() if x.startswith("trial_")]
                time.sleep(1)
            # Its own lines, in order, and no other trial's.
            assert lines == [
                epoch_line(trial_id, 1, 2, {"loss": 1.0, "val_iou": 0.1}),
                epoch_line(trial_id, 2, 2, {"loss": 0.5, "val_iou": 0.2}),
            ], text[-2000:]
            # startTime: when the tag became ALIVE (ms).
            sent_before_alive.append(tag["startTime"] / 1000 > sent_at)
        assert len(runners) == 1  # both trials trained by one runner process
        assert any(sent_before_alive), sent_before_alive  # the lines waited in Ray
    finally:
        (tmp_path / "done").touch()
        try:
            driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
