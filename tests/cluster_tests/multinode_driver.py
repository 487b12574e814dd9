"""A search on a three-node Ray cluster on this machine that loses a worker node midway.

python -m tests.cluster_tests.multinode_driver WORKDIR

Run as its own process by test_multinode.py: ``ray.cluster_utils.Cluster`` needs a Ray of
its own (not the test session's), and killing a node's processes is safest away from
pytest. Writes into WORKDIR: the dataset (synthesised and converted on the cluster), the
search under ``results/multinode``, ``attempts.jsonl`` (one line per trial attempt: its
start epoch and node) and ``report.json`` (the nodes and which one was removed when).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

EPOCHS = 4
EPOCH_SECONDS = 1.5  # long enough to remove a node while its trial is mid-run


def make_node_trial(attempt_log: str):
    """The cheap trainable of the wiring tests (tests/search_tests/cheap.py's score), plus
    the Ray node id of every epoch and a log line per attempt."""

    def node_trial(config: dict[str, Any], data: dict[int, Any]) -> None:
        import ray
        from ray import tune

        from pneumotune.data.dataset import split_fold
        from tests.search_tests.cheap import score

        node = ray.get_runtime_context().get_node_id()
        split_fold(data[config["img_size"]], config["val_fold"])  # the arrays arrived
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"]
        trial_id = tune.get_context().get_trial_id()
        with open(attempt_log, "a") as fh:
            fh.write(json.dumps({"trial_id": trial_id, "start": start, "node_id": node}) + "\n")
        for epoch in range(start + 1, config["epochs"] + 1):
            time.sleep(EPOCH_SECONDS)
            metrics = {
                "val_iou": score(config, epoch, config["epochs"]),
                "epoch": epoch,
                "node_id": node,
                "resumed_from": start,
            }
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    return node_trial


def remove_a_busy_worker_node(cluster: Any, exp_dir: Path, report: dict[str, Any]) -> None:
    """Kill (no graceful shutdown, like a lost spot instance) the first worker node that
    runs a trial which has checkpointed at least one epoch."""
    workers = {node.node_id: node for node in cluster.worker_nodes}
    deadline = time.time() + 240
    while time.time() < deadline:
        for results in sorted(exp_dir.glob("trial_*/result.json")):
            rows = [json.loads(line) for line in results.read_text().splitlines() if line]
            if rows and rows[-1]["node_id"] in workers and rows[-1]["epoch"] < EPOCHS:
                node_id = rows[-1]["node_id"]
                cluster.remove_node(workers[node_id], allow_graceful=False)
                report.update(removed=node_id, removed_at=time.time(), victim=results.parent.name)
                return
        time.sleep(0.2)


def main(workdir: Path) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from pneumotune.data.convert import ConvertConfig, convert
    from pneumotune.data.synth import SynthConfig, write_dataset
    from pneumotune.search.config import parse_experiment
    from pneumotune.search.tuner import plan_search, run_search

    # A head and two workers of one CPU each: one trial per node at a time.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    report: dict[str, Any] = {
        "head": cluster.head_node.node_id,
        "workers": [n.node_id for n in workers],
    }
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        write_dataset(workdir / "raw", SynthConfig(n_images=40, size=64, seed=0), workers=1)
        convert(ConvertConfig(src=workdir / "raw", out=workdir / "ds", sizes=(32,), n_folds=4))
        exp = parse_experiment(
            {
                "name": "multinode",
                "epochs": EPOCHS,
                "num_samples": 6,
                "max_concurrent": 3,
                "seed": 0,
                "max_failures": 2,
                "resources": {"cpu": 1},
                "asha": {"grace_period": EPOCHS},  # no early stops: every trial must finish
                "fixed": {"depth": 2},
                "space": {
                    "img_size": "stored",
                    "base_filters": [8, 16, 32],
                    "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
                },
            }
        )
        plan = plan_search(exp, workdir / "ds", name="multinode", storage=workdir / "results")
        remover = threading.Thread(
            target=remove_a_busy_worker_node, args=(cluster, plan.path, report), daemon=True
        )
        remover.start()
        summary = run_search(plan, trainable=make_node_trial(str(workdir / "attempts.jsonl")))
        remover.join(timeout=5)
        report["finished_at"] = time.time()
        report["alive_nodes"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        print(summary.describe())
    finally:
        (workdir / "report.json").write_text(json.dumps(report, indent=2))
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main(Path(sys.argv[1])))
