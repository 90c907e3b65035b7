"""Object storage through the op-group API (lsio_ray.io.remote), against a real
S3-compatible server process (moto) on 127.0.0.1 and a fault-injecting proxy before it."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")

from _servers import FaultProxy, S3Server, moto_server, s3_bucket

from lsio_ray import ByteRange, Engine, OpGroup, get_ranges, put_file, put_ranges
from lsio_ray.errors import RangePastEOFError
from lsio_ray.io import config, remote
from lsio_ray.io.url import UnsupportedURLError, is_remote, resolve, split

BUCKET = "lsio-test"
MIB = 1 << 20


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_bucket(BUCKET, configure=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def blob(s3: S3Server) -> bytes:
    data = np.random.default_rng(7).integers(0, 256, 5 * MIB + 123, dtype=np.uint8).tobytes()
    s3.client().put_object(Bucket=BUCKET, Key="data/blob", Body=data)
    return data


def _read(ops: list[Any], **settings: Any) -> list[Any]:
    with config.set(**settings), Engine() as eng:
        return eng.submit(OpGroup(ops), errors="return").collect()


def test_urls_are_told_from_paths(tmp_path: Path) -> None:
    assert resolve("s3://b/k") == "s3://b/k"
    assert resolve(f"file://{tmp_path}/x") == f"{tmp_path}/x"
    assert resolve("rel/x") == os.path.abspath("rel/x")
    assert split("https://h:81/a/b") == ("https://h:81", "a/b")
    assert is_remote("gs://b/x") and not is_remote("/tmp/s3://x")
    with pytest.raises(UnsupportedURLError, match="'ftp'"):
        get_ranges("ftp://host/x")
    with pytest.raises(UnsupportedURLError, match="'hdfs'"):
        put_file("hdfs://nn/x", b"x")
    with pytest.raises(ValueError, match=re.escape("'..'")):
        get_ranges("s3://b/a/../../etc/passwd")
    with pytest.raises(ValueError, match="no bucket"):
        get_ranges("s3:///key")


def test_ranges_of_an_object_equal_its_bytes(blob: bytes) -> None:
    url = f"s3://{BUCKET}/data/blob"
    asked = [(0, 10), (100, 200), (4 * MIB, 4 * MIB + 5), (len(blob) - 3, len(blob)), (7, 7)]
    chunks = _read([get_ranges(url, asked), get_ranges(url, [ByteRange(-1000)])])
    chunks += _read([get_ranges(url), get_ranges(url, [(5 * MIB, None)])])
    want = [blob[a:b] for a, b in asked] + [blob[-1000:], blob, blob[5 * MIB :]]
    assert [c.error for c in chunks] == [None] * len(want)
    assert [bytes(c.data) for c in chunks] == want
    assert chunks[-3].offset == len(blob) - 1000  # a suffix read resolves its offset


def test_close_ranges_share_one_request_and_stats_count_it(blob: bytes) -> None:
    url = f"s3://{BUCKET}/data/blob"
    starts = np.arange(0, 64) * 4096
    with Engine() as eng:
        before = eng.stats().get("remote_requests", 0)
        res = eng.submit(OpGroup([get_ranges(url, starts=starts, ends=starts + 100)]))
        got = [bytes(c.data) for c in res.collect()]
        st = eng.stats()
    assert got == [blob[s : s + 100] for s in starts.tolist()]
    # 64 ranges 4 KiB apart: one GET (the gap is far below remote_coalesce_gap)
    assert st["remote_requests"] - before == 1
    assert st["remote_bytes_used"] >= 64 * 100
    with config.set(remote_coalesce_gap=0), Engine() as eng:
        eng.submit(OpGroup([get_ranges(url, starts=starts, ends=starts + 100)])).collect()
        assert eng.stats()["remote_requests"] == 64


def test_put_file_then_read_back_and_overwrite(s3: S3Server) -> None:
    url = f"s3://{BUCKET}/out/big.bin"
    data = np.random.default_rng(1).integers(0, 256, 12 * MIB, dtype=np.uint8)
    chunks = _read([put_file(url, data)])
    assert chunks[0].error is None
    body = s3.client().get_object(Bucket=BUCKET, Key="out/big.bin")["Body"].read()
    assert body == data.tobytes()
    _read([put_file(url, b"small")])
    assert [bytes(c.data) for c in _read([get_ranges(url)])] == [b"small"]


def test_missing_object_and_bucket_name_the_url(s3: S3Server) -> None:
    missing = f"s3://{BUCKET}/no/such/key"
    (c,) = _read([get_ranges(missing, [(0, 10)])])
    assert isinstance(c.error, FileNotFoundError)
    assert missing in str(c.error)
    remote.configure("s3://no-such-bucket-x", **s3.options())
    (c,) = _read([get_ranges("s3://no-such-bucket-x/k")])
    assert isinstance(c.error, OSError) and "s3://no-such-bucket-x/k" in str(c.error)


def test_range_past_the_end_is_refused(blob: bytes) -> None:
    url = f"s3://{BUCKET}/data/blob"
    a, b = _read(
        [get_ranges(url, [(len(blob) - 10, len(blob) + 10), (len(blob) + 5, len(blob) + 9)])]
    )
    for c in (a, b):
        assert isinstance(c.error, RangePastEOFError), c.error
        assert url in str(c.error)


def test_put_ranges_on_an_object_is_refused(s3: S3Server) -> None:
    (c,) = _read([put_ranges(f"s3://{BUCKET}/x", [(0, b"abc")])])
    assert isinstance(c.error, OSError) and c.error.errno == errno.EOPNOTSUPP
    assert "put_file" in str(c.error)


def test_throttling_is_retried_then_succeeds(s3: S3Server, blob: bytes) -> None:
    port = int(s3.endpoint.rsplit(":", 1)[1])
    with FaultProxy(("127.0.0.1", port)) as proxy:
        remote.configure("s3://lsio-test", **s3.options(proxy.endpoint))
        try:
            proxy.throttle(3)
            (c,) = _read([get_ranges(f"s3://{BUCKET}/data/blob", [(10, 20)])])
            assert c.error is None and bytes(c.data) == blob[10:20]
            assert proxy.throttled == 3
            # more throttling than retries: a clear error naming the URL and range
            proxy.throttle(100)
            (c,) = _read([get_ranges(f"s3://{BUCKET}/data/blob", [(10, 20)])], remote_retries=1)
            assert isinstance(c.error, OSError)
            text = str(c.error)
            assert f"s3://{BUCKET}/data/blob" in text and "10..20" in text
            assert "503" in text or "SlowDown" in text or "Slow Down" in text
        finally:
            remote.configure(f"s3://{BUCKET}", **s3.options())


def test_truncated_response_is_an_error_not_short_data(s3: S3Server, blob: bytes) -> None:
    port = int(s3.endpoint.rsplit(":", 1)[1])
    with FaultProxy(("127.0.0.1", port)) as proxy:
        remote.configure("s3://lsio-test", **s3.options(proxy.endpoint))
        try:
            proxy.cut_after(64 * 1024)  # headers and a little of the body, then closed
            (c,) = _read(
                [get_ranges(f"s3://{BUCKET}/data/blob", [(0, 2 * MIB)])],
                remote_retries=1,
                remote_timeout=5,
            )
            assert isinstance(c.error, OSError), c
            assert f"s3://{BUCKET}/data/blob" in str(c.error)
        finally:
            remote.configure(f"s3://{BUCKET}", **s3.options())


@pytest.mark.timeout(120)
def test_server_killed_mid_read_fails_cleanly_and_leaks_nothing(blob: bytes) -> None:
    with moto_server() as srv:
        srv.client().create_bucket(Bucket="lsio-dies")
        srv.client().put_object(Bucket="lsio-dies", Key="k", Body=blob)
        remote.configure("s3://lsio-dies", **srv.options())
        with config.set(remote_retries=1, remote_timeout=3), Engine() as eng:
            ok = eng.submit(OpGroup([get_ranges("s3://lsio-dies/k", [(0, 10)])])).collect()
            assert bytes(ok[0].data) == blob[:10]
            srv.proc.kill()
            srv.proc.wait()
            starts = np.arange(32) * 100_000
            ops = [get_ranges("s3://lsio-dies/k", starts=starts, ends=starts + 10)]
            chunks = eng.submit(OpGroup(ops), errors="return").collect()
            assert all(isinstance(c.error, OSError) for c in chunks)
            assert "s3://lsio-dies/k" in str(chunks[0].error)
            st = eng.stats()
            assert st["remote_held_bytes"] == 0 and st["remote_files_pending"] == 0


def test_many_groups_in_order_with_a_small_pool(s3: S3Server) -> None:
    """More bytes than the pool, in ordered groups: delivered in order, equal, and the
    bytes held at once stay near the pool bound."""
    cl = s3.client()
    rng = np.random.default_rng(3)
    objs = [rng.integers(0, 256, MIB, dtype=np.uint8).tobytes() for _ in range(24)]
    for i, o in enumerate(objs):
        cl.put_object(Bucket=BUCKET, Key=f"many/{i}", Body=o)
    groups = [OpGroup([get_ranges(f"s3://{BUCKET}/many/{i}")], metadata=i) for i in range(24)]
    peak = 0
    with Engine(pool_bytes=4 * MIB) as eng:
        seen = []
        for res in eng.stream(groups, errors="return"):
            chunks = res.collect()
            seen.append((res.metadata, bytes(chunks[0].data) == objs[res.metadata]))
            for c in chunks:
                c.release()
            peak = max(peak, eng.stats()["remote_held_bytes"])
    assert seen == [(i, True) for i in range(24)]
    assert peak <= 8 * MIB


@pytest.mark.parametrize("u", ["s3://bucket/train.zarr", "ftp://host/x.zarr"])
def test_zarr_entry_points_never_make_a_local_scheme_directory(
    u: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Array creation, conversions, the reader and the Store refuse an unknown scheme
    with the URL named; on object storage they work (tests/test_remote_write.py,
    tests/test_zarr_store_remote.py) -- nothing named ``s3:`` or ``ftp:`` appears in the
    working directory."""
    import lsio_ray.zarr as lz
    from lsio_ray.paths import check_disjoint

    monkeypatch.chdir(tmp_path)
    calls: list[Any] = []
    if u.startswith("ftp:"):
        calls += [
            lambda: lz.create(u, shape=(4,), chunks=(2,), dtype="f4"),
            lambda: check_disjoint(u, str(tmp_path / "out")),
            lambda: check_disjoint(str(tmp_path / "in"), u),
            lambda: lz.open(u),
            lambda: lz.Store(u),
        ]
    else:
        assert lz.Store(u).url == u  # made without touching the network or the disk
    for call in calls:
        with pytest.raises(UnsupportedURLError, match=re.escape(u)):
            call()
    assert os.listdir(tmp_path) == []
