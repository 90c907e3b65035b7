"""Failures during a cluster-wide job: an IO actor killed (the actors' streams), then a
worker node removed (blocks whose tasks read their own inputs), then the node holding a
node-local input removed (the job fails, naming the file and the node).

Each job must finish with the same output as an undisturbed run (the coordinator resumes
streams, the job re-runs blocks whose inputs were lost).  One 3-node cluster for the
module; the node removal comes last since it shrinks the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
zarr = pytest.importorskip("zarr")

from _ray_helpers import LocalCluster, local_cluster  # noqa: E402

from lsio_ray.ray import Coordinator, io_actor  # noqa: E402
from lsio_ray.ray.rechunk import RechunkError, rechunk  # noqa: E402


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("ray-failures"), workers=2) as c:
        data = np.random.default_rng(1).integers(0, 1000, (48, 64, 16), dtype=np.int32)
        src = c.shared / "src.zarr"
        z = zarr.create_array(
            str(src), shape=data.shape, dtype=data.dtype, chunks=(4, 16, 16), zarr_format=3
        )
        z[...] = data
        c.extra.update(data=data, src=src)
        yield c


KW = dict(chunks=(12, 8, 8), shards=(12, 16, 16), codec="zstd:1", block_bytes=30_000)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(lc: LocalCluster) -> dict[str, bytes]:
    res = rechunk(
        lc.extra["src"], lc.shared / "ref.zarr", coordinator=Coordinator(batch_bytes=32 << 10), **KW
    )
    assert res.blocks >= 12
    return _files(lc.shared / "ref.zarr")


def test_io_actor_killed_mid_job(lc: LocalCluster, reference: dict[str, bytes]) -> None:
    coord = Coordinator(batch_bytes=16 << 10, backpressure=2)
    victim = lc.nodes[1]
    pid = ray.get(io_actor(victim).stats.remote())["pid"]
    done = []

    def kill_once(n: int, total: int) -> None:
        done.append(n)
        if len(done) == 3:
            ray.kill(io_actor(victim), no_restart=False)

    res = rechunk(
        lc.extra["src"],
        lc.shared / "killed.zarr",
        coordinator=coord,
        progress=kill_once,
        io="actors",  # every block through the actors' streams (auto: the tasks read)
        **KW,
    )
    assert res.blocks_skipped == 0 and len(done) == res.blocks
    assert _files(lc.shared / "killed.zarr") == reference
    assert ray.get(io_actor(victim).stats.remote())["pid"] != pid  # restarted by Ray


def test_worker_node_removed_mid_job(lc: LocalCluster, reference: dict[str, bytes]) -> None:
    coord = Coordinator(batch_bytes=16 << 10, backpressure=2)
    victim = lc.handles[2]
    done = []

    def remove_once(n: int, total: int) -> None:
        done.append(n)
        if len(done) == 4:
            lc.cluster.remove_node(victim)

    res = rechunk(
        lc.extra["src"], lc.shared / "removed.zarr", coordinator=coord, progress=remove_once, **KW
    )
    assert len(done) == res.blocks == res.blocks_in_task
    assert victim.node_id not in coord.nodes
    assert _files(lc.shared / "removed.zarr") == reference
    np.testing.assert_array_equal(
        zarr.open_array(str(lc.shared / "removed.zarr"))[...], lc.extra["data"]
    )


def test_node_local_input_lost_with_its_node(lc: LocalCluster) -> None:
    """The node holding a node-local input dies mid-job: its files went with it, so the
    job fails with an error naming the file and the node (no hang, no endless retry)."""
    victim, handle = lc.nodes[1], lc.handles[1]
    data = np.random.default_rng(2).integers(0, 1000, (48, 64, 16), dtype=np.int32)
    src = lc.disks[victim] / "src.zarr"
    z = zarr.create_array(str(src), shape=data.shape, dtype=data.dtype, chunks=(4, 16, 16))
    z[...] = data
    coord = Coordinator(roots={victim: [str(lc.disks[victim])]})
    done: list[int] = []

    def remove_once(n: int, total: int) -> None:
        done.append(n)
        if len(done) == 2:
            lc.cluster.remove_node(handle)

    with pytest.raises(RechunkError) as ei:
        rechunk(
            src,
            lc.shared / "lost.zarr",
            chunks=(12, 8, 8),
            codec="zstd:1",
            coordinator=coord,
            progress=remove_once,
            block_bytes=30_000,
        )
    msg = str(ei.value)
    assert victim in msg and str(src) in msg and "gone" in msg
    assert len(done) >= 2
