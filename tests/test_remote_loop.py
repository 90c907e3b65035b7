"""The remote backend's event loop (``remote_loop``): uvloop when installed, asyncio's
own as the fallback, and both give the same results; how it schedules requests (the
inflight cap) and publishes completions (a loop turn's at once)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")

from _servers import S3Server, s3_bucket

from lsio_ray import Engine, OpGroup, get_ranges
from lsio_ray.io import config
from lsio_ray.io.remote import new_loop

BUCKET = "lsio-loop"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_bucket(BUCKET, configure=True) as srv:
        yield srv


def test_asyncio_is_the_fallback_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = new_loop("asyncio")
    assert type(loop).__module__.startswith("asyncio")
    loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop fails
    loop = new_loop("auto")
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert type(loop).__module__.startswith("asyncio")
    loop.close()
    with pytest.raises(ImportError, match="uvloop"):
        new_loop("uvloop")


def test_auto_takes_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    loop = new_loop("auto")
    assert type(loop).__module__.startswith("uvloop")
    loop.close()


def test_the_setting_is_checked() -> None:
    assert config.get("remote_loop") == "auto"
    with config.set(remote_loop="ASYNCIO"):
        assert config.get("remote_loop") == "asyncio"
    with pytest.raises(ValueError, match="remote_loop"):
        with config.set(remote_loop="trio"):
            pass
    with pytest.raises(TypeError, match="remote_loop"):
        with config.set(remote_loop=1):
            pass


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
def test_reads_are_equal_on_either_loop(s3: S3Server, loop: str) -> None:
    data = np.random.default_rng(5).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    s3.client().put_object(Bucket=BUCKET, Key="k", Body=data)
    asked = [(0, 10), (1000, 5000), (200_000, 300_000), (7, 7)]
    with config.set(remote_loop=loop), Engine() as eng:
        chunks = eng.submit(OpGroup([get_ranges(f"s3://{BUCKET}/k", asked)])).collect()
        assert [bytes(c.data) for c in chunks] == [data[a:b] for a, b in asked]
        for c in chunks:
            c.release()
        assert eng.stats()["remote_held_bytes"] == 0
        backend = eng.service.engine.remote
        assert backend is not None
        kind = type(backend._loop).__module__.split(".")[0]
        assert kind == ("uvloop" if loop == "auto" and _has_uvloop() else "asyncio")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_inflight_cap_holds_and_requests_overlap(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests started by the backend's queue: never more than ``remote_inflight`` GETs
    at once, yet several at once; every range equal, in order, all counted."""
    import obstore

    rng = np.random.default_rng(11)
    objs = [rng.integers(0, 256, 50_000 + i, dtype=np.uint8).tobytes() for i in range(40)]
    for i, o in enumerate(objs):
        s3.client().put_object(Bucket=BUCKET, Key=f"cap/{i}", Body=o)
    live = [0, 0]  # GETs in flight, the most at once

    def counting(real: Any) -> Any:
        def counted(*args: object, **kwargs: object) -> object:
            fut = real(*args, **kwargs)
            live[0] += 1
            live[1] = max(live[1], live[0])

            def done(_f: object) -> None:
                live[0] -= 1

            fut.add_done_callback(done)
            return fut

        return counted

    # a byte range is one get_range_async; a GET the store refuses, a get_async
    monkeypatch.setattr(obstore, "get_async", counting(obstore.get_async))
    monkeypatch.setattr(obstore, "get_range_async", counting(obstore.get_range_async))
    ops = [get_ranges(f"s3://{BUCKET}/cap/{i}", [(i, i + 1000)]) for i in range(40)]
    missing = get_ranges(f"s3://{BUCKET}/cap/none", [(0, 10)])
    with config.set(remote_inflight=3), Engine() as eng:
        before = eng.stats().get("remote_requests", 0)
        chunks = eng.submit(OpGroup([*ops[:20], missing, *ops[20:]]), errors="return").collect()
        st = eng.stats()
        got = [bytes(c.data) for c in chunks[:20] + chunks[21:]]
        for c in chunks:
            c.release()
        assert eng.stats()["remote_held_bytes"] == 0
    assert 2 <= live[1] <= 3
    assert st["remote_requests"] - before == 41 and st["remote_inflight"] == 0
    assert isinstance(chunks[20].error, OSError) and "cap/none" in str(chunks[20].error)
    assert got == [o[i : i + 1000] for i, o in enumerate(objs)]


def test_completions_of_a_turn_are_published_together(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One flush publishes every completion of a loop turn (one array, one wake), and no
    completion is lost or repeated."""
    from lsio_ray.io.remote import RemoteBackend

    data = bytes(range(256)) * 400
    for i in range(16):
        s3.client().put_object(Bucket=BUCKET, Key=f"turn/{i}", Body=data)
    sizes: list[int] = []
    real = RemoteBackend._flush

    def spy(self: RemoteBackend) -> None:
        sizes.append(len(self._out))
        real(self)

    monkeypatch.setattr(RemoteBackend, "_flush", spy)
    ops = [get_ranges(f"s3://{BUCKET}/turn/{i}", [(0, 10), (90_000, 90_100)]) for i in range(16)]
    with Engine() as eng:
        chunks = eng.submit(OpGroup(ops)).collect()
    assert [bytes(c.data) for c in chunks] == [data[0:10], data[90_000:90_100]] * 16
    assert sum(sizes) == 16 and len(sizes) <= 16
