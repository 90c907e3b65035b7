"""A local cluster's names, paths and state file.

Holds the environment variables and the label every node gets, :class:`NodeState` and
:class:`ClusterState` (the JSON state file ``<root>/cluster.json``), the host index under
``/run/lsio-local-cluster`` that finds a running cluster's state file by name, the host
lock, the cluster name check and where each node's Ray temp dir goes. Every other module
of the package builds on this one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MARKER_ENV = "LSIO_LOCAL_CLUSTER"
"""Environment variable naming the cluster, set on every process of every node."""
NODE_NAME_ENV = "LSIO_NODE_NAME"
"""Environment variable with the node's name (``node-K``)."""
DATA_DIR_ENV = "LSIO_NODE_DATA_DIR"
"""Environment variable with the node's local data directory."""
NODE_IP_ENV = "LSIO_NODE_IP"
"""Environment variable with the node's IP address."""
LABEL_KEY = "lsio-node"
"""Ray node label key; the value is the node's name."""
DEFAULT_NAME = "lsio"
STATE_FILE = "cluster.json"
INDEX_DIR = Path("/run/lsio-local-cluster")
"""Where ``<name>.json`` points at a running cluster's state file (and the host lock)."""
HOST_PREFIX = "lsio-cluster-"
"""Prefix of the cluster's cgroup and of its short temp dir base: ``lsio-cluster-<name>``."""

_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
_MAX_TEMP_DIR = 40  # 107-byte socket paths minus "/session_<date>_<pid>/sockets/plasma_store"
_SHORT_TEMP_BASE = Path("/tmp")


class ClusterError(RuntimeError):
    """The local cluster could not be started, inspected or torn down."""


@dataclass
class NodeState:
    """One Ray node of the local cluster, as written to the state file."""

    index: int
    name: str
    ip: str
    head: bool
    netns: str | None
    veth: str | None
    data_dir: str
    temp_dir: str
    log_file: str
    resource: str
    label: str
    pid: int | None = None
    node_id: str | None = None

    @property
    def resources(self) -> dict[str, float]:
        """The custom resources this node advertises to Ray."""
        return {self.resource: 1.0}


@dataclass
class ClusterState:
    """Everything ``status`` and ``down`` need, as JSON in ``<root>/cluster.json``."""

    name: str
    root: str
    subnet: str
    bridge: str
    bridge_ip: str
    port: int
    address: str
    cpus_per_node: int
    object_store_memory: int
    status: str
    created: float
    ray: str
    nodes: list[NodeState] = field(default_factory=list)
    cgroup: str | None = None

    @property
    def state_file(self) -> Path:
        """Path of the JSON state file."""
        return Path(self.root) / STATE_FILE

    @property
    def roots(self) -> dict[str, list[str]]:
        """``{node id: [data dir]}``: each node's local disk, as lsio_ray's locality
        (:class:`lsio_ray.ray.locality.Locality`) takes declared roots."""
        return {n.node_id: [n.data_dir] for n in self.nodes if n.node_id}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterState:
        """Inverse of :meth:`to_dict`."""
        fields = dict(data)
        fields["nodes"] = [NodeState(**n) for n in data.get("nodes", [])]
        return cls(**fields)

    def save(self) -> None:
        """Write the state file atomically and point the host index at it."""
        root = Path(self.root)
        if not root.is_dir():
            return
        tmp = root / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(self.state_file)
        if self.status != "down":
            INDEX_DIR.mkdir(parents=True, exist_ok=True)
            index = INDEX_DIR / f"{self.name}.json"
            index.write_text(json.dumps({"state_file": str(self.state_file)}) + "\n")


def load_state(
    name: str | None = None, root: str | os.PathLike[str] | None = None
) -> ClusterState | None:
    """The state of cluster ``name`` (via the host index) or of the cluster in ``root``.

    Returns None when there is no state file (never started, or removed).
    """
    path: Path | None = None
    if root is not None:
        path = Path(root) / STATE_FILE
    elif name is not None:
        index = INDEX_DIR / f"{name}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            path = Path(json.loads(index.read_text())["state_file"])
    if path is None or not path.is_file():
        return None
    try:
        return ClusterState.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"unreadable state file {path}: {exc}") from None


def local_node() -> dict[str, str] | None:
    """This process's node of a local cluster (``name``, ``data_dir``, ``ip``, ``cluster``).

    Meant to be called inside Ray tasks and actors; None outside a local cluster.
    """
    if MARKER_ENV not in os.environ:
        return None
    return {
        "cluster": os.environ[MARKER_ENV],
        "name": os.environ.get(NODE_NAME_ENV, ""),
        "data_dir": os.environ.get(DATA_DIR_ENV, ""),
        "ip": os.environ.get(NODE_IP_ENV, ""),
    }


def check_name(name: str) -> None:
    """Raise :class:`ClusterError` unless ``name`` is a valid cluster name."""
    if not _NAME_RE.fullmatch(name):
        raise ClusterError(
            f"cluster name {name!r}: use 1-8 lowercase letters or digits, starting with a "
            "letter (it prefixes interface names, which the kernel limits to 15 bytes)"
        )


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """Serialize subnet choice and network creation between clusters on this host."""
    INDEX_DIR.mkdir(parents=True, exist_ok=True)
    with open(INDEX_DIR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def node_temp_dir(root: Path, name: str, k: int) -> Path:
    """Ray temp dir of node ``k``: ``<root>/node-K/ray`` when short enough for Ray's Unix
    sockets, else under :func:`short_temp_base`."""
    preferred = root / f"node-{k}" / "ray"
    if len(str(preferred)) <= _MAX_TEMP_DIR:
        return preferred
    return short_temp_base(name) / f"n{k}"


def short_temp_base(name: str) -> Path:
    """Parent of the node temp dirs when ``<root>/node-K/ray`` is too long for sockets."""
    return _SHORT_TEMP_BASE / f"{HOST_PREFIX}{name}"
