"""Starting or joining Ray the same way from every command.

Security defaults (README "Security"): token authentication stays on (Ray 2.60's
default for a local cluster; we never set ``RAY_AUTH_MODE``, whose value Ray reads
once at import) and a dashboard we start listens on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8265


@dataclass(frozen=True)
class RaySession:
    started_here: bool  # False when we joined a running cluster (or ray was already up)
    dashboard_url: str | None
    address: str | None


def ensure_ray(
    address: str | None = None,
    dashboard: bool = False,
    num_cpus: int | None = None,
    **init_kwargs: Any,
) -> RaySession:
    """Join ``address`` (``"auto"``, ``"ray://host:10001"``) or start a local Ray.

    Returns quietly if Ray is already initialised in this process (tests, notebooks).
    """
    import ray

    if ray.is_initialized():
        return RaySession(False, None, None)
    # Ray warns on every start that token auth is on "by default": it is, on purpose.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    kwargs: dict[str, Any] = {
        "address": address,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        **init_kwargs,
    }
    if address is None:
        kwargs["num_cpus"] = num_cpus
        kwargs["include_dashboard"] = dashboard
        if dashboard:
            kwargs["dashboard_host"] = DASHBOARD_HOST
            kwargs["dashboard_port"] = DASHBOARD_PORT
    ctx = ray.init(**kwargs)
    quiet_ray_data()
    return RaySession(address is None, _dashboard_url(ctx), address)


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
