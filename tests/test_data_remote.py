"""Ray Data readers on URLs: ``read_zarr_crops`` / ``read_zarr_windows`` over Zarr arrays
on a real S3-compatible server (moto) and a real HTTP server (nginx), on a 3-node local
Ray cluster -- values equal to the numpy source, read tasks on every node (URLs have no
locality), the driver's ``storage_options`` shipped to the read tasks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")
zarr = pytest.importorskip("zarr")
ray = pytest.importorskip("ray")

from _ray_helpers import LocalCluster, local_cluster  # noqa: E402
from _servers import S3Server, nginx_server, s3_bucket  # noqa: E402

import lsio_ray.data as ld  # noqa: E402
from lsio_ray.io import stores  # noqa: E402
from lsio_ray.io.url import UnsupportedURLError  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

BUCKET = "lsio-data"
SHAPE = (12, 40, 48)


def _source() -> np.ndarray:
    return np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)


def _write(root: Path) -> dict[str, str]:
    """A plain v3 array and a sharded one of the same values; their local paths."""
    x = _source()
    out = {}
    plain = str(root / "plain.zarr")
    zarr.create_array(plain, shape=SHAPE, chunks=(3, 16, 16), dtype="f4")[...] = x
    out["plain"] = plain
    sharded = str(root / "sharded.zarr")
    zarr.create_array(sharded, shape=SHAPE, chunks=(2, 8, 8), shards=(4, 16, 16), dtype="f4")[
        ...
    ] = x
    out["sharded"] = sharded
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster"), workers=2) as lc:
        yield lc


@pytest.fixture(scope="module")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _write(tmp_path_factory.mktemp("arrays"))


@pytest.fixture(scope="module")
def s3(arrays: dict[str, str]) -> Iterator[S3Server]:
    with s3_bucket(BUCKET) as srv:
        for name, local in arrays.items():
            srv.upload_tree(local, BUCKET, f"{name}.zarr")
        yield srv


@pytest.fixture(scope="module")
def http(arrays: dict[str, str]) -> Iterator[str]:
    root = os.path.dirname(arrays["plain"])
    with nginx_server(root) as base:
        yield base


def _with_node(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with a ``node`` column: the node this task runs on (fused with the read
    task by Ray Data, so the node that read the rows)."""
    node = ray.get_runtime_context().get_node_id()
    return {**batch, "node": np.array([node] * len(batch["index"]), dtype=object)}


def _check_crops(rows: list[Any], want: np.ndarray, crop: tuple[int, ...], count: int) -> None:
    assert sorted(int(r["index"]) for r in rows) == list(range(count))
    for r in rows:
        lo = [int(v) for v in r["lo"]]
        box = want[tuple(slice(a, a + c) for a, c in zip(lo, crop, strict=True))]
        np.testing.assert_array_equal(np.asarray(r["crop"]), box)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["plain", "sharded"])
def test_crops_from_s3_equal_source_on_every_node(
    cluster: LocalCluster, s3: S3Server, name: str
) -> None:
    stores._options.clear()  # the options come with the call only
    stores._stores.clear()
    url = f"s3://{BUCKET}/{name}.zarr"
    crop, count = (4, 16, 16), 60
    ds = ld.read_zarr_crops(
        url, crop, count, seed=3, storage_options=s3.options(), override_num_blocks=6
    )
    rows = ds.map_batches(_with_node, batch_format="numpy").take_all()
    _check_crops(rows, _source(), crop, count)
    # with one path, the same crops as the array's own random_crops(seed)
    plan = ld.random_box_starts(SHAPE, crop, count, 3)
    got = {int(r["index"]): [int(v) for v in r["lo"]] for r in rows}
    assert [got[i] for i in range(count)] == plan.tolist()
    assert {r["node"] for r in rows} == set(cluster.nodes)  # spread: URLs have no locality


@pytest.mark.timeout(600)
def test_windows_from_http_cover_the_source(
    cluster: LocalCluster, http: str, arrays: dict[str, str]
) -> None:
    del cluster
    url = f"{http}/sharded.zarr"
    win = (4, 16, 16)  # 40 and 48 are no multiples of 16: padded edge windows
    ds = ld.read_zarr_windows(url, win, override_num_blocks=5, include_paths=True)
    want = _source()
    out = np.full((12, 48, 48), np.nan, np.float32)
    rows = ds.take_all()
    assert {r["path"] for r in rows} == {url}
    for r in rows:
        z, y, x = (int(v) for v in r["lo"])
        out[z : z + 4, y : y + 16, x : x + 16] = r["crop"]
    np.testing.assert_array_equal(out[:, :40, :48], want)
    assert np.all(out[:, 40:, :] == 0)  # the fill value past the end


@pytest.mark.timeout(600)
def test_urls_and_local_paths_in_one_dataset(
    cluster: LocalCluster, s3: S3Server, arrays: dict[str, str]
) -> None:
    del cluster
    paths = [f"s3://{BUCKET}/plain.zarr", arrays["plain"], f"s3://{BUCKET}/sharded.zarr"]
    ds = ld.read_zarr_crops(
        paths,
        (2, 8, 8),
        45,
        seed=9,
        storage_options=s3.options(),
        include_paths=True,
        override_num_blocks=4,
    )
    want = _source()
    rows = ds.take_all()
    assert len(rows) == 45
    assert {r["path"] for r in rows} <= set(paths)
    for r in rows:
        z, y, x = (int(v) for v in r["lo"])
        np.testing.assert_array_equal(r["crop"], want[z : z + 2, y : y + 8, x : x + 8])


def test_bad_urls_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedURLError, match=r"ftp://host/x\.zarr"):
        ld.read_zarr_crops("ftp://host/x.zarr", (1, 1), 1)
    local = str(tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="storage_options are for object-storage"):
        ld.read_zarr_windows(local, (1, 1), storage_options={"region": "x"})
    with pytest.raises(ValueError, match="filesystem=object"):
        ld.read_zarr_crops("s3://b/x.zarr", (1, 1), 1, filesystem=object())
