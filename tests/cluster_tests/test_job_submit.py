"""A search submitted with `ray job submit` to a `ray start` head with token auth on.

The head is a real one (`ray start --head`, dashboard on 127.0.0.1, RAY_AUTH_MODE=token)
that lives in a temp dir with its own token, ports and session, so that it touches
neither ~/.ray nor any other Ray on the machine: it is stopped by killing the processes
of its own session, never with `ray stop` (which kills every Ray process of the user).

The job's code is the package installed on the cluster's nodes, as on a real cluster (the
YAMLs' setup commands install it on every node): the head runs this virtual environment's
Python, where the package is installed (``pip install -e .`` of this checkout), without our
repository on its PYTHONPATH. The job is submitted with this repository as its
``--working-dir``, which Ray unpacks first on the PYTHONPATH of the driver and of every
worker; it holds no folder named ``pneumotune`` (the root package's folder is ``app/``), so
the driver and the trials import the installed package, not the shipped copy of the
checkout (cluster/README.md "Code shipping").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pneumotune.search.results import summarise

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The `ray` command of this very Python (a console script may live in another venv's bin,
# with another Python): the head and its workers run the interpreter whose install of
# pneumotune is under test.
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass(frozen=True)
class Head:
    url: str  # the dashboard / job API, http://127.0.0.1:<port>
    token: str
    env: dict[str, str]  # what a client needs: RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH
    temp_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    # No inherited Ray settings (an address, another token) and no PYTHONPATH: the head
    # and its workers find our packages only as installed (and the working_dir's files).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("PYTHONPATH", None)
    return env


def _processes_of(session: int, marker: str) -> list[int]:
    """PIDs in the head's session or naming its temp dir (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            in_session = os.getsid(pid) == session
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ProcessLookupError):
            continue
        if in_session or marker.encode() in cmdline:
            found.append(pid)
    return found


def _stop_head(proc: subprocess.Popen, temp_dir: Path) -> None:
    """Stop our head only: SIGTERM to `ray start --block` (it stops its children), then
    SIGKILL whatever is left of its session (workers, dashboard modules, agents)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while (left := _processes_of(proc.pid, str(temp_dir))) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    assert not _processes_of(proc.pid, str(temp_dir)), "processes of the test head survived"


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def ray_head():
    # A short path: Ray's Unix sockets live under it (limit ~107 characters).
    temp_dir = Path(tempfile.mkdtemp(prefix="ptray-", dir="/tmp"))
    env = _clean_env()
    # `ray get-auth-token --generate` writes ~/.ray/auth_token: with HOME pointing here it
    # writes <temp_dir>/.ray/auth_token and the user's own token is never touched.
    generated = subprocess.run(
        [*RAY, "get-auth-token", "--generate"],
        env={**env, "HOME": str(temp_dir), "RAY_AUTH_MODE": "token"},
        cwd=temp_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    token_path = temp_dir / ".ray" / "auth_token"
    token = generated.stdout.strip()
    assert token and token_path.read_text().strip() == token
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))

    # Every port explicit: another Ray on this machine may hold any of the defaults.
    ports = {
        name: _free_port()
        for name in (
            "port",
            "dashboard-port",
            "ray-client-server-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "node-manager-port",
            "object-manager-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }
    command = [
        *RAY,
        "start",
        "--head",
        "--block",  # stays in the foreground: its process is our handle on the head
        f"--temp-dir={temp_dir}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    log = (temp_dir / "ray-start.log").open("w")
    # A session of its own: every process the head spawns can be found (and stopped)
    # by its session id, without touching other Ray instances.
    proc = subprocess.Popen(
        command, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (temp_dir / "ray-start.log").read_text()[-3000:]
            try:
                status, _ = _get(f"{url}/api/version")
                # 401 = up, and refusing us without a token: what we want to see.
                if status in (200, 401):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the dashboard did not come up in 120 s"
            time.sleep(1)
        yield Head(url, token, env, temp_dir)
    finally:
        _stop_head(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(head: Head, entrypoint: list[str], working_dir: Path = ROOT) -> str:
    """`ray job submit` with the token (from RAY_AUTH_TOKEN_PATH) and our repository as
    the working_dir; returns the submission id without waiting for the job."""
    submission_id = f"pneumotune-test-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [
            *RAY,
            "job",
            "submit",
            "--address",
            head.url,
            "--working-dir",
            str(working_dir),
            "--submission-id",
            submission_id,
            "--no-wait",
            "--",
            *entrypoint,
        ],
        env=head.env,
        cwd=head.temp_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return submission_id


def _wait_for_job(head: Head, submission_id: str, timeout: float) -> dict:
    """Poll the dashboard's job API with the token until the job is over."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = _get(f"{head.url}/api/jobs/{submission_id}", head.token)
        assert status == 200, (status, body[:500])
        info = json.loads(body)
        if info["status"] in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(2)


def _logs(head: Head, submission_id: str) -> str:
    status, body = _get(f"{head.url}/api/jobs/{submission_id}/logs", head.token)
    return json.loads(body)["logs"] if status == 200 else f"(logs: HTTP {status})"


@pytest.mark.slow
def test_search_job_succeeds_and_the_job_api_wants_the_token(ray_head, tiny_dataset, tmp_path):
    experiment = {
        "name": "jobtest",
        "metric": "val_iou",
        "epochs": 1,
        "num_samples": 2,
        "max_concurrent": 2,
        "seed": 0,
        "max_failures": 0,
        "resources": {"cpu": 1, "gpu": 0, "workers_per_trial": 1},
        "fixed": {"img_size": 32, "depth": 2, "batch_size": 8},
        "space": {"base_filters": [4, 8], "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
    }
    config = tmp_path / "jobtest.yaml"
    config.write_text(yaml.safe_dump(experiment))
    storage = tmp_path / "results"
    # The installed console script, as on a cluster's node.
    submission_id = _submit(
        ray_head,
        [
            str(BIN / "pneumotune"),
            "search",
            "--config",
            str(config),
            "--data",
            str(tiny_dataset),
            "--address",
            "auto",
            "--storage",
            str(storage),
            "--name",
            "jobtest",
        ],
    )
    info = _wait_for_job(ray_head, submission_id, timeout=420)
    assert info["status"] == "SUCCEEDED", _logs(ray_head, submission_id)[-4000:]
    assert info["submission_id"] == submission_id

    # The same request without the token is refused; a wrong token is refused too.
    status, body = _get(f"{ray_head.url}/api/jobs/{submission_id}")
    assert status == 401, body[:200]
    assert _get(f"{ray_head.url}/api/jobs/{submission_id}", "not-the-token")[0] == 403

    # The search really ran on the cluster: both trials reported their epoch.
    summary = summarise(storage / "jobtest")
    assert len(summary.trials) == 2
    assert all(t.epochs == 1 for t in summary.trials), summary.describe()


def _installed_files() -> list[str]:
    """Where this Python imports the packages from outside any checkout: the install."""
    with tempfile.TemporaryDirectory() as elsewhere:
        done = subprocess.run(
            [sys.executable, "-P", "-c", f"import json\n{IMPORTS}\nprint(json.dumps(FILES))"],
            cwd=elsewhere,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    return json.loads(done.stdout)


IMPORTS = (
    "import pneumotune, pneumotune.errors, pneumotune.data, pneumotune.model, "
    "pneumotune.search\n"
    "FILES = [x.__file__ for x in (pneumotune, pneumotune.errors, pneumotune.data, "
    "pneumotune.model, pneumotune.search)]"
)


@pytest.mark.slow
def test_driver_and_workers_import_the_installed_package(ray_head):
    # -P: no script directory / cwd on sys.path; the working_dir plugin still puts the
    # unpacked checkout first on PYTHONPATH (and makes it the current directory).
    probe = (
        "import json, os, sys, ray\n"
        f"{IMPORTS}\n"
        "ray.init()\n"
        "@ray.remote\n"
        "def where():\n"
        "    import os, sys\n"
        f"    {IMPORTS.replace(chr(10), chr(10) + '    ')}\n"
        "    return {'files': FILES, 'path': list(pneumotune.__path__),\n"
        "            'sys_path': sys.path, 'cwd': os.getcwd()}\n"
        "print('PROBE', json.dumps({'driver': {'files': FILES,\n"
        "    'path': list(pneumotune.__path__), 'sys_path': sys.path, 'cwd': os.getcwd()},\n"
        "    'worker': ray.get(where.remote())}))\n"
    )
    submission_id = _submit(ray_head, [sys.executable, "-P", "-c", probe])
    info = _wait_for_job(ray_head, submission_id, timeout=180)
    logs = _logs(ray_head, submission_id)
    assert info["status"] == "SUCCEEDED", logs[-3000:]
    line = next(x for x in logs.splitlines() if x.startswith("PROBE "))
    found = json.loads(line.removeprefix("PROBE "))
    installed = _installed_files()
    for side in ("driver", "worker"):
        seen = found[side]
        # The premise: the shipped checkout is the process' current directory and on its
        # path, in the head's session (this test's temp dir).
        shipped = Path(seen["cwd"])
        assert "runtime_resources/working_dir_files/" in str(shipped), seen["cwd"]
        assert str(ray_head.temp_dir) in str(shipped), seen["cwd"]
        assert (shipped / "app" / "__init__.py").is_file(), "the checkout was not shipped"
        assert str(shipped) in seen["sys_path"], seen["sys_path"]
        # ... and yet both import the installed package, one folder of it.
        assert seen["files"] == installed, (side, seen["files"])
        assert seen["path"] == [str(Path(installed[0]).parent)], seen["path"]
        assert not any(str(shipped) in f for f in seen["files"]), seen["files"]
