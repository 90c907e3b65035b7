"""A real multi-node Ray cluster on one machine: one network namespace per worker node.

Each node is a full Ray node (raylet, object store, workers) started by ``ray start
--block``, with its own IP address, its own "local disk" directory and a custom resource
that pins work to it. It proves locality and correctness (which node read which file,
what crossed the network); it cannot prove speed-up, since every node shares the same
cores and disks.

Layout of a 3-node cluster called ``lsio`` (addresses picked from 10.213.0.0/16)::

    root namespace                     netns lsio-node1         netns lsio-node2
    bridge lsio-br  10.213.0.1/24 <--> veth lsio-v1 <-> eth0     veth lsio-v2 <-> eth0
    node-0: Ray head (GCS, raylet)     node-1: 10.213.0.11      node-2: 10.213.0.12
    your driver: ray.init(address="10.213.0.1:6379")

The namespaces get no default route, so nothing sent from them can leave the machine. The
head's Ray ports listen on all of the host's interfaces, as with any Ray head; Ray's token
authentication stays off (``RAY_AUTH_MODE=disabled``) unless the caller's environment sets
``RAY_AUTH_MODE``. Drivers run in the root namespace.

Every node K gets:

* the custom resource ``lsio_node_K: 1`` and the node label ``lsio-node=node-K``; pin a
  task with ``resources={"lsio_node_K": 0.01}`` (a fraction, so many tasks fit) and give
  pinned actors ``num_cpus=0``;
* a data directory ``<root>/node-K/data``, exported to every Ray worker on the node as
  ``LSIO_NODE_DATA_DIR`` (with ``LSIO_NODE_NAME=node-K`` and ``LSIO_NODE_IP``);
  :func:`local_node` reads them back;
* its own Ray temp dir (logs, sockets, spilled objects): ``<root>/node-K/ray`` when that
  path is short enough for Unix sockets (107 bytes, with Ray's ~65-byte session suffix),
  else ``/tmp/lsio-cluster-<name>/nK``.

Why the head lives in the root namespace, on the bridge address: a driver connects to the
raylet of "its" node and advertises that node's IP as its own gRPC address. With the head
inside a namespace, a driver in the root namespace advertised the head's IP, which from the
other namespaces is not the driver; a task on node-1 taking a ``ray.put`` object from the
driver then hung until ``ray.get(timeout=60)`` raised ``GetTimeoutError`` (measured, Ray
2.60). With the head on the bridge address, drivers in the root namespace just work.

Processes are found without trusting pid files. Each node's ``ray start`` enters its own
cgroup v2 (``lsio-cluster-<name>/node-K``, nested in the caller's cgroup) before it execs,
so every Ray process of the node is in it; teardown kills the cgroup. Where cgroups are
read-only (containers), the node's namespace, the ``LSIO_LOCAL_CLUSTER=<name>``
environment marker and the process tree below the recorded ``ray start`` do the job (Ray's
setproctitle can overwrite the marker in the daemons' /proc/PID/environ, hence not the
marker alone). So :func:`down` needs only the cluster name and works after a crash of
whatever started the cluster. It never runs ``ray stop``, which would stop every Ray
cluster on the machine.

Needs root (``ip netns``, veths, a bridge) and iproute2. Command line::

    python -m lsio_ray.deploy.local_cluster up --nodes 3 --root /tmp/lsio-demo
    python -m lsio_ray.deploy.local_cluster status
    python -m lsio_ray.deploy.local_cluster down

Python::

    with LocalCluster(nodes=3, root=tmp) as cluster:
        ray.init(address=cluster.address)
        ...
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from lsio_ray import argtypes

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_NAME",
    "LABEL_KEY",
    "MARKER_ENV",
    "NODE_IP_ENV",
    "NODE_NAME_ENV",
    "ClusterError",
    "ClusterState",
    "LocalCluster",
    "NodeState",
    "build_parser",
    "down",
    "leftovers",
    "load_state",
    "local_node",
    "main",
    "status",
]

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
DEFAULT_POOL = "10.213.0.0/16"
"""Private range the /24 subnets are picked from, skipping any the host already routes."""
STATE_FILE = "cluster.json"
INDEX_DIR = Path("/run/lsio-local-cluster")
"""Where ``<name>.json`` points at a running cluster's state file (and the host lock)."""
WORKER_HOST_OFFSET = 10
"""Node K >= 1 gets host number 10 + K of the subnet; the head has the bridge's .1."""
DEFAULT_HEAD_PORT = 6379

_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
_MAX_TEMP_DIR = 40  # 107-byte socket paths minus "/session_<date>_<pid>/sockets/plasma_store"
_SHORT_TEMP_BASE = Path("/tmp")
_CGROUP_PREFIX = "lsio-cluster-"


class ClusterError(RuntimeError):
    """The local cluster could not be started, inspected or torn down."""


# ---------------------------------------------------------------------------------------
# state


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


# ---------------------------------------------------------------------------------------
# host helpers: commands, names, links, namespaces, processes


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise ClusterError(f"`{' '.join(args)}` failed with status {proc.returncode}: {msg}")
    return proc


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = _run(["ip", "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ClusterError(
            f"cluster name {name!r}: use 1-8 lowercase letters or digits, starting with a "
            "letter (it prefixes interface names, which the kernel limits to 15 bytes)"
        )


def _netns_name(name: str, k: int) -> str:
    return f"{name}-node{k}"


def _veth_name(name: str, k: int) -> str:
    return f"{name}-v{k}"


def _bridge_name(name: str) -> str:
    return f"{name}-br"


def _our_netns(name: str) -> list[str]:
    pattern = re.compile(rf"{re.escape(name)}-node\d+")
    return sorted(ns["name"] for ns in _ip_json("netns", "list") if pattern.fullmatch(ns["name"]))


def _our_links(name: str) -> list[str]:
    pattern = re.compile(rf"{re.escape(name)}-(br|v\d+)")
    return sorted(
        ln["ifname"] for ln in _ip_json("link", "show") if pattern.fullmatch(ln["ifname"])
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
    return (parent if parent.is_dir() else root) / f"{_CGROUP_PREFIX}{name}"


def _our_cgroups(name: str, state: ClusterState | None) -> list[Path]:
    """Existing cgroup directories of cluster ``name``."""
    candidates = [Path(state.cgroup)] if state is not None and state.cgroup else []
    base = _cgroup_base(name)
    root = _cgroup2_root()
    candidates += [p for p in (base, root / f"{_CGROUP_PREFIX}{name}" if root else None) if p]
    return list(dict.fromkeys(p for p in candidates if p.is_dir()))


def _cgroup_procs(cgroup: Path) -> set[int]:
    pids: set[int] = set()
    for d, _, _ in os.walk(cgroup):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in Path(d, "cgroup.procs").read_text().split())
    return pids


def _cluster_pids(
    name: str, state: ClusterState | None = None, node: str | None = None
) -> set[int]:
    """Live processes of cluster ``name`` (of one node when ``node`` is given).

    The union of: the cluster's cgroup (exact, when cgroup v2 is writable), the node
    namespaces, the ``LSIO_LOCAL_CLUSTER`` environment marker (Ray's setproctitle can
    overwrite it in workers) and the descendants of the recorded ``ray start`` processes.
    """
    pids: set[int] = set()
    for cg in _our_cgroups(name, state):
        pids |= _cgroup_procs(cg / node if node else cg)
    netns_wanted = _netns_name(name, int(node.rsplit("-", 1)[-1])) if node else None
    for ns in _our_netns(name):
        if netns_wanted in (None, ns):
            out = _run(["ip", "netns", "pids", ns], check=False).stdout
            pids.update(int(p) for p in out.split() if p.isdigit())
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
        left = _cluster_pids(name, state)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _kill_all(name: str, state: ClusterState | None, grace: float) -> None:
    """SIGTERM every process of the cluster, SIGKILL what is left after ``grace``, and
    remove the cluster's cgroups."""
    cgroups = _our_cgroups(name, state)
    left = _cluster_pids(name, state)
    if left:
        _signal_all(left, signal.SIGTERM)
        left = _wait_gone(name, state, grace)
    for _ in range(3):
        if not left:
            break
        for cg in cgroups:
            with contextlib.suppress(OSError):
                (cg / "cgroup.kill").write_text("1")  # kernel >= 5.14: the whole subtree
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(name, state, 5.0)
    if left:
        raise ClusterError(f"cluster {name!r}: processes survived SIGKILL: {sorted(left)}")
    for cg in cgroups:
        deadline = time.monotonic() + 5
        while cg.is_dir() and time.monotonic() < deadline:
            for d, _, _ in sorted(os.walk(cg), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # a cgroup dir goes once empty (its files are virtual)
            if cg.is_dir():
                time.sleep(0.1)


def leftovers(name: str, state: ClusterState | None = None) -> dict[str, list[str]]:
    """What of cluster ``name`` exists on this host: namespaces, links, cgroups, processes."""
    return {
        "netns": _our_netns(name),
        "links": _our_links(name),
        "cgroups": [str(p) for p in _our_cgroups(name, state)],
        "processes": [str(p) for p in sorted(_cluster_pids(name, state))],
    }


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """Serialize subnet choice and network creation between clusters on this host."""
    INDEX_DIR.mkdir(parents=True, exist_ok=True)
    with open(INDEX_DIR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks the host already routes or holds addresses in (default route aside)."""
    used: list[ipaddress.IPv4Network] = []
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst, strict=False))
    for link in _ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                used.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", False))
    return used


def _pick_subnet(subnet: str | None, nodes: int) -> ipaddress.IPv4Network:
    used = _used_networks()
    if subnet is not None:
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise ClusterError(f"bad subnet {subnet!r}: {exc}") from None
        if not net.is_private:
            raise ClusterError(f"subnet {net} is not a private range; use e.g. 10.213.0.0/24")
        if net.num_addresses - 2 < WORKER_HOST_OFFSET + nodes:
            raise ClusterError(f"subnet {net} is too small for {nodes} nodes")
        clash = sorted({str(u) for u in used if u.overlaps(net)})
        if clash:
            raise ClusterError(f"subnet {net} overlaps networks in use on this host: {clash}")
        return net
    if nodes > 254 - WORKER_HOST_OFFSET:
        raise ClusterError(f"at most {254 - WORKER_HOST_OFFSET} nodes fit a /24")
    for net in ipaddress.IPv4Network(DEFAULT_POOL).subnets(new_prefix=24):
        if not any(u.overlaps(net) for u in used):
            return net
    raise ClusterError(f"no free /24 left in {DEFAULT_POOL}; pass subnet= explicitly")


def _listening_ports() -> set[int]:
    """TCP ports with a listening socket in this network namespace.

    A test ``bind()`` is not enough: gRPC servers (Ray's GCS) set SO_REUSEPORT, and a
    second GCS would then share the port with the first instead of failing.
    """
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _claimed_ports() -> set[int]:
    """Head ports of the other local clusters on this host (some may not listen yet)."""
    ports: set[int] = set()
    for index in INDEX_DIR.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, ClusterError):
            state = load_state(name=index.stem)
            if state is not None and state.status != "down":
                ports.add(state.port)
    return ports


def _pick_port(port: int | None) -> int:
    taken = _listening_ports() | _claimed_ports()
    if port is not None:
        if port in taken:
            raise ClusterError(f"port {port} is in use on this host; pick another one")
        return port
    if DEFAULT_HEAD_PORT not in taken:
        return DEFAULT_HEAD_PORT
    return next(p for p in _free_ports(8) if p not in taken)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free right now (all sockets held open while choosing)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def _ray_executable(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "ray"
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if found:
        return found
    raise ClusterError(f"no `ray` command beside {sys.executable} or on PATH: pip install ray")


def _temp_dir(root: Path, name: str, k: int) -> Path:
    preferred = root / f"node-{k}" / "ray"
    if len(str(preferred)) <= _MAX_TEMP_DIR:
        return preferred
    return _short_temp_base(name) / f"n{k}"


def _short_temp_base(name: str) -> Path:
    """Parent of the node temp dirs when ``<root>/node-K/ray`` is too long for sockets."""
    return _SHORT_TEMP_BASE / f"{_CGROUP_PREFIX}{name}"


def _tail(path: str | os.PathLike[str], lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _forward_warning(bridge: str) -> None:
    """Warn when bridged traffic between namespaces is likely dropped by the firewall."""
    try:
        nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip()
    except OSError:
        return
    if nf != "1" or shutil.which("iptables") is None:
        return
    rules = _run(["iptables", "-S", "FORWARD"], check=False).stdout
    if "-P FORWARD DROP" in rules:
        warnings.warn(
            "bridge-nf-call-iptables=1 and the iptables FORWARD policy is DROP (a Docker host?):"
            f" traffic between worker namespaces may be dropped. Allow it with `iptables -I "
            f"FORWARD -i {bridge} -o {bridge} -j ACCEPT`.",
            RuntimeWarning,
            stacklevel=3,
        )


def _disconnect_driver(address: str) -> None:
    """``ray.shutdown()`` when this process is a driver of the cluster at ``address``.

    A driver whose raylet vanishes can be killed by Ray itself; disconnect first.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:
        gcs = None
    if gcs == address:
        ray.shutdown()


# ---------------------------------------------------------------------------------------
# GCS queries (Ray's own client; the public state API needs the dashboard we switch off)


def _gcs_client(address: str) -> Any:
    try:
        from ray._raylet import GcsClient
    except ImportError as exc:
        raise ClusterError(f"cannot import Ray's GcsClient ({exc}): is ray installed?") from None
    try:
        return GcsClient(address=address)
    except Exception as exc:  # ray.exceptions.RpcError, AuthenticationError, ...
        raise ClusterError(f"cannot reach the GCS at {address}: {exc}") from exc


def _alive_nodes(client: Any) -> dict[str, str]:
    """``{node IP: node id}`` of the nodes the GCS reports alive."""
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    infos = client.get_all_node_info(timeout=5, state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
    return {info.node_manager_address: info.node_id.hex() for info in infos.values()}


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


# ---------------------------------------------------------------------------------------
# teardown (needs only the name) and status


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
    state = load_state(root=root) if root is not None else load_state(name=name)
    if state is not None:
        name = state.name
    _check_name(name)
    if state is not None:
        _disconnect_driver(state.address)
    _kill_all(name, state, grace)
    for link in _our_links(name):
        if link != _bridge_name(name):
            _run(["ip", "link", "del", link], check=False)
    for ns in _our_netns(name):
        _run(["ip", "netns", "del", ns], check=False)
    if _bridge_name(name) in _our_links(name):
        _run(["ip", "link", "del", _bridge_name(name)], check=False)
    deadline = time.monotonic() + 10
    while _our_links(name) and time.monotonic() < deadline:
        time.sleep(0.1)  # veths of deleted namespaces go away asynchronously
    if not keep_logs and state is not None:
        # Only the node temp dirs this cluster recorded, then their short parent if that is
        # empty now: never a directory that might also hold someone's data.
        for node in state.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            _short_temp_base(name).rmdir()
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
    state = load_state(root=root) if root is not None else load_state(name=name)
    if state is not None:
        name = state.name
    _check_name(name)
    info: dict[str, Any] = {"name": name, "leftovers": leftovers(name, state)}
    if state is None:
        info["status"] = "unknown (no state file)"
        return info
    info.update(state.to_dict())
    alive: dict[str, str] = {}
    head_ip, port = state.bridge_ip, state.port
    if _port_open(head_ip, port):
        with contextlib.suppress(Exception):
            alive = _alive_nodes(_gcs_client(state.address))
    for node in info["nodes"]:
        node["processes"] = len(_cluster_pids(name, state, node["name"]))
        node["alive_in_gcs"] = node["ip"] in alive
    return info


# ---------------------------------------------------------------------------------------
# the cluster


class LocalCluster:
    """A multi-node Ray cluster on this machine; a context manager that always tears down.

    Args:
        nodes: number of Ray nodes, head included (node-0 is the head).
        root: directory for the state file, per-node data dirs and logs.
        name: 1-8 lowercase letters/digits; prefixes namespaces and interfaces.
        cpus_per_node: ``--num-cpus`` of each node.
        object_store_memory: bytes of object store per node.
        subnet: a private IPv4 network to use (default: a free /24 of 10.213.0.0/16).
        port: GCS port of the head (default 6379 when free, else any free port).
        ray: the ``ray`` command (default: beside ``sys.executable``).
        timeout: seconds to wait for each node to join.
        keep_logs: keep the Ray temp dirs (logs) on teardown.
        env: extra environment variables for every Ray process.
    """

    def __init__(
        self,
        nodes: int = 3,
        root: str | os.PathLike[str] = "/tmp/lsio-local-cluster",
        *,
        name: str = DEFAULT_NAME,
        cpus_per_node: int = 1,
        object_store_memory: int = 1 << 30,
        subnet: str | None = None,
        port: int | None = None,
        ray: str | None = None,
        timeout: float = 120.0,
        keep_logs: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        _check_name(name)
        if nodes < 1:
            raise ClusterError("a cluster needs at least one node")
        if cpus_per_node < 0:
            raise ClusterError("cpus_per_node must be >= 0")
        self.nodes_wanted = nodes
        self.root = Path(root)
        self.name = name
        self.cpus_per_node = cpus_per_node
        self.object_store_memory = int(object_store_memory)
        self.subnet = subnet
        self.port = port
        self.ray = ray
        self.timeout = timeout
        self.keep_logs = keep_logs
        self.env = dict(env or {})
        self._state: ClusterState | None = None
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- public API --------------------------------------------------------------------

    @property
    def state(self) -> ClusterState:
        """The cluster's state (what is also in the state file)."""
        if self._state is None:
            raise ClusterError("the cluster is not up")
        return self._state

    @property
    def address(self) -> str:
        """``ip:port`` of the head's GCS, for ``ray.init(address=...)``."""
        return self.state.address

    @property
    def nodes(self) -> list[NodeState]:
        """The nodes, head first."""
        return self.state.nodes

    @property
    def state_file(self) -> Path:
        """Path of the JSON state file."""
        return self.state.state_file

    @property
    def roots(self) -> dict[str, list[str]]:
        """``{node id: [data dir]}`` of the nodes; see :attr:`ClusterState.roots`."""
        return self.state.roots

    def up(self) -> ClusterState:
        """Create the network, start the head and the workers, wait until all have joined.

        Tears everything down again when any step fails (or is interrupted).
        """
        if self._state is not None and self._state.status == "up":
            raise ClusterError(f"cluster {self.name!r} is already up")
        if os.geteuid() != 0:
            raise ClusterError("the local cluster needs root (network namespaces, veths)")
        if shutil.which("ip") is None:
            raise ClusterError("the `ip` command (iproute2) is missing")
        self._state = None  # a previous run's state must not steer this run's cleanup
        try:
            self._up()
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()  # a no-op when it failed before creating anything
            raise
        return self.state

    def down(self) -> None:
        """Tear down what this object started (idempotent); see :func:`down`.

        A no-op when :meth:`up` never got as far as creating anything, e.g. when it found
        a cluster of the same name already running: that one is left alone.
        """
        if self._state is None:
            return
        try:
            _disconnect_driver(self._state.address)
            down(self.name, self._state.root, keep_logs=self.keep_logs)
        finally:
            for proc in self._procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            self._procs.clear()
            self._state.status = "down"

    def __enter__(self) -> LocalCluster:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # -- steps -------------------------------------------------------------------------

    def _up(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        root = self.root.resolve()
        ray = _ray_executable(self.ray)
        with _host_lock():
            found = {k: v for k, v in leftovers(self.name).items() if v}
            if found:
                raise ClusterError(
                    f"cluster {self.name!r} already exists on this host ({found}); stop it "
                    f"first: python -m lsio_ray.deploy.local_cluster down --name {self.name}"
                )
            net = _pick_subnet(self.subnet, self.nodes_wanted)
            port = _pick_port(self.port)
            bridge_ip = str(net.network_address + 1)
            self._state = ClusterState(
                name=self.name,
                root=str(root),
                subnet=str(net),
                bridge=_bridge_name(self.name),
                bridge_ip=bridge_ip,
                port=port,
                address=f"{bridge_ip}:{port}",
                cpus_per_node=self.cpus_per_node,
                object_store_memory=self.object_store_memory,
                status="starting",
                created=time.time(),
                ray=ray,
                nodes=[self._node(root, net, k) for k in range(self.nodes_wanted)],
            )
            self._state.save()
            self._state.cgroup = self._create_cgroups()
            self._state.save()
            self._create_network()
        _forward_warning(self.state.bridge)
        for node in self.nodes:
            Path(node.data_dir).mkdir(parents=True, exist_ok=True)
            Path(node.temp_dir).mkdir(parents=True, exist_ok=True)
        head, workers = self.nodes[0], self.nodes[1:]
        deadline = time.monotonic() + self.timeout
        self._start(head)
        while not _port_open(head.ip, self.state.port):
            self._check_running(head, deadline, "to open the GCS port")
            time.sleep(0.2)
        client = _gcs_client(self.address)
        self._wait_joined(client, [head], deadline)
        deadline = time.monotonic() + self.timeout
        for node in workers:
            self._start(node)
        self._wait_joined(client, workers, deadline)
        self.state.status = "up"
        self.state.save()

    def _node(self, root: Path, net: ipaddress.IPv4Network, k: int) -> NodeState:
        head = k == 0
        host = 1 if head else WORKER_HOST_OFFSET + k
        node_dir = root / f"node-{k}"
        return NodeState(
            index=k,
            name=f"node-{k}",
            ip=str(net.network_address + host),
            head=head,
            netns=None if head else _netns_name(self.name, k),
            veth=None if head else _veth_name(self.name, k),
            data_dir=str(node_dir / "data"),
            temp_dir=str(_temp_dir(root, self.name, k)),
            log_file=str(node_dir / "ray-start.log"),
            resource=f"lsio_node_{k}",
            label=f"node-{k}",
        )

    def _create_cgroups(self) -> str | None:
        """One cgroup v2 per node, so teardown finds (and kills) every process exactly.

        Returns the cluster's cgroup, or None where cgroups are read-only (containers);
        teardown then relies on namespaces, markers and the process tree.
        """
        base = _cgroup_base(self.name)
        if base is None:
            return None
        try:
            base.mkdir(exist_ok=True)
            for node in self.nodes:
                (base / node.name).mkdir(exist_ok=True)
        except OSError:
            with contextlib.suppress(OSError):
                for node in self.nodes:
                    (base / node.name).rmdir()
                base.rmdir()
            return None
        return str(base)

    def _create_network(self) -> None:
        st = self.state
        prefix = ipaddress.IPv4Network(st.subnet).prefixlen
        _run(["ip", "link", "add", st.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{st.bridge_ip}/{prefix}", "dev", st.bridge])
        _run(["ip", "link", "set", st.bridge, "up"])
        for node in st.nodes[1:]:
            assert node.netns is not None and node.veth is not None
            _run(["ip", "netns", "add", node.netns])
            _run(["ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0",
                  "netns", node.netns])  # fmt: skip
            _run(["ip", "link", "set", node.veth, "master", st.bridge, "up"])
            _run(["ip", "-n", node.netns, "addr", "add", f"{node.ip}/{prefix}", "dev", "eth0"])
            _run(["ip", "-n", node.netns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", node.netns, "link", "set", "lo", "up"])

    def _command(self, node: NodeState) -> list[str]:
        st = self.state
        cmd = [
            st.ray, "start", "--block",
            f"--node-ip-address={node.ip}",
            f"--node-name={self.name}-{node.name}",
            f"--num-cpus={st.cpus_per_node}",
            "--num-gpus=0",
            f"--object-store-memory={st.object_store_memory}",
            f"--temp-dir={node.temp_dir}",
            f"--resources={json.dumps(node.resources)}",
            f"--labels={LABEL_KEY}={node.label}",
            "--disable-usage-stats",
        ]  # fmt: skip
        if node.head:
            # The head shares the root namespace with everything else on the host: take
            # free ports instead of Ray's fixed defaults (10001 client server, 52365 agent).
            client_port, agent_port = _free_ports(2)
            cmd += [
                "--head",
                f"--port={st.port}",
                "--include-dashboard=false",
                f"--dashboard-agent-listen-port={agent_port}",
            ]
            if importlib.util.find_spec("grpc") is not None:
                # Ray starts a client server only with ray[client] (grpc) installed, and
                # refuses the port option without it.
                cmd.append(f"--ray-client-server-port={client_port}")
            return cmd
        assert node.netns is not None
        return ["ip", "netns", "exec", node.netns, *cmd, f"--address={st.address}"]

    def _in_cgroup(self, node: NodeState, cmd: list[str]) -> list[str]:
        """Prefix ``cmd`` so that it enters the node's cgroup before it execs."""
        if self.state.cgroup is None:
            return cmd
        script = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return ["/bin/sh", "-c", script, str(Path(self.state.cgroup) / node.name), *cmd]

    def _env(self, node: NodeState) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(self.env)
        env.update(
            {
                MARKER_ENV: self.name,
                NODE_NAME_ENV: node.name,
                DATA_DIR_ENV: node.data_dir,
                NODE_IP_ENV: node.ip,
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        )
        # `ray start --head` turns token authentication on by itself when
        # ~/.ray/auth_token exists, but joining nodes and drivers given an explicit
        # address do not, and then cannot connect. Decide once for every process: the
        # caller's RAY_AUTH_MODE (which this process's own GCS client follows too), else off.
        env["RAY_AUTH_MODE"] = env.get("RAY_AUTH_MODE") or "disabled"
        return env

    def _start(self, node: NodeState) -> None:
        with open(node.log_file, "ab") as log:
            proc = subprocess.Popen(
                self._in_cgroup(node, self._command(node)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(node),
                start_new_session=True,  # survives the shell that ran `up`
                close_fds=True,
            )
        self._procs.append(proc)
        node.pid = proc.pid
        self.state.save()

    def _check_running(self, node: NodeState, deadline: float, what: str) -> None:
        proc = next((p for p in self._procs if p.pid == node.pid), None)
        if proc is not None and proc.poll() is not None:
            raise ClusterError(
                f"{node.name}: `ray start` exited with status {proc.returncode}; "
                f"last lines of {node.log_file}:\n{_tail(node.log_file)}"
            )
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{node.name}: timed out after {self.timeout:.0f} s waiting {what}; "
                f"last lines of {node.log_file}:\n{_tail(node.log_file)}"
            )

    def _wait_joined(self, client: Any, nodes: list[NodeState], deadline: float) -> None:
        pending = list(nodes)
        while pending:
            alive = _alive_nodes(client)
            for node in list(pending):
                if node.ip in alive:
                    node.node_id = alive[node.ip]
                    pending.remove(node)
            if not pending:
                break
            for node in pending:
                self._check_running(node, deadline, "for the node to join the cluster")
            time.sleep(0.3)
        self.state.save()


# ---------------------------------------------------------------------------------------
# command line


def _table(state: ClusterState | dict[str, Any]) -> str:
    data = state.to_dict() if isinstance(state, ClusterState) else state
    rows = [("node", "ip", "netns", "resource", "data dir", "node id")]
    for n in data["nodes"]:
        where = n["netns"] or "(root, head)"
        rows.append(
            (n["name"], n["ip"], where, n["resource"], n["data_dir"], (n["node_id"] or "-")[:12])
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    )


def _cmd_up(args: argparse.Namespace) -> int:
    cluster = LocalCluster(
        nodes=args.nodes,
        root=args.root,
        name=args.name,
        cpus_per_node=args.cpus_per_node,
        object_store_memory=args.object_store_memory,
        subnet=args.subnet,
        port=args.port,
        ray=args.ray,
        timeout=args.timeout,
    )
    state = cluster.up()
    if args.json:
        print(json.dumps(state.to_dict(), indent=2))
        return 0
    print(f"local Ray cluster {state.name!r} is up: {len(state.nodes)} nodes in {state.subnet}")
    print(f'  connect:  ray.init(address="{state.address}")   or   RAY_ADDRESS={state.address}')
    print(f"  state:    {state.state_file}")
    print(_table(state))
    print(f"  stop:     python -m lsio_ray.deploy.local_cluster down --name {state.name}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    info = status(args.name, args.root)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    left = {k: v for k, v in info["leftovers"].items() if v}
    print(f"cluster {info['name']!r}: {info['status']}")
    if "nodes" in info:
        print(f"  address:  {info['address']}   state: {info['root']}/{STATE_FILE}")
        print(_table(info))
        for n in info["nodes"]:
            gcs = "alive" if n["alive_in_gcs"] else "not in GCS"
            print(f"  {n['name']}: {n['processes']} processes, {gcs}")
    print(f"  on host:  {left or 'nothing'}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    down(args.name, args.root, keep_logs=args.keep_logs)
    print(f"cluster {args.name if args.root is None else args.root!s}: down, nothing left")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``local-cluster`` argument parser (``up``, ``status``, ``down``)."""
    parser = argparse.ArgumentParser(
        prog="local-cluster",
        description="A real multi-node Ray cluster on this machine, one network namespace "
        "per node (needs root).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default=DEFAULT_NAME, help="cluster name (default: lsio)")
        p.add_argument("--json", action="store_true", help="print JSON")

    up = sub.add_parser("up", help="start a cluster and print the address to connect to")
    common(up)
    up.add_argument("--nodes", type=int, default=3, help="Ray nodes, head included (3)")
    up.add_argument("--root", required=True, help="directory for state, data dirs and logs")
    up.add_argument("--cpus-per-node", type=int, default=1, help="--num-cpus per node (1)")
    up.add_argument(
        "--object-store-memory",
        type=argtypes.size,
        default=1 << 30,
        help="per node, e.g. 512M (1G)",
    )
    up.add_argument("--subnet", help="private IPv4 subnet (default: a free /24 of 10.213/16)")
    up.add_argument("--port", type=int, help="head GCS port (default 6379, or any free port)")
    up.add_argument("--ray", help="the ray command (default: beside this python)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds per start phase")
    up.set_defaults(func=_cmd_up)

    st = sub.add_parser("status", help="what the state file says and what actually runs")
    common(st)
    st.add_argument("--root", help="cluster directory (instead of --name)")
    st.set_defaults(func=_cmd_status)

    dn = sub.add_parser("down", help="stop everything, delete namespaces/veths/bridge")
    common(dn)
    dn.add_argument("--root", help="cluster directory (instead of --name)")
    dn.add_argument("--keep-logs", action="store_true", help="keep the Ray temp dirs")
    dn.set_defaults(func=_cmd_down)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m lsio_ray.deploy.local_cluster {up,status,down}``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ClusterError as exc:
        print(f"local-cluster: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `status | head`: stop writing, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0

