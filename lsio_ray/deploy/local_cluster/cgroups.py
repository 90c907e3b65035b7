"""The cluster's cgroups v2: one per node, ``lsio-cluster-<name>/node-K``.

Created before the nodes start (each ``ray start`` enters its node's cgroup before it
execs), read to find a node's processes, killed and removed on teardown; see
:mod:`lsio_ray.deploy.local_cluster.processes`. Where cgroups are read-only (containers)
there are none.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from lsio_ray.deploy.local_cluster.state import HOST_PREFIX, ClusterState


def _cgroup2_root() -> Path | None:
    """Mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup`` or ``.../unified``)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def _cgroup_base(name: str) -> Path | None:
    """Where a new cluster's cgroup goes: under this process's own cgroup v2.

    Nesting keeps the cluster inside whatever limits (and cleanup) the caller's cgroup has,
    e.g. a CI job's.
    """
    root = _cgroup2_root()
    if root is None:
        return None
    own = "/"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip()
    parent = root / own.lstrip("/")
    return (parent if parent.is_dir() else root) / f"{HOST_PREFIX}{name}"


def our_cgroups(name: str, state: ClusterState | None) -> list[Path]:
    """Existing cgroup directories of cluster ``name``."""
    candidates = [Path(state.cgroup)] if state is not None and state.cgroup else []
    base = _cgroup_base(name)
    root = _cgroup2_root()
    candidates += [p for p in (base, root / f"{HOST_PREFIX}{name}" if root else None) if p]
    return list(dict.fromkeys(p for p in candidates if p.is_dir()))


def cgroup_procs(cgroup: Path) -> set[int]:
    """Processes in ``cgroup`` and its descendants."""
    pids: set[int] = set()
    for d, _, _ in os.walk(cgroup):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in Path(d, "cgroup.procs").read_text().split())
    return pids


def create_cgroups(name: str, nodes: Sequence[str]) -> str | None:
    """One cgroup v2 per node, so teardown finds (and kills) every process exactly.

    Returns the cluster's cgroup, or None where cgroups are read-only (containers);
    teardown then relies on namespaces, markers and the process tree.
    """
    base = _cgroup_base(name)
    if base is None:
        return None
    try:
        base.mkdir(exist_ok=True)
        for node in nodes:
            (base / node).mkdir(exist_ok=True)
    except OSError:
        with contextlib.suppress(OSError):
            for node in nodes:
                (base / node).rmdir()
            base.rmdir()
        return None
    return str(base)


def in_cgroup(cgroup: str | None, node: str, cmd: list[str]) -> list[str]:
    """Prefix ``cmd`` so that it enters the cgroup of ``node`` before it execs."""
    if cgroup is None:
        return cmd
    script = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    return ["/bin/sh", "-c", script, str(Path(cgroup) / node), *cmd]


def kill_cgroups(cgroups: Sequence[Path]) -> None:
    """SIGKILL every process in ``cgroups`` (kernel >= 5.14; a no-op before)."""
    for cg in cgroups:
        with contextlib.suppress(OSError):
            (cg / "cgroup.kill").write_text("1")  # kernel >= 5.14: the whole subtree


def remove_cgroups(cgroups: Sequence[Path]) -> None:
    """Remove ``cgroups`` and their descendants, once their processes are gone."""
    for cg in cgroups:
        deadline = time.monotonic() + 5
        while cg.is_dir() and time.monotonic() < deadline:
            for d, _, _ in sorted(os.walk(cg), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # a cgroup dir goes once empty (its files are virtual)
            if cg.is_dir():
                time.sleep(0.1)
