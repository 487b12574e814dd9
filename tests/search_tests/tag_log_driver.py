"""Two warm trials (one runner actor trains both, as in a search), 2 epochs each, with a
search's trial tags, on their own local Ray with the dashboard (token auth on); run as
its own process by test_trial_telemetry, so that it can start a dashboard.

python -m tests.search_tests.tag_log_driver OUT

Writes OUT/info.json (the dashboard URL and, per trial id, when its last line was sent),
then keeps Ray up until OUT/done exists (or 300 s), for the test to read the dashboard.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ray import tune

from pneumotune.ray_session import ensure_ray


def make_tagged_trial(out: str):
    def tagged_trial(config: dict) -> None:
        from pneumotune.search.watch.trial_telemetry import TrialConsole, trial_tag

        console = TrialConsole(2)
        with trial_tag(console.trial_id, config) as tag:
            console.tag = tag
            # Two epochs in milliseconds: both lines are sent before the tag's process has
            # started (~1 s), then the trial goes on (its runner keeps the lines queued
            # for the tag until it is ALIVE: a runner that dies first loses them).
            for epoch in (1, 2):
                console.epoch(epoch, {"loss": 1.0 / epoch, "val_iou": 0.1 * epoch})
                tune.report({"val_iou": 0.1 * epoch})
            sent = time.time()
            time.sleep(8)
        Path(out, f"{console.trial_id}.sent").write_text(repr(sent))

    return tagged_trial


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    session = ensure_ray(dashboard=True, num_cpus=2)
    tuner = tune.Tuner(
        tune.with_resources(make_tagged_trial(str(out)), {"cpu": 1}),
        param_space={"lr": tune.grid_search([1e-3, 2e-3])},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(out / "results"), name="tags", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors, results.errors
    sent = {p.stem: float(p.read_text()) for p in out.glob("*.sent")}
    (out / "info.json").write_text(json.dumps({"url": session.dashboard_url, "sent": sent}))
    deadline = time.monotonic() + 300
    while not (out / "done").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
