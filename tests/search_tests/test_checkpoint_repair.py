"""A restored search whose state names a checkpoint that was deleted goes on from the newest
one on disk (real Tune: a trial fails, its newest checkpoint disappears, the run resumes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray import tune

from pneumotune.search.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    RepairCheckpoints,
    newest_checkpoint,
    read_epoch,
)

EPOCHS = 6


def counting_trial(config):
    """Reports epochs 1..EPOCHS, a checkpoint each; fails once after epoch 4."""
    import tempfile

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = read_epoch(Path(d))
    for epoch in range(start + 1, EPOCHS + 1):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / MODEL_FILE).write_bytes(b"weights")
            (Path(d) / STATE_FILE).write_text(json.dumps({"epoch": epoch}))
            tune.report(
                {"score": float(epoch % 3), "epoch": epoch, "resumed_at": start},
                checkpoint=tune.Checkpoint.from_directory(d),
            )
        if epoch == 4 and config["fail"] and start == 0:
            raise RuntimeError("killed")


def test_newest_checkpoint_skips_incomplete_folders(tmp_path):
    for index, complete in ((3, True), (5, True), (7, False)):
        d = tmp_path / f"checkpoint_{index:06d}"
        d.mkdir()
        (d / STATE_FILE).write_text(json.dumps({"epoch": index}))
        if complete:
            (d / MODEL_FILE).write_bytes(b"x")
    assert newest_checkpoint(tmp_path) == (5, tmp_path / "checkpoint_000005")
    assert newest_checkpoint(tmp_path / "nowhere") is None


@pytest.mark.slow
def test_restore_goes_on_from_the_newest_checkpoint_left(ray_local, tmp_path, capsys):
    tuner = tune.Tuner(
        counting_trial,
        param_space={"fail": True},
        run_config=tune.RunConfig(
            name="repair",
            storage_path=str(tmp_path),
            # Kept by score, as the product does: the latest is not always the one kept.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order="max"
            ),
            callbacks=[RepairCheckpoints()],  # restored with the run: prints in this process
            verbose=0,
        ),
    )
    assert tuner.fit().errors  # the trial failed after epoch 4
    trial_dir = next((tmp_path / "repair").glob("counting_trial_*"))
    _, recorded = newest_checkpoint(trial_dir)
    assert read_epoch(recorded) == 4
    # What a kill between Tune's deletion and its next state save leaves: the state names a
    # checkpoint that is gone; an older one (epoch 2, the best score) remains.
    for d in trial_dir.glob("checkpoint_*"):
        if read_epoch(d) == 4:
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    left = newest_checkpoint(trial_dir)
    assert left is not None
    left_epoch = read_epoch(left[1])
    assert left_epoch < 4

    capsys.readouterr()
    restored = tune.Tuner.restore(
        str(tmp_path / "repair"), trainable=counting_trial, resume_errored=True
    )
    grid = restored.fit()
    assert not grid.errors, grid.errors
    history = grid[0].metrics_dataframe
    assert history["epoch"].max() == EPOCHS
    assert set(history["resumed_at"]) == {0, left_epoch}
    # Tune's count of reports goes on from the checkpoint's epoch: ASHA's rungs and
    # Optuna's steps read training_iteration (it once restarted at 1 after a repair, so a
    # trial at epoch 6 stood at rung 1 and never reached max_t).
    resumed = history[history["resumed_at"] == left_epoch]
    assert list(resumed["training_iteration"]) == list(resumed["epoch"]), resumed
    said = capsys.readouterr().out
    assert f"is gone; goes on from {left[1].name} (epoch {left_epoch})" in said, said
