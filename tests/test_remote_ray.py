"""Object storage through the Ray layer: groups of S3 objects (a real moto server on
127.0.0.1) on a 3-node local Ray cluster -- spread over every node (objects have no
locality), delivered in order, equal; the store's options travel with the work."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")
ray = pytest.importorskip("ray")

from _ray_helpers import local_cluster  # noqa: E402
from _servers import S3Server, s3_bucket  # noqa: E402

from lsio_ray import OpGroup, get_ranges  # noqa: E402
from lsio_ray.io import remote  # noqa: E402
from lsio_ray.ray import Coordinator  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

BUCKET = "lsio-ray"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_bucket(BUCKET) as srv:
        yield srv


@pytest.mark.timeout(600)
def test_groups_of_objects_spread_over_nodes_in_order(s3: S3Server, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    objs = {
        f"obj/{i:03d}": rng.integers(0, 256, 50_000 + 999 * i, np.uint8).tobytes()
        for i in range(36)
    }
    cl = s3.client()
    for k, v in objs.items():
        cl.put_object(Bucket=BUCKET, Key=k, Body=v)
    # the options are set in the driver only: the IO actors get them with the pieces
    remote.configure(f"s3://{BUCKET}", **s3.options())
    keys = sorted(objs)
    groups = [
        OpGroup(
            [get_ranges(f"s3://{BUCKET}/{k}", [(0, None), (7, 1007)]) for k in keys[g::6]],
            metadata=g,
        )
        for g in range(6)
    ]
    with local_cluster(tmp_path, workers=2) as lc:
        coord = Coordinator(batch_bytes=200_000)
        seen, nodes = [], set()
        for stream in coord.stream(groups, window=3):
            seen.append(stream.metadata)
            nodes.update(stream.nodes)
            got = [v.tobytes() for _, v in stream.chunks()]
            want = []
            for k in keys[stream.metadata :: 6]:
                want += [objs[k], objs[k][7:1007]]
            assert got == want
        assert seen == list(range(6))
        assert nodes == set(lc.nodes)  # no locality: the groups went to every node
