"""lsio_ray.zarr.Store: zarr-python's own store test-suite, round trips, batching, xarray."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.testing.store import StoreTests

import lsio_ray.zarr as lz
from lsio_ray.zarr import Store

pytest_asyncio = pytest.importorskip("pytest_asyncio")

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestWarning")


@pytest.mark.asyncio
class TestLsioStore(StoreTests[Store, cpu.Buffer]):
    """zarr's StoreTests, as zarr runs them for LocalStore."""

    store_cls = Store
    buffer_cls = cpu.Buffer

    async def get(self, store: Store, key: str) -> cpu.Buffer:
        return self.buffer_cls.from_bytes((store.root / key).read_bytes())

    async def set(self, store: Store, key: str, value: Any) -> None:
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"root": str(tmp_path)}

    @pytest_asyncio.fixture
    async def store(self, open_kwargs: dict[str, Any]) -> Store:
        return await self.store_cls.open(**open_kwargs)

    @pytest_asyncio.fixture
    async def store_not_open(self, store_kwargs: dict[str, Any]) -> Store:
        return self.store_cls(**store_kwargs)

    def test_store_repr(self, store: Store) -> None:
        assert repr(store) == f"lsio_ray.zarr.Store('{store.root.as_posix()}')"
        assert str(store) == f"lsio://{store.root.as_posix()}"

    def test_store_supports_writes(self, store: Store) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: Store) -> None:
        assert store.supports_listing


def test_ranges_past_the_end_are_cut_like_local_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    local = zarr.storage.LocalStore(tmp_path / "s")
    store.set_sync("k", cpu.Buffer.from_bytes(b"0123456789"))
    proto = default_buffer_prototype()
    reqs = [
        None,
        RangeByteRequest(2, 5),
        RangeByteRequest(8, 20),
        RangeByteRequest(12, 20),
        OffsetByteRequest(3),
        OffsetByteRequest(30),
        SuffixByteRequest(4),
        SuffixByteRequest(40),
    ]
    ours = sync(store.get_partial_values(proto, [("k", r) for r in reqs] + [("nope", None)]))
    # LocalStore.get (async): get_sync only exists from zarr 3.1.6 on
    theirs = [sync(local.get("k", prototype=proto, byte_range=r)) for r in reqs]
    assert [o.to_bytes() for o in ours[:-1]] == [t.to_bytes() for t in theirs]
    assert ours[-1] is None


@contextmanager
def _groups_submitted(store: Store) -> Iterator[list[int]]:
    """The number of ranges of every engine group the store submits inside the block."""
    calls: list[int] = []
    eng = store.engine
    orig = eng.submit

    def spy(group: Any, **kw: Any) -> Any:
        calls.append(group.nranges)
        return orig(group, **kw)

    eng.submit = spy  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del eng.submit


def test_partial_values_go_out_as_one_group(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    for i in range(20):
        store.set_sync(f"c/{i}", cpu.Buffer.from_bytes(bytes([i]) * 100))
    with _groups_submitted(store) as calls:
        keys = [(f"c/{i}", RangeByteRequest(10, 20)) for i in range(20)]
        out = sync(store.get_partial_values(default_buffer_prototype(), keys))
    assert calls == [20]
    assert [o.to_bytes() for o in out] == [bytes([i]) * 10 for i in range(20)]


def test_concurrent_gets_are_read_together(tmp_path: Path) -> None:
    """Gets started in one turn of the event loop (as zarr starts them) go to the engine
    as one group; one key's error fails that get alone; a cancelled get does not
    disturb the others."""
    import asyncio
    import os

    store = Store(tmp_path / "s")
    for i in range(12):
        store.set_sync(f"c/{i}", cpu.Buffer.from_bytes(bytes([i]) * (1000 + i)))
    os.makedirs(tmp_path / "s" / "c" / "dir" / "x")  # a directory: reads as missing
    too_long = "c/" + "n" * 300  # ENAMETOOLONG: an error, not a missing key

    async def main() -> list[Any]:
        proto = default_buffer_prototype()
        keys = [f"c/{i}" for i in range(12)] + ["c/missing", "c/dir", too_long]
        tasks = [asyncio.ensure_future(store.get(k, proto)) for k in keys]
        tasks.append(asyncio.ensure_future(store.get("c/3", proto)))
        await asyncio.sleep(0)  # every get is waiting for the read now
        tasks[-1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    with _groups_submitted(store) as calls:
        out = sync(main())
    # all 16 at once; the failure then made each of the 16 go alone
    assert calls == [16] + [1] * 16
    assert [o.to_bytes() for o in out[:12]] == [bytes([i]) * (1000 + i) for i in range(12)]
    assert out[12] is None and out[13] is None
    assert isinstance(out[14], OSError) and "File name too long" in str(out[14])
    assert isinstance(out[15], asyncio.CancelledError)


def test_values_past_half_the_pool_are_copies(tmp_path: Path) -> None:
    """Values are the engine's pool buffers until those held fill half the pool; then
    copies, so holding many values never starves the reads (a small pool here)."""
    from lsio_ray import Engine

    with Engine(pool_bytes="1M") as eng:
        store = Store(tmp_path / "s", engine=eng)
        blob = np.arange(64 << 10, dtype=np.uint8)  # 64 KiB each: 16 fill the pool
        for i in range(40):
            store.set_sync(f"c/{i}", cpu.Buffer.from_array_like(blob + i))
        keys = [(f"c/{i}", None) for i in range(40)]
        held = sync(store.get_partial_values(default_buffer_prototype(), keys))
        st = eng.stats()
        assert 0 < st["pool_in_use"] <= st["pool_bytes"] // 2 + (64 << 10)
        for i, v in enumerate(held):
            np.testing.assert_array_equal(v.as_numpy_array(), blob + i)
        del held, v
        import gc

        gc.collect()
        assert eng.stats()["pool_in_use"] == 0  # every pool buffer back once dropped


@pytest.mark.parametrize(
    ("zarr_format", "sharded"),
    [(2, False), (3, False), (3, True)],  # Zarr v2 has no shards
)
def test_zarr_round_trip(tmp_path: Path, zarr_format: int, sharded: bool) -> None:
    data = np.arange(40 * 30, dtype="int32").reshape(40, 30)
    store = Store(tmp_path / "a.zarr")
    kw: dict[str, Any] = {"shards": (20, 30)} if sharded else {}
    z = zarr.create_array(
        store=store,
        shape=data.shape,
        chunks=(10, 15),
        dtype=data.dtype,
        zarr_format=zarr_format,
        **kw,
    )
    z[...] = data
    back = zarr.open(store=Store(tmp_path / "a.zarr"), mode="r")
    np.testing.assert_array_equal(back[...], data)
    np.testing.assert_array_equal(back[3:17, 5:29], data[3:17, 5:29])
    # the files are ordinary Zarr: zarr's LocalStore and lsio_ray.zarr read them too
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "a.zarr"), mode="r")[...], data)
    np.testing.assert_array_equal(lz.open(tmp_path / "a.zarr")[...], data)


def test_groups_and_read_only(tmp_path: Path) -> None:
    root = zarr.open_group(store=Store(tmp_path / "g.zarr"), mode="w")
    root.create_array("x", shape=(5,), dtype="f8")[...] = np.arange(5.0)
    ro = zarr.open_group(store=Store(tmp_path / "g.zarr", read_only=True), mode="r")
    assert list(ro.array_keys()) == ["x"]
    np.testing.assert_array_equal(ro["x"][...], np.arange(5.0))
    with pytest.raises(ValueError, match="read-only"):
        ro.store.set_sync("y", cpu.Buffer.from_bytes(b"1"))


def test_xarray_through_the_store(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset(
        {"t": (("time", "x"), np.arange(12.0).reshape(3, 4))},
        coords={"time": [0, 1, 2], "x": [10, 20, 30, 40]},
    )
    ds.to_zarr(Store(tmp_path / "ds.zarr"), zarr_format=3, consolidated=False)
    back = xr.open_zarr(Store(tmp_path / "ds.zarr", read_only=True), consolidated=False)
    xr.testing.assert_equal(back.load(), ds)
