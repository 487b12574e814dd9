"""Starting or joining Ray the same way from every command.

Security defaults (README "Security"): token authentication stays on (Ray 2.60's
default for a local cluster; we never set ``RAY_AUTH_MODE``, whose value Ray reads
once at import) and a dashboard we start listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8265


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
        from pneumotune.errors import UsageError

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
    address = join_address(address, os.environ)
    if notice:
        print(notice, file=sys.stderr, flush=True)
    # Ray warns on every start that token auth is on "by default": it is, on purpose.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
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
    with _agent_port_free_if_taken() if address is None else contextlib.nullcontext():
        ctx = ray.init(**kwargs)
    quiet_ray_data()
    return RaySession(address is None, _dashboard_url(ctx), address)


@contextlib.contextmanager
def _agent_port_free_if_taken() -> Iterator[None]:
    """A new local Ray's dashboard agent on a free port when another Ray holds Ray's fixed
    default (52365).

    ``ray.init`` offers no option for that port; a second Ray on the machine then runs its
    agent without an HTTP server, and its dashboard cannot show any actor's or task's log
    ("Agent for node id ... doesn't exist"). ``ray.init`` builds its parameters with
    ``ray._private.parameter.RayParams`` at call time, so for the duration of the call
    that class is one whose agent port defaults to 0 (the OS picks one; the agent
    records the port it got for the dashboard). Ray pinned at 2.60 (pyproject.toml).
    """
    from ray._private import parameter, ray_constants

    default = ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", default))
            yield  # free: Ray's default stands
            return
        except OSError:
            pass
    original = parameter.RayParams

    class RayParams(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    parameter.RayParams = RayParams
    try:
        yield
    finally:
        parameter.RayParams = original


def quiet_ray_data() -> None:
    """Our commands draw their own progress bars (files, not blocks)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _dashboard_url(ctx: Any = None) -> str | None:
    url = getattr(ctx, "dashboard_url", None)
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url or None
