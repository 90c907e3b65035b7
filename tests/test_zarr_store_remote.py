"""lsio_ray.zarr.Store on object storage: zarr-python's own store test-suite against a
real S3-compatible server (moto, a process on 127.0.0.1), zarr round trips, hostile
keys, a missing bucket, and a read-only HTTP store (nginx)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")
zarr = pytest.importorskip("zarr")
pytest_asyncio = pytest.importorskip("pytest_asyncio")

from _servers import S3Server, s3_bucket  # noqa: E402
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest  # noqa: E402
from zarr.core.buffer import cpu, default_buffer_prototype  # noqa: E402
from zarr.core.sync import sync  # noqa: E402
from zarr.testing.store import StoreTests  # noqa: E402

from lsio_ray.io import stores  # noqa: E402
from lsio_ray.io.url import UnsupportedURLError  # noqa: E402
from lsio_ray.zarr import Store  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestWarning"),
    pytest.mark.timeout(120),
]

BUCKET = "lsio-zstore"
_COUNTER = itertools.count()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_bucket(BUCKET) as srv:
        yield srv


def fresh(s3: S3Server) -> str:
    """A prefix no test used before."""
    return f"s3://{BUCKET}/t{next(_COUNTER)}-{os.getpid()}"


@pytest.mark.asyncio
class TestRemoteStore(StoreTests[Store, cpu.Buffer]):
    """zarr's StoreTests over moto; values set and got behind the store's back by boto3."""

    store_cls = Store
    buffer_cls = cpu.Buffer

    @staticmethod
    def _key(store: Store, key: str) -> str:
        assert store.url is not None
        return store.url.split("/", 3)[3] + "/" + key

    async def get(self, store: Store, key: str) -> cpu.Buffer:
        body = self._s3.client().get_object(Bucket=BUCKET, Key=self._key(store, key))["Body"]
        return self.buffer_cls.from_bytes(body.read())

    async def set(self, store: Store, key: str, value: Any) -> None:
        self._s3.client().put_object(
            Bucket=BUCKET, Key=self._key(store, key), Body=value.to_bytes()
        )

    @pytest.fixture
    def store_kwargs(self, s3: S3Server) -> dict[str, Any]:
        type(self)._s3 = s3
        return {"root": fresh(s3), "storage_options": s3.options()}

    @pytest_asyncio.fixture
    async def store(self, open_kwargs: dict[str, Any]) -> Store:
        return await self.store_cls.open(**open_kwargs)

    @pytest_asyncio.fixture
    async def store_not_open(self, store_kwargs: dict[str, Any]) -> Store:
        return self.store_cls(**store_kwargs)

    def test_store_repr(self, store: Store) -> None:
        assert repr(store) == f"lsio_ray.zarr.Store('{store.url}')"
        assert str(store) == store.url

    def test_store_supports_writes(self, store: Store) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: Store) -> None:
        assert store.supports_listing


@pytest.fixture
def remote(s3: S3Server) -> Store:
    return Store(fresh(s3), storage_options=s3.options())


def test_ranges_past_the_end_are_cut_like_local_store(remote: Store, tmp_path: Path) -> None:
    local = zarr.storage.LocalStore(tmp_path / "s")
    proto = default_buffer_prototype()
    for st in (remote, local):
        sync(st.set("k", cpu.Buffer.from_bytes(b"0123456789")))
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
    ours = sync(remote.get_partial_values(proto, [("k", r) for r in reqs] + [("nope", None)]))
    theirs = [sync(local.get("k", prototype=proto, byte_range=r)) for r in reqs]
    assert [o.to_bytes() for o in ours[:-1]] == [t.to_bytes() for t in theirs]
    assert ours[-1] is None


@pytest.mark.parametrize(("zarr_format", "sharded"), [(2, False), (3, False), (3, True)])
def test_zarr_python_round_trip(remote: Store, zarr_format: int, sharded: bool) -> None:
    data = np.arange(40 * 30, dtype="int32").reshape(40, 30)
    kw: dict[str, Any] = {"shards": (20, 30)} if sharded else {}
    z = zarr.create_array(
        store=remote,
        shape=data.shape,
        chunks=(10, 15),
        dtype=data.dtype,
        zarr_format=zarr_format,
        **kw,
    )
    z[...] = data
    back = zarr.open_array(store=Store(remote.url), mode="r")
    np.testing.assert_array_equal(back[...], data)
    np.testing.assert_array_equal(back[3:17, 5:29], data[3:17, 5:29])
    # the objects are ordinary Zarr: zarr-python's own obstore store reads them too
    from obstore.store import from_url
    from zarr.storage import ObjectStore

    theirs = ObjectStore(
        from_url(remote.url, client_options={"allow_http": True}, **_opts(remote)), read_only=True
    )
    np.testing.assert_array_equal(zarr.open_array(store=theirs, mode="r")[...], data)


def _opts(store: Store) -> dict[str, Any]:
    return dict(stores._options_for(store.url.split("/", 3)[0] + "//" + BUCKET))


def test_reads_an_array_zarr_python_wrote(remote: Store) -> None:
    from obstore.store import from_url
    from zarr.storage import ObjectStore

    theirs = ObjectStore(from_url(remote.url, client_options={"allow_http": True}, **_opts(remote)))
    data = np.random.default_rng(3).random((17, 23))
    z = zarr.create_array(
        store=theirs,
        shape=data.shape,
        chunks=(5, 7),
        dtype="f8",
        compressors=zarr.codecs.ZstdCodec(),
    )
    z[...] = data
    np.testing.assert_array_equal(zarr.open_array(store=remote, mode="r")[...], data)
    keys = sync(_collect(remote.list_prefix("c")))
    assert len(keys) == 4 * 4 and all(k.startswith("c/") for k in keys)


async def _collect(it: Any) -> list[str]:
    return [k async for k in it]


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\b", "", "a?b", "a#b"]
)
def test_hostile_keys_are_refused(remote: Store, key: str) -> None:
    buf = cpu.Buffer.from_bytes(b"1")
    with pytest.raises(ValueError, match="store key"):
        remote.set_sync(key, buf)
    with pytest.raises(ValueError, match="store key"):
        remote.get_sync(key)
    with pytest.raises(ValueError, match="store key"):
        sync(remote.exists(key))
    with pytest.raises(ValueError, match="store key"):
        sync(remote.delete(key))


def test_hostile_prefixes_are_refused(remote: Store) -> None:
    with pytest.raises(ValueError, match="store key"):
        sync(remote.delete_dir("../"))
    with pytest.raises(ValueError, match="store key"):
        sync(_collect(remote.list_dir("a/../..")))
    with pytest.raises(ValueError, match=re.escape("'..'")):
        Store(f"s3://{BUCKET}/a/../../b")


def test_unknown_scheme_and_options_for_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedURLError, match="'ftp'"):
        Store("ftp://host/x")
    with pytest.raises(ValueError, match="storage_options"):
        Store(tmp_path, storage_options={"region": "x"})


def test_missing_bucket_is_an_error_naming_the_url(s3: S3Server) -> None:
    url = "s3://no-such-lsio-bucket/x.zarr"
    with pytest.raises(FileNotFoundError, match=url):
        sync(Store.open(url, storage_options=s3.options()))
    with pytest.raises(FileNotFoundError, match=url):
        Store(url, storage_options=s3.options()).get_sync("zarr.json")


def test_pickled_store_carries_its_options(remote: Store) -> None:
    import pickle

    remote.set_sync("k", cpu.Buffer.from_bytes(b"abc"))
    stores._options.clear()
    stores._stores.clear()
    back = pickle.loads(pickle.dumps(remote))
    assert back == remote
    assert back.get_sync("k").to_bytes() == b"abc"


def test_http_store_is_read_only(tmp_path: Path) -> None:
    from _servers import nginx_server

    data = np.arange(60, dtype="u2").reshape(6, 10)
    zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(3, 4), dtype=data.dtype)[
        ...
    ] = data
    with nginx_server(str(tmp_path)) as base:
        st = Store(f"{base}/a.zarr")
        assert st.read_only
        np.testing.assert_array_equal(zarr.open_array(store=st, mode="r")[...], data)
        assert st.get_sync("c/9/9") is None
        with pytest.raises(ValueError, match="read-only"):
            st.set_sync("x", cpu.Buffer.from_bytes(b"1"))
        with pytest.raises(ValueError, match="read-only"):
            zarr.create_array(store=st, shape=(2,), dtype="i1", overwrite=True)


def test_root_of_a_remote_store_is_its_url(remote: Store) -> None:
    """Code that takes a store's ``root`` as its location (lz.save's lazy source) gets
    the URL, never a local directory."""
    assert remote.root == remote.url and remote.url.startswith(f"s3://{BUCKET}/")
    z = zarr.create_array(store=remote, shape=(4,), chunks=(2,), dtype="i4")
    z[...] = np.arange(4)
    from lsio_ray.zarr.creation import _source_dir

    assert _source_dir(zarr.open_array(store=remote, mode="r")) == f"{remote.url}/"
