"""Which Ray a command uses when no --address is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pneumotune.data.ray_session import job_api_notice, join_address
from pneumotune.errors import UsageError


@pytest.mark.parametrize(
    ("address", "environ", "joined"),
    [
        (None, {}, None),  # a new local Ray, even if `ray start` runs on this machine
        ("", {}, None),
        (None, {"RAY_ADDRESS": "10.0.0.1:6379"}, "10.0.0.1:6379"),  # inside `ray job submit`
        ("auto", {"RAY_ADDRESS": "10.0.0.2:6379"}, "auto"),  # --address wins
        ("ray://head:10001", {}, "ray://head:10001"),
        (None, {"RAY_ADDRESS": ""}, None),
        # The job API's address (exported for `ray job submit`): not one a driver joins.
        (None, {"RAY_ADDRESS": "http://127.0.0.1:8265"}, None),
        (None, {"RAY_ADDRESS": "https://head:8265"}, None),
        ("auto", {"RAY_ADDRESS": "http://127.0.0.1:8265"}, "auto"),
    ],
)
def test_join_address(address, environ, joined):
    assert join_address(address, environ) == joined


def test_an_http_address_from_the_environment_is_said_in_one_line():
    said = job_api_notice(None, {"RAY_ADDRESS": "http://127.0.0.1:8265"})
    assert said is not None and "\n" not in said and "ray job submit" in said
    assert job_api_notice("auto", {"RAY_ADDRESS": "http://127.0.0.1:8265"}) is None
    assert job_api_notice(None, {"RAY_ADDRESS": "10.0.0.1:6379"}) is None


def test_an_http_address_given_as_option_is_a_usage_error():
    with pytest.raises(UsageError, match="job API address"):
        join_address("http://127.0.0.1:8265", {})


@pytest.mark.slow
def test_convert_with_a_job_api_ray_address_converts_locally(synth_raw, tmp_path):
    """The cluster README exports RAY_ADDRESS=http://127.0.0.1:8265 for `ray job submit`;
    `pneumotune convert` run beside it converts here, says so, and loses no file."""
    out = tmp_path / "ds"
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    done = subprocess.run(
        [sys.executable, "-m", "pneumotune.cli", "convert", str(synth_raw), str(out),
         "--sizes", "32"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    notices = [line for line in done.stderr.splitlines() if "job API address" in line]
    assert len(notices) == 1, done.stderr[-3000:]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["files_seen"] == counts["converted"] == len(list(synth_raw.rglob("*.dcm")))
