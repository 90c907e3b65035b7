"""A node holding a re-chunk's node-local input dies mid-job: its files went with it, so
the job fails with a clear error naming the file and the node (it does not hang, and
it does not retry forever).  A cluster of its own: the node removal shrinks it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

ray = pytest.importorskip("ray")
zarr = pytest.importorskip("zarr")

from _ray_helpers import LocalCluster, local_cluster  # noqa: E402

from lsio_ray.ray import Coordinator  # noqa: E402
from lsio_ray.ray.rechunk import RechunkError, rechunk  # noqa: E402


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("ray-node-lost"), workers=2) as c:
        yield c


def test_node_local_input_lost_with_its_node(lc: LocalCluster) -> None:
    victim, handle = lc.nodes[2], lc.handles[2]
    data = np.random.default_rng(2).integers(0, 1000, (48, 64, 16), dtype=np.int32)
    src = lc.disks[victim] / "src.zarr"
    z = zarr.create_array(str(src), shape=data.shape, dtype=data.dtype, chunks=(4, 16, 16))
    z[...] = data
    coord = Coordinator(roots=lc.roots)
    done: list[int] = []

    def remove_once(n: int, total: int) -> None:
        done.append(n)
        if len(done) == 2:
            lc.cluster.remove_node(handle)

    with pytest.raises(RechunkError) as ei:
        rechunk(
            src,
            lc.shared / "out.zarr",
            chunks=(12, 8, 8),
            codec="zstd:1",
            coordinator=coord,
            progress=remove_once,
            block_bytes=30_000,
        )
    msg = str(ei.value)
    assert victim in msg and str(src) in msg and "gone" in msg
    assert len(done) >= 2
