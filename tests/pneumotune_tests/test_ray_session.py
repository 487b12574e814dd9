"""Which Ray a command uses when no --address is given."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from pneumotune.errors import ClusterError, UsageError
from pneumotune.ray_session import (
    endpoint,
    job_api_notice,
    join_address,
    join_timeout,
    probe,
    protect_token,
)


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


# --------------------------------------------------------------------------- joining


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("address", "where"),
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("ray://head:10001", ("head", 10001)),
        ("ray://[::1]:10001/", ("::1", 10001)),
        ("auto", None),
        ("local", None),
    ],
)
def test_endpoint(address, where):
    assert endpoint(address) == where


@pytest.mark.parametrize("address", ["head", "head:", "head:port", "head:99999", ":6379"])
def test_an_address_without_a_port_is_a_usage_error(address):
    with pytest.raises(UsageError, match="HOST:PORT"):
        endpoint(address)


def test_a_refused_port_fails_at_once_saying_where_the_address_came_from():
    started = time.perf_counter()
    with pytest.raises(ClusterError, match=r"from RAY_ADDRESS\): .*Unset RAY_ADDRESS"):
        probe(f"127.0.0.1:{_free_port()}", "RAY_ADDRESS")
    assert time.perf_counter() - started < 5


def test_a_host_that_does_not_answer_fails_after_the_timeout():
    # A listener whose one-slot backlog is full drops further SYNs: a host that never
    # answers, made here (outside addresses may be answered by a proxy in a sandbox).
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        held = socket.create_connection(("127.0.0.1", port), timeout=1)
        started = time.perf_counter()
        with pytest.raises(ClusterError, match=r"no answer within 0.5 s"):
            probe(f"127.0.0.1:{port}", "--address", timeout=0.5)
        held.close()
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_a_bad_join_timeout_is_a_usage_error(value):
    with pytest.raises(UsageError, match="PNEUMOTUNE_JOIN_TIMEOUT"):
        join_timeout({"PNEUMOTUNE_JOIN_TIMEOUT": value})


def _pneumotune(args, env, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "pneumotune.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_convert_with_an_unreachable_ray_address_says_so_in_one_line(synth_raw, tmp_path):
    """Ray alone retries a refused GCS port for minutes (3 min 24 s measured)."""
    address = f"127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    done = _pneumotune(["convert", str(synth_raw), str(tmp_path / "ds")], {"RAY_ADDRESS": address})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"Joining the Ray cluster at {address} (from RAY_ADDRESS)" in done.stderr
    assert f"error: cannot reach the Ray cluster at {address}" in done.stderr
    assert time.perf_counter() - started < 60


def test_a_port_that_answers_but_is_not_ray_gives_up_after_the_join_timeout(synth_raw, tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # accepts the TCP handshake; never speaks gRPC
        address = f"127.0.0.1:{server.getsockname()[1]}"
        started = time.perf_counter()
        done = _pneumotune(
            ["convert", str(synth_raw), str(tmp_path / "ds"), "--address", address],
            {"PNEUMOTUNE_JOIN_TIMEOUT": "3"},
        )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"could not join the Ray cluster at {address} (from --address) within 3 s" in (
        done.stderr
    )
    assert time.perf_counter() - started < 60


# --------------------------------------------------------------------------- a local Ray


LOCAL_RAY = """
import ipaddress, json, os
from pathlib import Path
from pneumotune.ray_session import ensure_ray
import ray

def descendants(root):
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = {root}, [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid and p not in found]
        found.update(kids)
        todo.extend(kids)
    return found

def listening(pids):
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ips = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                raw = bytes.fromhex(f[1].split(":")[0])
                # /proc shows each 32-bit word little-endian
                words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
                ip = ipaddress.ip_address(b"".join(words))
                ips.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return sorted(ips)

ensure_ray(dashboard=True, num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())  # a worker process, which listens too
print(json.dumps(listening(descendants(os.getpid()))))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only_and_its_token_is_private(tmp_path):
    """Ray 2.60 alone: GCS, raylet, agent, metrics export on every interface, and
    ~/.ray/auth_token 0644 in a 0755 folder (any local user could submit jobs)."""
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", LOCAL_RAY],
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    listening = json.loads(done.stdout.splitlines()[-1])
    assert listening == ["127.0.0.1"], listening  # (IPv6 ::ffff:127.0.0.1 read as such)
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text()) == 64


def test_an_existing_token_of_ours_is_made_private(tmp_path):
    token = tmp_path / "ray" / "auth_token"
    token.parent.mkdir(mode=0o755)
    token.write_text("x" * 64)
    token.chmod(0o644)
    assert protect_token({"RAY_AUTH_TOKEN_PATH": str(token)}, create=False) is None
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    # A token the user named with RAY_AUTH_TOKEN_PATH: its folder is not ours to change.
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o755


def test_a_token_readable_by_others_that_is_not_ours_is_warned_about(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text("x" * 64)
    token.chmod(0o644)
    os.chown(token, 65534, 65534)  # tests run as root: the file of another user
    said = protect_token({"RAY_AUTH_TOKEN_PATH": str(token)}, create=False)
    assert said is not None and "readable by others (mode 0644)" in said
    assert stat.S_IMODE(token.stat().st_mode) == 0o644  # not ours: left as it is


def test_a_token_in_the_environment_needs_no_file(tmp_path):
    env = {"RAY_AUTH_TOKEN": "y" * 64, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    assert protect_token(env, create=True) is None
    assert not (tmp_path / "none").exists()
