"""Zarr arrays written to object storage: ``lz.create``, ``lz.save`` and ``a[...] = x`` on
an ``s3://`` URL of a real S3-compatible server (moto, a process on 127.0.0.1), read back
by zarr-python over obstore equal to what was written; empty chunks; overwrite refusing a
destination that holds the source; and ``lsio_ray.rechunk`` local -> S3, S3 -> local and
S3 -> S3 on a 3-node Ray cluster, equal to the source and resumable byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")
zarr = pytest.importorskip("zarr")

from _servers import KEY, S3Server, s3_bucket  # noqa: E402

import lsio_ray.zarr as lz  # noqa: E402
from lsio_ray.io import objects, remote  # noqa: E402
from lsio_ray.paths import check_disjoint  # noqa: E402

BUCKET = "lsio-write"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_bucket(BUCKET, configure=True) as srv:
        yield srv


def zarr_python(s3: S3Server, prefix: str) -> Any:
    """zarr-python's own read of the array at ``s3://BUCKET/prefix`` (its ObjectStore over
    an obstore S3Store on the moto endpoint)."""
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=s3.endpoint,
        access_key_id=KEY["access_key_id"],
        secret_access_key=KEY["secret_access_key"],
        region=KEY["region"],
        client_options={"allow_http": True},
    )
    return zarr.open_array(zarr.storage.ObjectStore(store, read_only=True), path=prefix, mode="r")


def keys(prefix: str) -> list[str]:
    return [k for k, _ in objects.list_prefix(f"s3://{BUCKET}/{prefix}")]


def _data(shape: tuple[int, ...], dtype: str = "f4", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = (rng.normal(0, 1, shape) * 50).astype(dtype)
    a[tuple(slice(0, s // 3) for s in shape)] = 0  # some chunks all fill value
    return a


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "kw",
    [
        {"zarr_format": 3},
        {"zarr_format": 3, "shards": (8, 12), "compressors": None},
        {"zarr_format": 2},
    ],
    ids=["v3", "v3-sharded-raw", "v2"],
)
def test_save_then_zarr_python_reads_it_equal(s3: S3Server, kw: dict[str, Any]) -> None:
    data = _data((13, 22))
    prefix = f"save-{kw.get('zarr_format')}-{'shards' in kw}.zarr"
    arr = lz.save(f"s3://{BUCKET}/{prefix}", data, chunks=(4, 6), **kw)
    np.testing.assert_array_equal(zarr_python(s3, prefix)[...], data)
    np.testing.assert_array_equal(arr[...], data)
    np.testing.assert_array_equal(lz.open(f"s3://{BUCKET}/{prefix}")[...], data)
    # the all-zero corner chunk is not stored (write_empty_chunks=False, as zarr-python)
    first = "c/0/0" if kw["zarr_format"] == 3 else "0.0"
    assert ("shards" in kw) == (first in keys(prefix))
    assert not any(".lsio-tmp." in k for k in keys(prefix))


@pytest.mark.timeout(120)
def test_create_then_write_regions_like_zarr_python(s3: S3Server) -> None:
    """Partial writes read-modify-write whole chunks and shards; a region written back
    to the fill value deletes its objects."""
    for name, shards in (("create.zarr", None), ("create-sharded.zarr", (8, 8))):
        u = f"s3://{BUCKET}/{name}"
        arr = lz.create(u, shape=(16, 16), dtype="i4", chunks=(4, 4), shards=shards, fill_value=-1)
        want = np.full((16, 16), -1, "i4")
        assert keys(name) == ["zarr.json"]
        arr[1:7, 3:14] = 5
        want[1:7, 3:14] = 5
        reopened = lz.open(u)
        reopened[5:9, 0:2] = np.arange(8, dtype="i4").reshape(4, 2)
        want[5:9, 0:2] = np.arange(8).reshape(4, 2)
        np.testing.assert_array_equal(zarr_python(s3, name)[...], want)
        np.testing.assert_array_equal(lz.open(u)[...], want)
        stored = set(keys(name))
        arr[...] = -1  # every unit back to the fill value: every chunk object is gone
        assert set(keys(name)) == {"zarr.json"}, stored
        np.testing.assert_array_equal(zarr_python(s3, name)[...], np.full((16, 16), -1, "i4"))


@pytest.mark.timeout(120)
def test_write_empty_chunks_stores_fill_valued_chunks(s3: S3Server) -> None:
    u = f"s3://{BUCKET}/empty-too.zarr"
    arr = lz.create(u, shape=(8, 8), dtype="u1", chunks=(4, 4), write_empty_chunks=True)
    arr[...] = 0
    assert keys("empty-too.zarr") == ["c/0/0", "c/0/1", "c/1/0", "c/1/1", "zarr.json"]
    lz.save(u, np.zeros((8, 8), "u1"), chunks=(4, 4), overwrite=True)
    assert keys("empty-too.zarr") == ["zarr.json"]
    np.testing.assert_array_equal(zarr_python(s3, "empty-too.zarr")[...], np.zeros((8, 8), "u1"))


@pytest.mark.timeout(120)
def test_overwrite_and_disjoint_sources(s3: S3Server, tmp_path: Path) -> None:
    u = f"s3://{BUCKET}/ow/a.zarr"
    src = lz.save(u, _data((6, 6)), chunks=(3, 3))
    with pytest.raises(FileExistsError, match=r"ow/a\.zarr"):
        lz.save(u, np.ones((6, 6), "f4"), chunks=(3, 3))
    # saving an array over itself, into itself, or over a prefix holding it is refused
    # before anything is deleted
    for dst in (u, f"{u}/inner", f"s3://{BUCKET}/ow", f"s3a://{BUCKET.upper()}/ow/"):
        with pytest.raises(ValueError, match="source"):
            lz.save(dst, src, chunks=(2, 2), overwrite=True)
    np.testing.assert_array_equal(zarr_python(s3, "ow/a.zarr")[...], _data((6, 6)))
    # a sibling whose name starts the same is not inside, another bucket or local never
    check_disjoint(u, f"s3://{BUCKET}/ow/a.zarr2")
    check_disjoint(u, "s3://other/ow/a.zarr")
    check_disjoint(u, str(tmp_path / "ow" / "a.zarr"))
    check_disjoint(str(tmp_path), u)
    with pytest.raises(ValueError, match="contains the source"):
        check_disjoint(u, f"s3://{BUCKET}")
    # overwrite of a bigger array leaves none of its objects behind
    big = lz.save(f"s3://{BUCKET}/ow/b.zarr", _data((12, 12), seed=2), chunks=(3, 3))
    assert len(keys("ow/b.zarr")) > 4
    lz.save(big.path, np.ones((2, 2), "f4"), chunks=(2, 2), overwrite=True)
    assert keys("ow/b.zarr") == ["c/0/0", "zarr.json"]
    # saving from S3 to a local directory and back
    local = lz.save(str(tmp_path / "copy.zarr"), src, chunks=(2, 3))
    np.testing.assert_array_equal(zarr.open_array(local.path, mode="r")[...], _data((6, 6)))


@pytest.mark.timeout(120)
def test_write_errors_name_the_url(s3: S3Server) -> None:
    remote.configure("s3://no-such-bucket", **s3.options())
    with pytest.raises(FileNotFoundError, match=r"no-such-bucket/x\.zarr: cannot write c/\d/\d"):
        lz.save("s3://no-such-bucket/x.zarr", np.ones((4, 4)), chunks=(2, 2))
    with pytest.raises(FileNotFoundError, match=r"s3://no-such-bucket/y\.zarr/zarr\.json"):
        lz.create("s3://no-such-bucket/y.zarr", shape=(4,), chunks=(2,), dtype="f4")


# -- rechunk between local directories and object storage ----------------------------------

ray = pytest.importorskip("ray")

from _ray_helpers import LocalCluster, local_cluster  # noqa: E402

from lsio_ray.ray import Coordinator  # noqa: E402
from lsio_ray.ray.rechunk import rechunk  # noqa: E402

RECHUNK = dict(chunks=(20, 8, 6), shards=(20, 32, 12), codec="zstd:2", block_bytes=40_000)


@pytest.fixture(scope="module")
def lc(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("ray-remote"), workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def coord(lc: LocalCluster) -> Coordinator:
    return Coordinator(batch_bytes=64 << 10)


def _local_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _s3_files(u: str) -> dict[str, bytes | None]:
    return {k: objects.read_object(f"{u}/{k}") for k, _ in objects.list_prefix(u)}


@pytest.fixture(scope="module")
def source(lc: LocalCluster, coord: Coordinator) -> tuple[Path, np.ndarray, dict[str, bytes]]:
    """A local v3 source, and the files of its local -> local re-chunk (the reference
    every other direction must match byte for byte)."""
    data = _data((60, 64, 12), "int32", seed=3)
    src = lc.shared / "src.zarr"
    z = zarr.create_array(str(src), shape=data.shape, dtype=data.dtype, chunks=(6, 16, 12))
    z[...] = data
    rechunk(src, lc.shared / "ref.zarr", coordinator=coord, **RECHUNK)
    return src, data, _local_files(lc.shared / "ref.zarr")


@pytest.mark.timeout(300)
def test_rechunk_local_to_s3_and_back(
    s3: S3Server, lc: LocalCluster, coord: Coordinator, source: Any
) -> None:
    src, data, ref = source
    u = f"s3://{BUCKET}/rechunked/out.zarr"
    res = rechunk(src, u, coordinator=coord, **RECHUNK)
    assert res.dst == u and res.blocks >= 6
    assert _s3_files(u) == ref  # no journal left, no temp object, the same bytes
    np.testing.assert_array_equal(zarr_python(s3, "rechunked/out.zarr")[...], data)
    # inputs read through the IO actors' streams: the tasks write the objects themselves
    u2 = f"s3://{BUCKET}/rechunked/actors.zarr"
    res = rechunk(src, u2, coordinator=coord, io="actors", **RECHUNK)
    assert res.blocks_in_task == 0
    assert _s3_files(u2) == ref
    # S3 -> local: objects have no node, every block's task reads its own (spread over
    # the nodes), with io="actors" too
    back = lc.shared / "back.zarr"
    res = rechunk(u, back, chunks=(6, 16, 12), zarr_format=3, coordinator=coord, io="actors")
    assert res.blocks_in_task == res.blocks
    assert sum(res.bytes_read_by_node.values()) == res.bytes_read > 0
    np.testing.assert_array_equal(zarr.open_array(str(back), mode="r")[...], data)
    assert _local_files(back) == _local_files(src)
    assert not any(p.name.startswith("s3") for p in Path.cwd().iterdir())


class _Stop(Exception):
    pass


@pytest.mark.timeout(300)
def test_rechunk_s3_to_s3_resumes_byte_identical(
    s3: S3Server, lc: LocalCluster, coord: Coordinator, source: Any
) -> None:
    _, data, ref = source
    u_src = f"s3://{BUCKET}/s2s/src.zarr"
    lz.save(u_src, data, chunks=(6, 16, 12))
    u = f"s3://{BUCKET}/s2s/out.zarr"
    seen: list[int] = []

    def stop_after_three(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        rechunk(u_src, u, coordinator=coord, progress=stop_after_three, **RECHUNK)
    names = keys("s2s/out.zarr")
    assert ".lsio-rechunk/done" in names and "zarr.json" not in names  # metadata last
    res = rechunk(u_src, u, coordinator=coord, **RECHUNK)
    assert res.blocks_skipped >= 3
    assert _s3_files(u) == ref
    np.testing.assert_array_equal(zarr_python(s3, "s2s/out.zarr")[...], data)
    # a finished destination is not replaced without overwrite, nor one holding the source
    with pytest.raises(FileExistsError, match=r"s2s/out\.zarr"):
        rechunk(u_src, u, coordinator=coord, **RECHUNK)
    with pytest.raises(ValueError, match="contains the source"):
        rechunk(u_src, f"s3://{BUCKET}/s2s", coordinator=coord, overwrite=True, **RECHUNK)
    assert _s3_files(u) == ref


_KILLED_DRIVER = """
import os, signal, sys, time
import ray
from lsio_ray.io import objects, stores
from lsio_ray.ray.rechunk import rechunk

stores.configure(sys.argv[4], endpoint=sys.argv[5], access_key_id="testing",
                 secret_access_key="testing", region="us-east-1")
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
journal = sys.argv[3] + "/.lsio-rechunk/done"

def crash_once_journalled(done, total):
    if (objects.object_size(journal) or 0) >= 16:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all: a crash
    time.sleep(0.6)  # the journal is flushed every 0.5 s

rechunk(sys.argv[2], sys.argv[3], chunks=(20, 8, 6), shards=(20, 32, 12), codec="zstd:2",
        block_bytes=40_000, window=1, progress=crash_once_journalled)
"""


@pytest.mark.timeout(300)
def test_rechunk_to_s3_resumes_after_the_driver_is_killed(
    s3: S3Server, lc: LocalCluster, coord: Coordinator, source: Any
) -> None:
    import subprocess
    import sys

    src, data, ref = source
    u = f"s3://{BUCKET}/killed/out.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_DRIVER,
            lc.cluster.address,
            str(src),
            u,
            f"s3://{BUCKET}",
            s3.endpoint,
        ],
        capture_output=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    names = keys("killed/out.zarr")
    assert ".lsio-rechunk/done" in names and "zarr.json" not in names
    res = rechunk(src, u, coordinator=coord, **RECHUNK)
    assert res.blocks_skipped >= 1  # what the journal held when the driver died
    assert _s3_files(u) == ref
    np.testing.assert_array_equal(zarr_python(s3, "killed/out.zarr")[...], data)


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently")
def test_rechunk_a_local_group_to_s3(s3: S3Server, lc: LocalCluster, coord: Coordinator) -> None:
    """A whole group written to object storage: the same objects as the local -> local
    conversion (groups' documents and consolidated metadata included), read back by
    zarr-python through its consolidated metadata."""
    from lsio_ray.ray.rechunk import GroupRechunkResult

    src = lc.shared / "group.zarr"
    root = zarr.open_group(str(src), mode="w", zarr_format=3, attributes={"title": "g"})
    x = root.create_array("x", shape=(20, 16), chunks=(5, 4), dtype="i4")
    x[...] = _data((20, 16), "i4", seed=5)
    sub = root.create_group("sub", attributes={"level": 2})
    y = sub.create_array("y", shape=(30,), chunks=(4,), dtype="f8")
    y[...] = np.arange(30.0)
    zarr.consolidate_metadata(str(src))
    kw: dict[str, Any] = dict(chunks={"x": (10, 8), "sub/y": (16,)}, coordinator=coord)
    rechunk(src, lc.shared / "group-ref.zarr", **kw)
    u = f"s3://{BUCKET}/groups/out.zarr"
    res = rechunk(src, u, **kw)
    assert isinstance(res, GroupRechunkResult)
    assert res.dst == u and sorted(res.arrays) == ["sub/y", "x"]
    assert _s3_files(u) == _local_files(lc.shared / "group-ref.zarr")
    from obstore.store import S3Store

    s3store = S3Store(
        BUCKET,
        endpoint=s3.endpoint,
        access_key_id=KEY["access_key_id"],
        secret_access_key=KEY["secret_access_key"],
        region=KEY["region"],
        client_options={"allow_http": True},
    )
    store = zarr.storage.ObjectStore(s3store, read_only=True)
    g = zarr.open_consolidated(store, path="groups/out.zarr", zarr_format=3, mode="r")
    assert dict(g.attrs) == {"title": "g"} and dict(g["sub"].attrs) == {"level": 2}
    assert g["x"].chunks == (10, 8) and g["sub/y"].chunks == (16,)
    np.testing.assert_array_equal(g["x"][...], x[...])
    np.testing.assert_array_equal(g["sub/y"][...], y[...])
