"""Finding and killing every process of a cluster, knowing only its name.

Processes are found without trusting pid files. Each node's ``ray start`` enters its own
cgroup v2 (``lsio-cluster-<name>/node-K``, nested in the caller's cgroup) before it execs,
so every Ray process of the node is in it; teardown kills the cgroup. Where cgroups are
read-only (containers), the node's namespace, the ``LSIO_LOCAL_CLUSTER=<name>``
environment marker and the process tree below the recorded ``ray start`` do the job (Ray's
setproctitle can overwrite the marker in the daemons' /proc/PID/environ, hence not the
marker alone). So teardown needs only the cluster name and works after a crash of
whatever started the cluster. It never runs ``ray stop``, which would stop every Ray
cluster on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from lsio_ray.deploy.local_cluster.cgroups import (
    cgroup_procs,
    kill_cgroups,
    our_cgroups,
    remove_cgroups,
)
from lsio_ray.deploy.local_cluster.netns import netns_name, netns_pids, our_netns
from lsio_ray.deploy.local_cluster.state import (
    MARKER_ENV,
    NODE_NAME_ENV,
    ClusterError,
    ClusterState,
)


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _processes() -> dict[int, int]:
    """``{pid: parent pid}`` of every live (non-zombie) process on the host."""
    table: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields and fields[0] not in ("Z", "X"):
            table[int(entry.name)] = int(fields[1])
    return table


def cluster_pids(name: str, state: ClusterState | None = None, node: str | None = None) -> set[int]:
    """Live processes of cluster ``name`` (of one node when ``node`` is given).

    The union of: the cluster's cgroup (exact, when cgroup v2 is writable), the node
    namespaces, the ``LSIO_LOCAL_CLUSTER`` environment marker (Ray's setproctitle can
    overwrite it in workers) and the descendants of the recorded ``ray start`` processes.
    """
    pids: set[int] = set()
    for cg in our_cgroups(name, state):
        pids |= cgroup_procs(cg / node if node else cg)
    netns_wanted = netns_name(name, int(node.rsplit("-", 1)[-1])) if node else None
    for ns in our_netns(name):
        if netns_wanted in (None, ns):
            pids |= netns_pids(ns)
    marker = f"{MARKER_ENV}={name}".encode()
    node_marker = f"{NODE_NAME_ENV}={node}".encode() if node else None
    table = _processes()
    marked = set()
    for pid in table:
        env = _environ(pid)
        if marker in env and (node_marker is None or node_marker in env):
            marked.add(pid)
    pids |= marked
    if state is not None:
        children: dict[int, list[int]] = {}
        for pid, ppid in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = [n.pid for n in state.nodes if n.pid in marked and node in (None, n.name)]
        while todo:
            pid = todo.pop()
            pids.add(pid)
            todo.extend(children.get(pid, []))
    pids.discard(os.getpid())
    return {p for p in pids if p in table}


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(name: str, state: ClusterState | None, timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = cluster_pids(name, state)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def kill_all(name: str, state: ClusterState | None, grace: float) -> None:
    """SIGTERM every process of the cluster, SIGKILL what is left after ``grace``, and
    remove the cluster's cgroups."""
    cgroups = our_cgroups(name, state)
    left = cluster_pids(name, state)
    if left:
        _signal_all(left, signal.SIGTERM)
        left = _wait_gone(name, state, grace)
    for _ in range(3):
        if not left:
            break
        kill_cgroups(cgroups)
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(name, state, 5.0)
    if left:
        raise ClusterError(f"cluster {name!r}: processes survived SIGKILL: {sorted(left)}")
    remove_cgroups(cgroups)
