"""The top-level CLI: every command listed, user errors as one line with their exit code,
bugs with their traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pneumotune import cli
from pneumotune.errors import ConfigError, PneumotuneError, UsageError
from pneumotune.model.train import TrainingDiverged

COMMANDS = (
    "demo", "synth", "convert", "search", "status", "report", "export", "train", "predict",
    "score",
)  # fmt: skip


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    listed = out.split("positional arguments:")[1].split("options:")[0]
    for command in COMMANDS:
        assert f"\n    {command} " in listed, command


@pytest.mark.parametrize(
    ("error", "code"),
    [(UsageError, 2), (ConfigError, 2), (TrainingDiverged, 1)],
)
def test_error_classes_carry_their_exit_code(error, code):
    assert issubclass(error, PneumotuneError)
    assert error("x").exit_code == code


def test_a_user_error_is_one_line_with_its_exit_code(tmp_path, capsys):
    assert cli.main(["status", str(tmp_path / "no-such-search")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pneumotune status: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_a_bad_experiment_key_names_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nepochz: 3\n")
    assert cli.main(["search", "--config", str(bad), "--data", str(tmp_path)]) == 2
    assert "unknown key(s) ['epochz']" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    """A ValueError that is not a PneumotuneError is a bug: main() must not turn it into a
    usage message (the handler is replaced so that the bug is certain)."""
    from pneumotune.search import commands

    def buggy(args):
        raise ValueError("a bug inside the library")

    monkeypatch.setattr(commands, "_run_status", buggy)
    with pytest.raises(ValueError, match="a bug inside the library"):
        cli.main(["status", "anything"])


def test_tensorflow_commands_start_with_our_output(tmp_path):
    """On a CPU machine TensorFlow's start-up notices (oneDNN, cuInit) are not shown."""
    done = subprocess.run(
        [sys.executable, "-m", "pneumotune.cli", "predict", str(tmp_path), str(tmp_path)],
        env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == "Keras backend: tensorflow\n"  # what ran, then the error
    assert done.stderr.startswith("pneumotune predict: error: "), done.stderr[:500]
    for notice in ("oneDNN", "cuInit", "cuda drivers", "absl::InitializeLog"):
        assert notice not in done.stderr
