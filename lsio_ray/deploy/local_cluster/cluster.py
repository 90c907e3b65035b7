"""The cluster itself: :class:`LocalCluster` creates the network and the cgroups, starts
the head in the root namespace and one Ray node per worker namespace, waits until all have
joined the GCS, and tears everything down again.

Why the head lives in the root namespace, on the bridge address: a driver connects to the
raylet of "its" node and advertises that node's IP as its own gRPC address. With the head
inside a namespace, a driver in the root namespace advertised the head's IP, which from the
other namespaces is not the driver; a task on node-1 taking a ``ray.put`` object from the
driver then hung until ``ray.get(timeout=60)`` raised ``GetTimeoutError`` (measured, Ray
2.60). With the head on the bridge address, drivers in the root namespace just work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from lsio_ray.deploy.local_cluster.cgroups import create_cgroups, in_cgroup
from lsio_ray.deploy.local_cluster.gcs import alive_nodes, disconnect_driver, gcs_client
from lsio_ray.deploy.local_cluster.netns import (
    WORKER_HOST_OFFSET,
    bridge_name,
    create_network,
    forward_warning,
    link_bytes,
    netns_name,
    pick_subnet,
    veth_name,
)
from lsio_ray.deploy.local_cluster.ports import free_ports, pick_port, port_open
from lsio_ray.deploy.local_cluster.state import (
    DATA_DIR_ENV,
    DEFAULT_NAME,
    LABEL_KEY,
    MARKER_ENV,
    NODE_IP_ENV,
    NODE_NAME_ENV,
    ClusterError,
    ClusterState,
    NodeState,
    check_name,
    host_lock,
    node_temp_dir,
)
from lsio_ray.deploy.local_cluster.teardown import down, leftovers


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


def _tail(path: str | os.PathLike[str], lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


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
        check_name(name)
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

    def link_bytes(self) -> dict[str, int]:
        """``{node name: bytes}`` received plus sent so far over each worker node's veth
        (the head, in the root namespace, has none): the bytes that crossed between
        nodes, each counted once per worker node it passed (a byte between two worker
        nodes is counted at both).  The difference of two calls is what crossed between
        them."""
        return {n.name: link_bytes(n.veth) for n in self.nodes if n.veth}

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
            disconnect_driver(self._state.address)
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
        with host_lock():
            found = {k: v for k, v in leftovers(self.name).items() if v}
            if found:
                raise ClusterError(
                    f"cluster {self.name!r} already exists on this host ({found}); stop it "
                    f"first: python -m lsio_ray.deploy.local_cluster down --name {self.name}"
                )
            net = pick_subnet(self.subnet, self.nodes_wanted)
            port = pick_port(self.port)
            bridge_ip = str(net.network_address + 1)
            self._state = ClusterState(
                name=self.name,
                root=str(root),
                subnet=str(net),
                bridge=bridge_name(self.name),
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
            self._state.cgroup = create_cgroups(self.name, [n.name for n in self.nodes])
            self._state.save()
            create_network(self._state)
        forward_warning(self.state.bridge)
        for node in self.nodes:
            Path(node.data_dir).mkdir(parents=True, exist_ok=True)
            Path(node.temp_dir).mkdir(parents=True, exist_ok=True)
        head, workers = self.nodes[0], self.nodes[1:]
        deadline = time.monotonic() + self.timeout
        self._start(head)
        while not port_open(head.ip, self.state.port):
            self._check_running(head, deadline, "to open the GCS port")
            time.sleep(0.2)
        client = gcs_client(self.address)
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
            netns=None if head else netns_name(self.name, k),
            veth=None if head else veth_name(self.name, k),
            data_dir=str(node_dir / "data"),
            temp_dir=str(node_temp_dir(root, self.name, k)),
            log_file=str(node_dir / "ray-start.log"),
            resource=f"lsio_node_{k}",
            label=f"node-{k}",
        )

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
            client_port, agent_port = free_ports(2)
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
        # the nodes share this machine's /dev/shm: give each its own pool ledger, as each
        # real node has (lsio_ray.io.budget)
        env.setdefault("LSIO_NODE_BUDGET_DIR", os.path.join(node.data_dir, ".lsio-pools"))
        # `ray start --head` turns token authentication on by itself when
        # ~/.ray/auth_token exists, but joining nodes and drivers given an explicit
        # address do not, and then cannot connect. Decide once for every process: the
        # caller's RAY_AUTH_MODE (which this process's own GCS client follows too), else off.
        env["RAY_AUTH_MODE"] = env.get("RAY_AUTH_MODE") or "disabled"
        return env

    def _start(self, node: NodeState) -> None:
        with open(node.log_file, "ab") as log:
            proc = subprocess.Popen(
                in_cgroup(self.state.cgroup, node.name, self._command(node)),
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
            alive = alive_nodes(client)
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
