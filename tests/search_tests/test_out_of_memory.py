"""Trials that run out of memory: killed for real, and reported as such.

The kernel's OOM killer kills a trial for real here: the trainable moves its process into
a cgroup v1 memory cgroup with a small limit and then holds more than that
(tests/search_tests/memory_hog.py; skipped where cgroup v1 memory is not writable). Ray's
memory monitor kills one in the slow test, in a driver process with its own Ray
(tests/search_tests/oom_driver.py). The texts below are the ones Ray 2.60 wrote in those
runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pneumotune import cli
from pneumotune.memory import MEMORY_METRIC, memory_metrics, private_dirty_mb, process_private_mb
from pneumotune.search import failures as F
from pneumotune.search.results import SEARCH_ENDED, summarise
from pneumotune.search.tuner import plan_search, run_search
from pneumotune.search.watch.table import is_finished, render
from tests.search_tests.helpers import wiring_experiment
from tests.search_tests.memory_hog import (
    cgroup_v1_unavailable,
    make_memory_hog,
    own_memory_cgroup,
    remove_hog_cgroups,
)
from tests.search_tests.oom_driver import monitor_threshold

KERNEL_KILL = """\
The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tactor_id: 7341b07bbf207b166420063301000000
\tpid: 4754
\tnamespace: 5095008a-8e6a-46f0-a2da-e29730a8c42a
\tip: 192.0.2.2
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR \
Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file. \
Some common causes include: (1) the process was killed by the OOM killer due to high memory \
usage, (2) ray stop --force was called, or (3) the worker crashed unexpectedly due to SIGSEGV \
or another unexpected error. If the process was killed by the kernel OOM killer (verifiable \
by checking for OOM in dmesg of the OOMing node), consider enabling resource isolation via \
--enable-resource-isolation to prevent node deaths by resource contention and significant \
loss of progress by uninformed kernel OOM killing."""
MONITOR_KILL = """\
1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: \
192.0.2.2, ID: 0a0ac2de4bc0f6a745f92d3d3e9ede4922f4747063756f7a1ab2ce97) was 3.44GB used / \
23.54GB limit (0.146235)
OOM kill reason: Memory usage 3654918144B exceeded threshold of 3639771904B (14.4% of \
25276194816B limit)
Ray killed 1 worker(s) based on the killing policy
Selected to kill: (Actor(e1a8941daf060e89d31c598601000000): job ID=01000000, task \
name=ImplicitFunc.__init__, pid=7664, actual memory used=0.61GB, worker ID=f51c1b1e)
]"""
PLANTED = """\
Traceback (most recent call last):
  File "/work/tests/search_tests/cheap.py", line 45, in cheap_trial
    raise RuntimeError(f"planted failure at epoch {epoch}")
RuntimeError: planted failure at epoch 2"""
TF_OOM = """\
  File "/x/keras/src/backend/tensorflow/trainer.py", line 113, in one_step_on_data
tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor \
with shape[16,64,512,512] and type float on /job:localhost/replica:0/task:0/device:GPU:0"""


# --------------------------------------------------------------------------- pure parts
def test_private_dirty_is_summed_over_every_mapping():
    rollup = "5583-7ffd ---p 00000000 00:00 0   [rollup]\nRss:  1720 kB\nPrivate_Dirty:  2048 kB\n"
    assert private_dirty_mb(rollup) == 2.0
    smaps = "Private_Dirty:  1024 kB\nShared_Dirty: 9 kB\nPrivate_Dirty:   512 kB\n"
    assert private_dirty_mb(smaps) == 1.5
    assert private_dirty_mb("Rss: 12 kB\n") is None


def test_this_process_reports_its_private_memory(tmp_path):
    held = bytearray(b"\x01") * (64 * 2**20)  # written pages: private and dirty
    mb = process_private_mb()
    assert mb is not None and mb >= 64, mb
    assert memory_metrics() == {MEMORY_METRIC: pytest.approx(process_private_mb(), abs=8)}
    # Where /proc does not tell (macOS), no value, and the report goes without the key.
    assert process_private_mb(tmp_path / "none", tmp_path / "none") is None
    del held


def test_error_files_split_into_numbered_failures():
    text = f"Failure # 1 (occurred at 2026-12-07_00-41-03)\n{KERNEL_KILL}\n"
    text += f"Failure # 2 (occurred at 2026-12-07_00-41-05)\n{PLANTED}\n"
    got = F.parse_error_file(text)
    assert [(f.number, f.when) for f in got] == [
        (1, "2026-12-07_00-41-03"),
        (2, "2026-12-07_00-41-05"),
    ]
    assert got[0].text == KERNEL_KILL and got[1].text == PLANTED
    assert F.parse_error_file("boom") == [F.Failure(0, "", "boom")]
    assert F.parse_error_file("") == []


@pytest.mark.parametrize(
    ("text", "outcome", "words"),
    [
        (KERNEL_KILL, F.KILLED_LIKELY_OOM, ["without a Python error", "pid 4754 on 192.0.2.2"]),
        (MONITOR_KILL, F.KILLED_OOM, ["memory monitor", "holding 0.61GB", "3.44GB of 23.54GB"]),
        (TF_OOM, F.FAILED_OOM, ["ResourceExhaustedError: OOM when allocating"]),
        (PLANTED, F.FAILED, ["RuntimeError: planted failure at epoch 2"]),
    ],
)
def test_failures_are_classified_with_a_readable_reason(text, outcome, words):
    assert F.classify(text) == outcome
    why = F.reason(text)
    assert "\n" not in why
    for w in words:
        assert w in why, why


def test_a_search_that_only_failed_says_what_to_change():
    line = F.all_failed_message([F.KILLED_LIKELY_OOM, F.KILLED_LIKELY_OOM, F.FAILED], [323.0, 90])
    assert line.startswith("all 3 trials failed (1 failed, 2 killed: likely out of memory)")
    assert "held up to 323 MB" in line and "batch_size" in line and "max_concurrent" in line
    assert "\n" not in line
    assert "Out of memory" not in F.all_failed_message([F.FAILED], [])
    assert F.SearchFailed("x").exit_code == 1


def test_the_monitor_threshold_leaves_the_headroom():
    meminfo = "MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:  600 kB\n"
    assert monitor_threshold(meminfo, headroom=100 * 1024) == pytest.approx(0.5)


# --------------------------------------------------------------------------- real kills
@pytest.fixture(scope="module")
def memory_cgroup():
    """The cgroup v1 memory folder the hogs make theirs under; removed after the tests."""
    why = cgroup_v1_unavailable()
    if why:
        pytest.skip(f"the kernel OOM kill needs a writable cgroup v1 memory controller: {why}")
    parent = own_memory_cgroup()
    yield parent
    remove_hog_cgroups(parent)


YAML = """\
name: oom
epochs: 4
num_samples: 2
max_concurrent: 2
seed: 3
max_failures: 1
asha: {grace_period: 4}
fixed: {depth: 2, batch_size: 8}
space:
  img_size: stored
  base_filters: [8, 16, 32]
  lr: {low: 1.0e-4, high: 1.0e-2, log: true}
"""


@pytest.fixture(scope="module")
def killed_and_spared(tiny_dataset, ray_local, memory_cgroup, tmp_path_factory):
    """A real search: the tutorial's trial (lr 1e-3) completes, the other is killed by the
    kernel in its third epoch, retried from its checkpoint once, killed again."""
    storage = tmp_path_factory.mktemp("oom")
    exp = wiring_experiment(num_samples=2, max_failures=1, asha={"grace_period": 4})
    plan = plan_search(exp, tiny_dataset, name="spared", storage=storage)
    run_search(plan, trainable=make_memory_hog(str(memory_cgroup), spare_lr=1.0e-3))
    return plan.path


def test_a_trial_the_kernel_killed_is_reported_with_its_memory(killed_and_spared):
    summary = summarise(killed_and_spared)
    spared, killed = summary.trials
    assert spared.outcome == "completed" and spared.epochs == 4
    assert killed.outcome == F.KILLED_LIKELY_OOM, summary.describe()
    assert killed.status == "ERROR" and killed.failed and killed.out_of_memory
    assert killed.num_failures == 2  # killed, retried from epoch 2's checkpoint, killed again
    assert killed.epochs == 2
    # The last known memory: two epochs' 64 MB over the worker's own.
    assert killed.memory_epoch == 2 and killed.memory_mb >= 2 * 64 + 50, killed.memory_mb
    assert spared.memory_mb < killed.memory_mb - 100
    text = summary.describe()
    assert f"Trial {killed.trial_id} killed: likely out of memory after 2 attempt(s)" in text
    assert f"held {killed.memory_mb:.0f} MB at epoch 2; to fit, lower batch_size" in text
    assert "memory MB" in text.splitlines()[2]
    written = json.loads((killed_and_spared / "search.json").read_text())
    assert [t["outcome"] for t in written["trials"]] == ["completed", F.KILLED_LIKELY_OOM]
    assert written["trials"][1]["memory_mb"] == killed.memory_mb
    # Two failures in error.txt, each the kernel's kill as Ray words it.
    failures = F.parse_error_file((killed.path / "error.txt").read_text())
    assert [f.number for f in failures] == [1, 2]
    assert all(F.classify(f.text) == F.KILLED_LIKELY_OOM for f in failures)


def test_the_search_report_counts_and_explains_the_killed_trial(killed_and_spared, tmp_path):
    from pneumotune.search.reports import report

    result = report.report_search(killed_and_spared, tmp_path / "report")
    page = result.html.read_text(encoding="utf-8")
    assert f"<td>trials {F.KILLED_LIKELY_OOM}</td><td>1</td>" in page
    assert "1 trial ran out of memory: " in page and "held " in page and "To fit, lower" in page
    assert "curves" in result.figures  # the killed trial's curve is drawn as a failure


def errored_as_running(search: Path, **runtime_changes: Any) -> list[dict]:
    """Make the search's ERROR trials RUNNING in its newest state file, with
    ``runtime_changes``, and remove search.json (as if the search were still running):
    the state Tune 2.60 may leave behind. Returns the changed trials."""
    state_file = sorted(search.glob("experiment_state-*.json"))[-1]
    raw = json.loads(state_file.read_text())
    changed = []
    for i, (trial_json, runtime_json) in enumerate(raw["trial_data"]):
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        if trial["status"] == "ERROR":
            trial["status"] = "RUNNING"
            runtime.update(runtime_changes)
            raw["trial_data"][i] = [json.dumps(trial), json.dumps(runtime)]
            changed.append(trial)
    state_file.write_text(json.dumps(raw))
    (search / "search.json").unlink()
    return changed


def test_a_stale_running_state_shows_the_trials_real_end(killed_and_spared, tmp_path):
    """Tune 2.60 may leave a trial whose worker died as RUNNING (0 failures) in its state
    file for good; its error.txt, numbered past max_failures, says how it ended."""
    copy = shutil.copytree(killed_and_spared, tmp_path / "stale")
    errored_as_running(copy, num_failures=1, error_filename=None, pickled_error_filename=None)
    summary = summarise(copy)
    killed = summary.trials[1]
    assert killed.outcome == F.KILLED_LIKELY_OOM and killed.num_failures == 2
    assert not any(t.outcome == "running" for t in summary.trials)
    assert is_finished(summary)  # all num_samples trials have ended
    out = StringIO()
    Console(file=out, width=160, color_system=None).print(render(summary, 160))
    assert F.KILLED_LIKELY_OOM in out.getvalue() and "to fit, lower batch_size" in out.getvalue()


def test_a_failure_within_max_failures_is_a_retry_under_way(killed_and_spared, tmp_path):
    """While a trial's first failure (of max_failures 1) is the last, the state's RUNNING
    stands (Tune restarts it); once the search has ended, nothing is running."""
    copy = shutil.copytree(killed_and_spared, tmp_path / "retrying")
    for trial in errored_as_running(copy, num_failures=0):
        errors = copy / trial["relative_logdir"] / "error.txt"
        errors.write_text(errors.read_text().split("Failure # 2")[0])
    assert summarise(copy).trials[1].outcome == "running"
    assert summarise(copy, ended=True).trials[1].outcome == SEARCH_ENDED


def test_search_exits_1_when_every_trial_was_killed(
    tiny_dataset, ray_local, memory_cgroup, tmp_path, monkeypatch, capsys
):
    """`pneumotune search` end to end (its trainable swapped for the hog): the table says
    how each trial ended, then one error line, exit code 1, no "Next: export"."""
    from pneumotune.search import tuner

    real_run_search = tuner.run_search

    def hog_search(plan, resume=False, **options):
        hog = make_memory_hog(str(memory_cgroup))
        return real_run_search(plan, resume=resume, trainable=hog, **options)

    monkeypatch.setattr(tuner, "run_search", hog_search)
    (tmp_path / "oom.yaml").write_text(YAML)
    argv = ["search", "--config", str(tmp_path / "oom.yaml"), "--data", str(tiny_dataset)]
    argv += ["--name", "all-killed", "--storage", str(tmp_path), "--no-dashboard"]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err
    assert err.startswith(
        "pneumotune search: error: all 2 trials failed (2 killed: likely out of memory); "
        "nothing to export. Out of memory (they held up to "
    ), err
    assert "Next: pneumotune export" not in out
    assert out.count(F.KILLED_LIKELY_OOM) >= 2 and "(this trial: batch_size 8, img_size" in out
    assert "running" not in out.split("Search all-killed")[1]
    summary = summarise(tmp_path / "all-killed")
    assert [t.outcome for t in summary.trials] == [F.KILLED_LIKELY_OOM] * 2
    # `pneumotune status` afterwards: the same ends, exit 0 (it read the folder fine).
    assert cli.main(["status", str(tmp_path / "all-killed")]) == 0
    assert capsys.readouterr().out.count(F.KILLED_LIKELY_OOM) >= 3


@pytest.mark.slow
def test_a_trial_rays_memory_monitor_killed_fails_without_ending_the_search(tiny_dataset, tmp_path):
    """Ray's memory monitor fails the killed trial's task with OutOfMemoryError, which
    Tune 2.60 does not handle (the search dies: "Caught unexpected exception");
    search.failures.handle_memory_monitor_kills makes it a trial failure: retried once,
    then reported with the memory the monitor saw."""
    run = subprocess.run(
        [sys.executable, "-m", "tests.search_tests.oom_driver", str(tiny_dataset), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = summarise(tmp_path / "monitor")
    (trial,) = summary.trials
    assert trial.outcome == F.KILLED_OOM, summary.describe()
    assert trial.num_failures == 2
    assert "Ray's memory monitor killed its worker" in trial.error
    assert "killed: out of memory" in run.stdout and "to fit, lower batch_size" in run.stdout
    # The monitor kills for the node's memory: another process's growth may have it kill
    # the trial before its first report, so the memory it held may be unknown here.
    assert trial.memory_mb is None or trial.memory_mb >= 600
