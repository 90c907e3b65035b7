"""The remote backend's event loop (``remote_loop``): uvloop when installed, asyncio's
own as the fallback, and both give the same results."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

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
