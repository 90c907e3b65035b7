"""TCP ports for the head: the GCS port, free ports for its other servers, port probes.

The head shares the root namespace with everything else on the host, so its ports are
checked against the kernel's listening sockets and against the other local clusters'
state files before it takes them.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from lsio_ray.deploy.local_cluster.state import INDEX_DIR, ClusterError, load_state

DEFAULT_HEAD_PORT = 6379


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


def pick_port(port: int | None) -> int:
    """The head's GCS port: ``port`` if free, else 6379 if free, else any free port.

    Raises:
        ClusterError: ``port`` was given and is in use.
    """
    taken = _listening_ports() | _claimed_ports()
    if port is not None:
        if port in taken:
            raise ClusterError(f"port {port} is in use on this host; pick another one")
        return port
    if DEFAULT_HEAD_PORT not in taken:
        return DEFAULT_HEAD_PORT
    return next(p for p in free_ports(8) if p not in taken)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free right now (all sockets held open while choosing)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (1 s timeout)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0
