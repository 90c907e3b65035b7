"""Talking to the cluster's Ray GCS: which nodes are alive, and this process's driver.

GCS queries go through Ray's own client; the public state API needs the dashboard, which
the local cluster switches off. Ray is imported only when these are called (it is an
optional dependency of lsio_ray).
"""

from __future__ import annotations

import sys
from typing import Any

from lsio_ray.deploy.local_cluster.state import ClusterError


def gcs_client(address: str) -> Any:
    """A ``ray._raylet.GcsClient`` connected to the GCS at ``address``.

    Raises:
        ClusterError: Ray is not installed, or the GCS cannot be reached.
    """
    try:
        from ray._raylet import GcsClient
    except ImportError as exc:
        raise ClusterError(f"cannot import Ray's GcsClient ({exc}): is ray installed?") from None
    try:
        return GcsClient(address=address)
    except Exception as exc:  # ray.exceptions.RpcError, AuthenticationError, ...
        raise ClusterError(f"cannot reach the GCS at {address}: {exc}") from exc


def alive_nodes(client: Any) -> dict[str, str]:
    """``{node IP: node id}`` of the nodes the GCS reports alive."""
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    infos = client.get_all_node_info(timeout=5, state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
    return {info.node_manager_address: info.node_id.hex() for info in infos.values()}


def disconnect_driver(address: str) -> None:
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
