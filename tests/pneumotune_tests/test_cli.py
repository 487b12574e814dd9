"""The top-level CLI: one registry of commands, which the parser, `pneumotune --help` and
README.md's command table all list; user errors as one line with their exit code (with
their traceback under --debug), bugs with their traceback; --version."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import pneumotune
from pneumotune import cli
from pneumotune.cli_args import NEEDS
from pneumotune.errors import ConfigError, PneumotuneError, UsageError
from pneumotune.model.train import TrainingDiverged

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# What no parser may import: `pneumotune --help` and `--version` answer at once.
HEAVY = ("tensorflow", "keras", "ray", "jax", "torch", "pydicom", "cv2", "albumentations")


def _subcommands(parser) -> dict:
    (action,) = (a for a in parser._actions if a.dest == "command")
    return action.choices


def _readme_commands() -> list[str]:
    """The commands of README.md's table in "The pipeline": rows `| `pneumotune NAME ...` |`."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## The pipeline\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `pneumotune ([a-z]+)\b[^`]*` \|", section, re.M)


def test_readme_help_and_parser_list_the_same_commands():
    parser = cli.build_parser()
    parsed = list(_subcommands(parser))
    assert parsed == list(cli.COMMANDS)  # the registry's order
    text = parser.format_help()
    listed = text.split("positional arguments:")[1].split("options:")[0]
    in_help = re.findall(r"^    ([a-z]+) ", listed, re.M)
    usage_lines = re.findall(r"^  pneumotune ([a-z]+)\b", parser.epilog, re.M)
    readme = _readme_commands()
    assert in_help == usage_lines == parsed
    assert len(readme) == len(set(readme)), readme  # one row per command
    assert sorted(readme) == sorted(parsed), "README.md's table of commands is out of date"


def test_each_usage_line_names_the_commands_own_arguments():
    """The epilog's usage lines come from the parsers: a required option is shown bare,
    a `shown` one in brackets, and a line naming an option the command lacks cannot be
    built."""
    parser = cli.build_parser()
    lines = dict(re.findall(r"^  pneumotune ([a-z]+)(.*)$", parser.epilog, re.M))
    assert lines["convert"] == " SRC OUT [--labels CSV] [--sizes SIZES]"
    assert lines["export"] == " RESULTS --out MODEL_DIR"
    assert lines["status"] == " RESULTS [--watch]"
    wrong = dataclasses.replace(cli.COMMANDS["status"], shown=("--no-such-option",))
    with pytest.raises(ValueError, match="--no-such-option"):
        cli.usage_line("status", _subcommands(parser)["status"], wrong)


def test_every_command_declares_known_needs():
    for command in cli.COMMANDS.values():
        assert set(command.needs) <= set(NEEDS), command.name
    with pytest.raises(ValueError, match="unknown needs"):
        dataclasses.replace(cli.COMMANDS["score"], needs=frozenset({"gpu"}))


def test_help_and_version_import_no_heavy_module(tmp_path):
    """`pneumotune --help`, every `pneumotune COMMAND --help` and `--version`, in a fresh
    process: the handlers import what the commands need, the parser nothing of it."""
    probe = (
        "import contextlib, io, json, sys\n"
        "from pneumotune import cli\n"
        "argvs = [['--help'], ['--version'], *[[c, '--help'] for c in cli.COMMANDS]]\n"
        "for argv in argvs:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            cli.main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == []


def test_version_prints_the_versions_of_the_package_and_its_stack(tmp_path):
    """From the metadata only: test_help_and_version_import_no_heavy_module."""
    done = subprocess.run(
        [str(BIN / "pneumotune"), "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"pneumotune {pneumotune.__version__} ("), line
    assert f"Ray {metadata.version('ray')}" in line and f"Keras {metadata.version('keras')}" in line
    # The installed distribution's version (pyproject.toml) is the package's.
    assert metadata.version("pneumotune") == pneumotune.__version__


def _convert_missing_folder(tmp_path, *flags: str, env: dict[str, str] | None = None):
    """A real user error, raised before Ray starts: convert's source folder is missing."""
    return subprocess.run(
        [
            str(BIN / "pneumotune"),
            *flags,
            "convert",
            str(tmp_path / "absent"),
            str(tmp_path / "ds"),
        ],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_user_error_is_one_line_unless_debugging(tmp_path):
    plain = _convert_missing_folder(tmp_path, env={"PNEUMOTUNE_DEBUG": ""})
    assert plain.returncode == 2
    message = f"pneumotune convert: error: source folder {tmp_path / 'absent'} does not exist"
    assert plain.stderr.startswith(message) and plain.stderr.count("\n") == 1, plain.stderr
    assert "Traceback" not in plain.stderr

    for debug in (
        _convert_missing_folder(tmp_path, "--debug", env={"PNEUMOTUNE_DEBUG": ""}),
        _convert_missing_folder(tmp_path, env={"PNEUMOTUNE_DEBUG": "1"}),
    ):
        assert debug.returncode == 2
        err = debug.stderr
        assert err.startswith("Traceback (most recent call last):"), err[-2000:]
        assert "ConvertInputError: source folder" in err and "_dicom_root" in err
        assert err.splitlines()[-1] == plain.stderr.strip()  # the same line, last
    assert not (tmp_path / "ds").exists()


def test_debug_is_accepted_after_the_command_too():
    parser = cli.build_parser()
    assert parser.parse_args(["status", "x", "--debug"]).debug is True
    assert parser.parse_args(["--debug", "status", "x"]).debug is True
    assert parser.parse_args(["status", "x"]).debug is False


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

    def buggy(args):
        raise ValueError("a bug inside the library")

    status = dataclasses.replace(cli.COMMANDS["status"], run=buggy)
    monkeypatch.setitem(cli.COMMANDS, "status", status)
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
