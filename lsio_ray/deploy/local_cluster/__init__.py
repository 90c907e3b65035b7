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

Needs root (``ip netns``, veths, a bridge) and iproute2. Command line::

    python -m lsio_ray.deploy.local_cluster up --nodes 3 --root /tmp/lsio-demo
    python -m lsio_ray.deploy.local_cluster status
    python -m lsio_ray.deploy.local_cluster down

Python::

    with LocalCluster(nodes=3, root=tmp) as cluster:
        ray.init(address=cluster.address)
        ...

Modules, each importing only those below it:

* :mod:`~lsio_ray.deploy.local_cluster.cli`: the command line (``__main__`` runs it);
* :mod:`~lsio_ray.deploy.local_cluster.cluster`: :class:`LocalCluster`, which starts the
  nodes (and why the head stays in the root namespace);
* :mod:`~lsio_ray.deploy.local_cluster.teardown`: :func:`down`, :func:`status` and
  :func:`leftovers`, by the cluster's name alone;
* :mod:`~lsio_ray.deploy.local_cluster.processes`: finding and killing the cluster's
  processes;
* :mod:`~lsio_ray.deploy.local_cluster.gcs`: queries to Ray's GCS, driver disconnect;
* :mod:`~lsio_ray.deploy.local_cluster.netns`: subnet, bridge, veths, namespaces;
* :mod:`~lsio_ray.deploy.local_cluster.cgroups`: one cgroup v2 per node;
* :mod:`~lsio_ray.deploy.local_cluster.ports`: the head's ports;
* :mod:`~lsio_ray.deploy.local_cluster.state`: names, paths, environment variables and
  the state file.
"""

from __future__ import annotations

from lsio_ray.deploy.local_cluster.cli import build_parser, main
from lsio_ray.deploy.local_cluster.cluster import LocalCluster
from lsio_ray.deploy.local_cluster.netns import DEFAULT_POOL as DEFAULT_POOL
from lsio_ray.deploy.local_cluster.netns import WORKER_HOST_OFFSET as WORKER_HOST_OFFSET
from lsio_ray.deploy.local_cluster.ports import DEFAULT_HEAD_PORT as DEFAULT_HEAD_PORT
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
    load_state,
    local_node,
)
from lsio_ray.deploy.local_cluster.state import INDEX_DIR as INDEX_DIR
from lsio_ray.deploy.local_cluster.state import STATE_FILE as STATE_FILE
from lsio_ray.deploy.local_cluster.teardown import down, leftovers, status

# The same names as when this package was one module. INDEX_DIR, STATE_FILE, DEFAULT_POOL,
# WORKER_HOST_OFFSET and DEFAULT_HEAD_PORT stay importable from here (tests read
# INDEX_DIR) without joining __all__, as before.
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
