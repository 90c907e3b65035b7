"""A cluster found by its name alone: what is left of it, what runs, and its teardown.

:func:`down` needs no :class:`~lsio_ray.deploy.local_cluster.cluster.LocalCluster`
object, only the cluster's name (or its root directory), so it also cleans up after a
crash of whatever started the cluster. :func:`leftovers` and :func:`status` report what
of the cluster exists on this host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any

from lsio_ray.deploy.local_cluster.cgroups import our_cgroups
from lsio_ray.deploy.local_cluster.gcs import alive_nodes, disconnect_driver, gcs_client
from lsio_ray.deploy.local_cluster.netns import delete_network, our_links, our_netns
from lsio_ray.deploy.local_cluster.ports import port_open
from lsio_ray.deploy.local_cluster.processes import cluster_pids, kill_all
from lsio_ray.deploy.local_cluster.state import (
    DEFAULT_NAME,
    INDEX_DIR,
    ClusterError,
    ClusterState,
    check_name,
    load_state,
    short_temp_base,
)


def _find(name: str, root: str | os.PathLike[str] | None) -> tuple[str, ClusterState | None]:
    """The cluster's name (checked) and state: from ``root``'s state file when given, else
    through the host index by ``name``; the state file's name wins over ``name``."""
    state = load_state(root=root) if root is not None else load_state(name=name)
    if state is not None:
        name = state.name
    check_name(name)
    return name, state


def leftovers(name: str, state: ClusterState | None = None) -> dict[str, list[str]]:
    """What of cluster ``name`` exists on this host: namespaces, links, cgroups, processes."""
    return {
        "netns": our_netns(name),
        "links": our_links(name),
        "cgroups": [str(p) for p in our_cgroups(name, state)],
        "processes": [str(p) for p in sorted(cluster_pids(name, state))],
    }


def down(
    name: str = DEFAULT_NAME,
    root: str | os.PathLike[str] | None = None,
    *,
    grace: float = 5.0,
    keep_logs: bool = False,
) -> None:
    """Stop every process of the cluster, delete its namespaces, veths and bridge.

    Idempotent and safe after a crash: it finds everything by the cluster's name (from
    ``root``'s state file when given). Data directories are kept; Ray temp dirs (logs,
    sockets, spilled objects) are removed unless ``keep_logs``.

    Raises:
        ClusterError: something of the cluster still exists afterwards.
    """
    name, state = _find(name, root)
    if state is not None:
        disconnect_driver(state.address)
    kill_all(name, state, grace)
    delete_network(name)
    if not keep_logs and state is not None:
        # Only the node temp dirs this cluster recorded, then their short parent if that is
        # empty now: never a directory that might also hold someone's data.
        for node in state.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            short_temp_base(name).rmdir()
    with contextlib.suppress(OSError):
        (INDEX_DIR / f"{name}.json").unlink()
    if state is not None:
        state.status = "down"
        for node in state.nodes:
            node.pid = None
        with contextlib.suppress(OSError):
            state.save()
    left = {k: v for k, v in leftovers(name, state).items() if v}
    if left:
        raise ClusterError(f"cluster {name!r} not fully torn down: {left}")


def status(name: str = DEFAULT_NAME, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """State file contents plus what actually runs: processes per node, GCS liveness."""
    name, state = _find(name, root)
    info: dict[str, Any] = {"name": name, "leftovers": leftovers(name, state)}
    if state is None:
        info["status"] = "unknown (no state file)"
        return info
    info.update(state.to_dict())
    alive: dict[str, str] = {}
    head_ip, port = state.bridge_ip, state.port
    if port_open(head_ip, port):
        with contextlib.suppress(Exception):
            alive = alive_nodes(gcs_client(state.address))
    for node in info["nodes"]:
        node["processes"] = len(cluster_pids(name, state, node["name"]))
        node["alive_in_gcs"] = node["ip"] in alive
    return info
