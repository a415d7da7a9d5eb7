"""Connecting a swapwatch process (the `serve --ray` front end, a `monitor --ray` driver) to a Ray cluster.

Ray is imported here only, on first use: the single-host path never loads it, and without the `cluster` extra
installed a `--ray` option fails with one line saying what to install.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from swapwatch.config import ClusterConfig
from swapwatch.errors import SwapwatchError

__all__ = ["ClusterUnavailable", "RayConnection", "connect", "import_ray"]

log = logging.getLogger(__name__)


class ClusterUnavailable(SwapwatchError):
    """Ray is not installed, or the cluster cannot be reached."""


def import_ray() -> Any:
    # No usage statistics: a swapwatch cluster may have no route to the internet, and nothing is sent unasked.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ClusterUnavailable("--ray needs Ray: pip install 'swapwatch[cluster]'") from None
    return ray


@dataclass
class RayConnection:
    """This process's connection: ``started_local`` when it started the cluster itself (`--ray local`)."""

    address: str
    started_local: bool
    namespace: str

    def shutdown(self) -> None:
        ray = import_ray()
        if ray.is_initialized():
            ray.shutdown()


def connect(config: ClusterConfig, *, log_to_driver: bool = True) -> RayConnection:
    """``ray.init`` for ``config.address`` ("local": a one-node cluster in this process offering
    ``local_hosts`` session hosts of ``sessions_per_host`` each). Already connected: that connection is used."""
    ray = import_ray()
    if config.address is None:
        raise ClusterUnavailable("no Ray address given")
    if ray.is_initialized():
        return RayConnection(str(ray.get_runtime_context().gcs_address), False, config.namespace)
    local = config.address == "local"
    options: dict[str, Any] = {"namespace": config.namespace, "include_dashboard": False,
                               "log_to_driver": log_to_driver, "configure_logging": False}
    if local:  # "local": always a new cluster, never one that happens to run on this machine already
        options["address"] = "local"
        options["resources"] = {config.resource: config.sessions_per_host * config.local_hosts}
    else:
        _check_reachable(config.address)
        options["address"] = config.address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnavailable(f"cannot connect to the Ray cluster at {config.address}: {exc}") from None
    address = str(ray.get_runtime_context().gcs_address)
    log.info("ray: %s cluster at %s (namespace %s)", "started a local" if local else "connected to the",
             address, config.namespace)
    return RayConnection(address, local, config.namespace)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT head that does not accept TCP fails here in seconds (ray.init would retry for minutes)."""
    import socket

    if "://" in address or address == "auto" or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise ClusterUnavailable(f"cannot connect to the Ray cluster at {address}: {exc}") from None
