"""Starting or joining Ray the same way from every command.

Security defaults (docs/security.md): token authentication stays on (Ray 2.60's
default for a local cluster; we never set ``RAY_AUTH_MODE``, whose value Ray reads
once at import); the token file is the user's alone (0600 in a 0700 folder, see
:func:`protect_token`); a local Ray we start listens on 127.0.0.1 only, the dashboard
and every other port (:func:`_loopback_node`). Joining a cluster is said on stderr and
gives up with a :class:`~pneumotune.errors.ClusterError` when the cluster does not
answer (:func:`probe`, ``PNEUMOTUNE_JOIN_TIMEOUT``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import stat
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumotune.errors import ClusterError, UsageError

DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8265
# Joining: a TCP answer within PROBE_TIMEOUT_S, then ray.init within the join timeout
# (Ray itself retries an unreachable GCS for minutes: 3 min 24 s measured on a refused
# port, with nothing but its own warnings).
PROBE_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 120.0
JOIN_TIMEOUT_ENV = "PNEUMOTUNE_JOIN_TIMEOUT"
# Where Ray reads its token from (Ray 2.60): $RAY_AUTH_TOKEN itself, else the file
# $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, which Ray writes 0644 in a 0755 folder.
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
# On Linux Ray gives a local node the machine's network address, and every server of
# the node (GCS, raylet, object manager, dashboard agent, metrics export) listens on all
# interfaces; with this variable at 0 it takes 127.0.0.1 and they listen there only.
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class RaySession:
    started_here: bool  # False when we joined a running cluster (or ray was already up)
    dashboard_url: str | None
    address: str | None


JOB_API_SCHEMES = ("http://", "https://")


def join_address(address: str | None, environ: Mapping[str, str]) -> str | None:
    """The cluster to join (see :func:`ensure_ray`); None: start a new local Ray.

    An http(s) address is a dashboard's job API (what `ray job submit` reads from
    ``RAY_ADDRESS``), not one a driver can join: from the environment it is passed over
    (:func:`job_api_notice` says so); given as ``--address`` it is a usage error.
    """
    if _is_job_api(address):
        raise UsageError(
            f"--address {address} is a job API address (for `ray job submit`), not one a "
            "command can join: use ray://HEAD:10001 or HEAD:6379, or submit the command "
            "as a job"
        )
    from_env = environ.get("RAY_ADDRESS") or None
    return address or (None if _is_job_api(from_env) else from_env)


def _is_job_api(address: str | None) -> bool:
    return bool(address) and address.startswith(JOB_API_SCHEMES)


def job_api_notice(address: str | None, environ: Mapping[str, str]) -> str | None:
    """One line when an http(s) ``RAY_ADDRESS`` is passed over, else None."""
    value = environ.get("RAY_ADDRESS")
    if address or not _is_job_api(value):
        return None
    return (
        f"RAY_ADDRESS={value} is a job API address (for `ray job submit`): running on a "
        "new local Ray here; to run on the cluster, submit the command: "
        "`ray job submit --working-dir . -- pneumotune ...`"
    )


def endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a joinable address; None for ``auto`` and ``local``, which name
    no host (Ray finds a running local cluster itself, and fails at once if there is none)."""
    text = address.removeprefix("ray://").rstrip("/")
    if text in ("auto", "local"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise UsageError(
            f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, "
            "ray://head:10001) or auto"
        )
    return host.strip("[]"), int(port)


def probe(address: str, source: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """A :class:`ClusterError` unless ``address``'s host answers on its port in ``timeout``
    seconds; ``source`` says where the address came from."""
    where = endpoint(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=timeout):
            pass
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    else:
        return
    raise ClusterError(
        f"cannot reach the Ray cluster at {address} (from {source}): {reason}. Is the "
        "cluster up and this machine allowed to reach it?"
        + (" Unset RAY_ADDRESS to run on a new local Ray." if source == "RAY_ADDRESS" else "")
    )


def join_timeout(environ: Mapping[str, str]) -> float:
    text = environ.get(JOIN_TIMEOUT_ENV) or ""
    if not text:
        return JOIN_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"{JOIN_TIMEOUT_ENV}={text!r}: expected a number of seconds > 0")
    return value


@contextlib.contextmanager
def _give_up_after(seconds: float, message: str) -> Iterator[None]:
    """Exit the process with ``message`` if the block runs longer than ``seconds``.

    ``ray.init`` waits in C++ for a GCS that does not answer and returns to Python only
    when it gives up itself, minutes later: no exception can be raised into it, so the
    process ends from a timer thread (nothing of ours has started yet)."""

    def stop() -> None:
        print(message, file=sys.stderr, flush=True)
        os._exit(ClusterError.exit_code)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def token_file(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token")


def protect_token(environ: Mapping[str, str], create: bool) -> str | None:
    """Keep Ray's token file readable by its owner only; a warning line when it is not.

    Whoever reads the token can submit jobs, that is run code, as this user. Ray 2.60
    writes ~/.ray/auth_token 0644 in a 0755 folder. With ``create`` (a new local Ray is
    about to start) a missing default token is written here first, 0600 in a 0700 folder,
    so that it never exists with Ray's modes. An existing file of ours is made 0600 (its
    default folder 0700); one that is not ours and is readable by others is reported.
    """
    if environ.get(TOKEN_ENV):
        return None  # the token is in the environment, not in a file
    path = token_file(environ)
    default = not environ.get(TOKEN_PATH_ENV)
    if create and default and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another command wrote it meanwhile
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))  # Ray's own tokens: 64 hex digits
    try:
        info = path.stat()
    except OSError:
        return None  # no token file (yet): nothing readable by others
    targets = [(path, info, 0o600)]
    if default:  # ~/.ray: ours to close; a folder the user named is not
        targets.append((path.parent, path.parent.stat(), 0o700))
    for target, owned, private in targets:
        mode = stat.S_IMODE(owned.st_mode)
        if mode & 0o077 and owned.st_uid == os.getuid():
            target.chmod(mode & private)
    mode = stat.S_IMODE(info.st_mode)  # a file of ours is 0600 by now: only others' warn
    if mode & 0o044 and info.st_uid != os.getuid():
        return (
            f"warning: Ray's token file {path} is readable by others (mode {mode:04o}) and "
            "is not yours to change: whoever reads it can run code on your Ray as you"
        )
    return None


def free_loopback_port(first: int = DASHBOARD_PORT, tries: int = 100) -> int:
    """The first port from ``first`` on that nothing listens on at 127.0.0.1 (another local
    Ray's dashboard holds 8265 while a second search starts)."""
    for port in range(first, first + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((DASHBOARD_HOST, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on {DASHBOARD_HOST} in {first}..{first + tries - 1}")


def ensure_ray(
    address: str | None = None,
    dashboard: bool = False,
    num_cpus: int | None = None,
    job_name: str | None = None,
    **init_kwargs: Any,
) -> RaySession:
    """Join ``address`` (``"auto"``, ``"ray://host:10001"``) or start a local Ray.

    With no ``address``, the ``RAY_ADDRESS`` of the environment is joined if set (inside
    `ray job submit` it names the job's cluster); otherwise a new local Ray starts, even
    when another one runs on this machine (``ray start``, another search): Ray's own
    default would join that one, with its resources and its dashboard settings.
    Returns quietly if Ray is already initialised in this process (tests, notebooks).

    A dashboard we start takes 8265, or the next free loopback port when another Ray on
    this machine holds it. ``job_name`` goes into the driver's job metadata (``job_name``,
    the Jobs page's Name column, and ``experiment``), which ``/api/jobs/`` returns.
    """
    import ray

    if ray.is_initialized():
        return RaySession(False, None, None)
    notice = job_api_notice(address, os.environ)
    source = "--address" if address else "RAY_ADDRESS"
    address = join_address(address, os.environ)
    if notice:
        print(notice, file=sys.stderr, flush=True)
    if address is not None:
        print(f"Joining the Ray cluster at {address} (from {source})", file=sys.stderr, flush=True)
        probe(address, source)
    from pneumotune.compat import ray_internals

    # Ray warns on every start that token auth is on "by default": it is, on purpose.
    logging.getLogger(ray_internals.AUTH_TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {
        "address": address or "local",
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        **init_kwargs,
    }
    if job_name:
        from ray.job_config import JobConfig

        # job_name: the Jobs page's Name column; experiment: for our own queries.
        metadata = {"job_name": job_name, "experiment": job_name}
        kwargs["job_config"] = JobConfig(metadata=metadata)
    if address is None:
        kwargs["num_cpus"] = num_cpus
        kwargs["include_dashboard"] = dashboard
        if dashboard:
            kwargs["dashboard_host"] = DASHBOARD_HOST
            kwargs["dashboard_port"] = free_loopback_port()
    warning = protect_token(os.environ, create=address is None)
    if address is None:
        with _agent_port_free_if_taken(), _loopback_node():
            ctx = ray.init(**kwargs)
    else:
        seconds = join_timeout(os.environ)
        gave_up = (
            f"pneumotune: error: could not join the Ray cluster at {address} (from "
            f"{source}) within {seconds:g} s: it answers on that port but Ray's handshake "
            f"did not finish. Check the address and that both sides run the same Ray "
            f"version ({ray.__version__} here); {JOIN_TIMEOUT_ENV} sets the wait."
        )
        try:
            with _give_up_after(seconds, gave_up):
                ctx = ray.init(**kwargs)
        except ConnectionError as exc:
            raise ClusterError(
                f"could not join the Ray cluster at {address} (from {source}): {exc}"
            ) from None
    warning = protect_token(os.environ, create=False) or warning
    if warning:
        print(warning, file=sys.stderr, flush=True)
    quiet_ray_data()
    return RaySession(address is None, _dashboard_url(ctx), address)


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """A new local Ray on 127.0.0.1: all of its servers listen on loopback only.

    Ray picks a local node's address with its private ``get_node_ip_address``, which uses
    the loopback address when Ray's ``ENABLE_RAY_CLUSTER`` is false (its environment
    variable is read once, at import, so the constant is set too for the call:
    :func:`pneumotune.compat.ray_internals.ray_cluster_disabled`). The node's processes
    start inside ``ray.init`` and keep the variable; it is restored here so that a later
    join in this process is not affected. Ray pinned at 2.60 (pyproject.toml);
    tests/pneumotune_tests/test_ray_session.py lists the listening sockets of a new local Ray.
    """
    from pneumotune.compat import ray_internals

    saved_env = os.environ.get(_CLUSTER_ENV)
    os.environ[_CLUSTER_ENV] = "0"
    try:
        with ray_internals.ray_cluster_disabled():
            yield
    finally:
        if saved_env is None:
            os.environ.pop(_CLUSTER_ENV, None)
        else:
            os.environ[_CLUSTER_ENV] = saved_env


@contextlib.contextmanager
def _agent_port_free_if_taken() -> Iterator[None]:
    """A new local Ray's dashboard agent on a free port when another Ray holds Ray's fixed
    default (52365).

    ``ray.init`` offers no option for that port; a second Ray on the machine then runs its
    agent without an HTTP server, and its dashboard cannot show any actor's or task's log
    ("Agent for node id ... doesn't exist"). For the duration of the call the agent port
    defaults to 0 (the OS picks one; the agent records the port it got for the
    dashboard): :func:`pneumotune.compat.ray_internals.dashboard_agent_port_defaulting_to`.
    """
    from pneumotune.compat import ray_internals

    default = ray_internals.default_dashboard_agent_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", default))
            yield  # free: Ray's default stands
            return
        except OSError:
            pass
    with ray_internals.dashboard_agent_port_defaulting_to(0):
        yield


def quiet_ray_data() -> None:
    """Our commands draw their own progress bars (files, not blocks)."""
    from ray.data import DataContext

    from pneumotune.compat import ray_internals

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", ray_internals.DATA_PROGRESS_LOGGER):
        logging.getLogger(name).setLevel(logging.ERROR)


def _dashboard_url(ctx: Any = None) -> str | None:
    url = getattr(ctx, "dashboard_url", None)
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url or None
