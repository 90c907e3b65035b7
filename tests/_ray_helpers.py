"""Helpers for the Ray tests: a multi-node cluster on this machine, node-local dirs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LocalCluster:
    """A ``ray.cluster_utils.Cluster`` with one "local disk" directory per node."""

    cluster: Any
    nodes: list[str]  # node ids, head first
    handles: list[Any]  # ray node handles, head first
    disks: dict[str, Path]  # node id -> its local directory
    shared: Path  # a directory every node sees (shared storage)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def roots(self) -> dict[str, list[str]]:
        """The ``roots`` mapping for a Coordinator."""
        return {n: [str(d)] for n, d in self.disks.items()}


@contextlib.contextmanager
def local_cluster(tmp: Path, workers: int = 2) -> Iterator[LocalCluster]:
    """Head + ``workers`` raylets, one CPU and a custom resource each; always shut down."""
    import ray
    from ray.cluster_utils import Cluster

    args = {"num_cpus": 1, "object_store_memory": 200 << 20, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**args, "resources": {"node0": 1}})
    try:
        handles = [cluster.head_node]
        for k in range(workers):
            handles.append(cluster.add_node(**args, resources={f"node{k + 1}": 1}))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        nodes = [h.node_id for h in handles]
        disks = {}
        for k, n in enumerate(nodes):
            d = tmp / f"node{k}"
            d.mkdir(parents=True, exist_ok=True)
            disks[n] = d
        shared = tmp / "shared"
        shared.mkdir(exist_ok=True)
        yield LocalCluster(cluster, nodes, handles, disks, shared)
    finally:
        try:
            ray.shutdown()
        finally:
            cluster.shutdown()


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[str]:
    """One local Ray of ``num_cpus`` CPUs (no dashboard, Ray Data's progress bars off),
    always shut down; yields its node id."""
    import ray
    import ray.data

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()


def write_file(path: Path, seed: int, size: int) -> bytes:
    """Deterministic random bytes written to ``path``."""
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    os.makedirs(path.parent, exist_ok=True)
    path.write_bytes(data)
    return data
