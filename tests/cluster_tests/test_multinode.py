"""A search on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head and
two worker nodes on this machine) places trials on several nodes, and loses a worker
node midway without losing anything: its trials are retried elsewhere from their last
checkpoint and every trial finishes with every epoch reported.

The cluster runs in its own process (multinode_driver.py), not on the test session's
Ray; the assertions read the files it leaves: Tune's experiment folder (through
search.results, no Ray needed), the attempt log and the driver's report.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pneumotune.search.results import summarise

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lost_node_search(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multinode")
    # The cluster's raylets start their workers with this environment: our packages on
    # the path, no address or token of another Ray.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster_tests.multinode_driver", str(workdir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills the whole cluster
    )
    try:
        output, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the multi-node search did not finish in 8 minutes:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    report = json.loads((workdir / "report.json").read_text())
    attempts = [json.loads(line) for line in (workdir / "attempts.jsonl").read_text().splitlines()]
    return summarise(workdir / "results" / "multinode"), report, attempts


def test_trials_run_on_more_than_one_node(lost_node_search):
    summary, report, _ = lost_node_search
    nodes = {row["node_id"] for t in summary.trials for row in t.history}
    assert len(nodes) >= 2, nodes
    assert nodes <= {report["head"], *report["workers"]}
    assert set(report["workers"]) & nodes  # worker nodes took trials, not only the head


def test_the_lost_node_is_gone_and_its_trials_moved(lost_node_search):
    summary, report, attempts = lost_node_search
    removed = report["removed"]
    assert removed in report["workers"]
    assert removed not in report["alive_nodes"]
    # Its trial went on elsewhere, from the epoch it had checkpointed.
    victim = next(t for t in summary.trials if t.path.name == report["victim"])
    runs = [a for a in attempts if a["trial_id"] == victim.trial_id]
    assert runs[0]["node_id"] == removed and runs[0]["start"] == 0
    assert len(runs) >= 2
    assert runs[-1]["node_id"] != removed
    assert runs[-1]["start"] >= 1
    assert victim.num_failures >= 1
    assert victim.history[-1]["resumed_from"] == runs[-1]["start"]
    # Nothing ran on the removed node after it was removed.
    assert all(
        row["node_id"] != removed
        for t in summary.trials
        for row in t.history
        if row["timestamp"] > report["removed_at"] + 1
    )


def test_nothing_is_lost_every_trial_finishes_with_every_epoch(lost_node_search):
    summary, _, attempts = lost_node_search
    assert len(summary.trials) == 6
    assert all(t.outcome == "completed" for t in summary.trials), summary.describe()
    for t in summary.trials:
        assert [r["training_iteration"] for r in t.history] == list(range(1, EPOCHS + 1))
        assert [r["epoch"] for r in t.history] == list(range(1, EPOCHS + 1))
        # The raw result.json: no epoch missing, none skipped, a retry re-reports at most
        # the epoch it resumed after.
        raw = [
            json.loads(line)["training_iteration"]
            for line in (t.path / "result.json").read_text().splitlines()
        ]
        assert sorted(set(raw)) == list(range(1, EPOCHS + 1))
        assert all(b - a <= 1 for a, b in itertools.pairwise(raw)), raw
        # Every retry started from a checkpoint of a previous attempt (or from scratch if
        # none had been reported), never past it.
        starts = [a["start"] for a in attempts if a["trial_id"] == t.trial_id]
        assert starts == sorted(starts)
        assert len(starts) == t.num_failures + 1
