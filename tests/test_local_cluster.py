"""A real 2-node Ray cluster on this machine, one network namespace per worker node.

Brings the cluster up with :class:`lsio_ray.deploy.local_cluster.LocalCluster`, connects a
driver from the root namespace, pins a task to each node by its custom resource and checks
that each ran on its own node: its own IP (the source address the kernel picks in its
namespace), its own network namespace, its own data dir, all as the state file says. Then
tears down (by name alone, as after a crash, and again through the context manager) and
checks that no namespace, veth, bridge, cgroup or Ray process of the cluster is left.

Needs root and iproute2 (network namespaces); CI runs as root. About 15-30 s.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsio_ray.deploy import local_cluster
from lsio_ray.deploy.local_cluster import LocalCluster

ray = pytest.importorskip("ray", reason="the local cluster runs Ray (pip install 'lsio_ray[ray]')")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 (CI runs as root)",
)


def _processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line contains ``text`` (Ray daemons name their dirs)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


@pytest.mark.timeout(240)
def test_two_node_cluster_in_namespaces(tmp_path: Path) -> None:
    name = f"t{os.getpid() % 10_000_000}"
    root = tmp_path / "cluster"
    cluster = LocalCluster(
        nodes=2, root=root, name=name, cpus_per_node=1, object_store_memory=256 << 20
    )

    def _probe(bridge_ip: str, blob: np.ndarray) -> dict[str, Any]:
        """Runs on a cluster node: where am I, and is my data dir mine?

        Nested, so that Ray pickles it by value (workers cannot import this test file).
        """
        import socket

        from lsio_ray.deploy.local_cluster import local_node

        node = local_node()
        assert node is not None, "LSIO_* node variables missing in the Ray worker"
        data = Path(node["data_dir"])
        mark = data / f"written-by-{node['name']}"
        mark.write_text(node["name"])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((bridge_ip, 9))  # UDP connect sends nothing; it picks the source address
            source_ip = s.getsockname()[0]
        return {
            "name": node["name"],
            "data_dir": str(data),
            "data_ok": data.is_dir() and mark.read_text() == node["name"],
            "ray_ip": ray.util.get_node_ip_address(),
            "source_ip": source_ip,
            "netns": os.readlink("/proc/self/ns/net"),
            "node_id": ray.get_runtime_context().get_node_id(),
            "blob_sum": int(blob.sum()),
        }

    probe = ray.remote(num_cpus=0)(_probe)
    blob = np.arange(1 << 20, dtype=np.int64)  # 8 MiB: goes through the object store
    temp_dirs: list[str] = []
    try:
        with cluster:
            state = json.loads(cluster.state_file.read_text())
            nodes = state["nodes"]
            temp_dirs = [n["temp_dir"] for n in nodes]
            assert state["status"] == "up"
            assert [n["name"] for n in nodes] == ["node-0", "node-1"]
            assert all(n["node_id"] for n in nodes)
            assert cluster.roots == {n["node_id"]: [n["data_dir"]] for n in nodes}
            assert local_cluster.leftovers(name)["netns"] == [f"{name}-node1"]
            assert set(local_cluster.leftovers(name)["links"]) == {f"{name}-br", f"{name}-v1"}
            st = local_cluster.status(name)
            assert [n["alive_in_gcs"] for n in st["nodes"]] == [True, True]
            assert all(n["processes"] > 0 for n in st["nodes"])

            if ray.is_initialized():
                ray.shutdown()
            ray.init(address=cluster.address, log_to_driver=False)
            try:
                big = ray.put(blob)  # owned by the driver: workers must reach it
                refs = [
                    probe.options(resources={n["resource"]: 0.01}).remote(state["bridge_ip"], big)
                    for n in nodes
                ]
                results = ray.get(refs, timeout=90)
            finally:
                ray.shutdown()

            for res, node in zip(results, nodes, strict=True):
                assert res["name"] == node["name"]
                assert res["ray_ip"] == res["source_ip"] == node["ip"]
                assert res["data_dir"] == node["data_dir"]
                assert res["data_ok"]
                assert res["node_id"] == node["node_id"]
                assert res["blob_sum"] == int(blob.sum())
                assert Path(node["data_dir"], f"written-by-{node['name']}").is_file()
            assert len({r["source_ip"] for r in results}) == 2
            assert len({r["netns"] for r in results}) == 2
            assert len({r["node_id"] for r in results}) == 2
            assert results[0]["netns"] == os.readlink("/proc/self/ns/net")  # head: root ns

            # As after a crash of whatever started it: tear down knowing only the name.
            local_cluster.down(name)
            assert not any(local_cluster.leftovers(name).values())
    finally:
        cluster.down()  # idempotent; the cleanup when anything above failed
    left = local_cluster.leftovers(name)
    assert not any(left.values()), left
    assert not _processes_mentioning(str(root))
    assert not [p for d in temp_dirs for p in _processes_mentioning(d)]
    assert temp_dirs and not any(Path(d).exists() for d in temp_dirs)
    assert not Path(local_cluster.INDEX_DIR, f"{name}.json").exists()
    assert json.loads((root / "cluster.json").read_text())["status"] == "down"
    assert Path(root, "node-1", "data", "written-by-node-1").is_file()  # data dirs are kept
