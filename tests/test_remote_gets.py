"""GETs as one obstore future each (lsio_ray.io.remote), against real servers on
127.0.0.1: nginx (honours ranges), Python's ``http.server`` (ignores them: answers 200)
and moto (S3).  A whole object is one ``bytes=0-(2**62-1)`` GET, whose body's length is
the object's size; the empty object (no byte 0) and servers that ignore ranges fall back
to the plain GET; a missing object fails with one request.  A byte range is one ranged
GET whose object size stays unknown (as a local file's explicit range) unless the range
runs past the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")

from _servers import nginx_server, s3_bucket, static_http_server

from lsio_ray import Engine, OpGroup, get_ranges
from lsio_ray.errors import RangePastEOFError
from lsio_ray.io import config

WHOLE = "bytes=0-4611686018427387903"


def _tree(root: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    objs = {
        "empty": b"",
        "one": b"x",
        "small": rng.integers(0, 256, 1000, dtype=np.uint8).tobytes(),
        "big": rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes(),
    }
    for name, data in objs.items():
        (root / name).write_bytes(data)
    return objs


def _whole(urls: list[str]) -> tuple[list[tuple[bytes | None, int | None, str]], int]:
    """Each URL read whole in one group: (bytes or None, file_size, error type name),
    and the GETs it took."""
    with Engine() as eng:
        before = eng.stats().get("remote_requests", 0)
        got = eng.submit(OpGroup([get_ranges(u) for u in urls]), errors="return").collect()
        out = [
            (
                None if c.error else bytes(c.data),
                c.file_size,
                type(c.error).__name__ if c.error else "",
            )
            for c in got
        ]
        return out, eng.stats()["remote_requests"] - before


def test_nginx_whole_objects_are_one_ranged_get_each(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    objs = _tree(root)
    log = tmp_path / "access.log"
    with nginx_server(str(root), str(log), log_format="$status $request_uri $http_range") as base:
        names = ["one", "small", "big"]
        got, requests = _whole([f"{base}/{n}" for n in names])
        assert got == [(objs[n], len(objs[n]), "") for n in names]
        assert requests == 3
        lines = sorted(log.read_text().split("\n")[:-1])
        assert lines == sorted(f"206 /{n} {WHOLE}" for n in names), lines

        # the empty object has no byte 0: no partial answer, then the plain GET
        log.write_text("")
        got, requests = _whole([f"{base}/empty"])
        assert got == [(b"", 0, "")] and requests == 2
        # a missing object: one GET, and the error names the URL
        got, requests = _whole([f"{base}/nope"])
        assert got == [(None, None, "FileNotFoundError")] and requests == 1
        # later whole objects still take the ranged GET (neither marked the store)
        got, requests = _whole([f"{base}/small"])
        assert got == [(objs["small"], 1000, "")] and requests == 1
        lines = log.read_text().split("\n")[:-1]
        # nginx answers the empty file's range with 200 (S3 with 416): no partial answer
        want = [f"200 /empty {WHOLE}", "200 /empty -", f"404 /nope {WHOLE}", f"206 /small {WHOLE}"]
        assert lines == want


def test_a_server_that_ignores_ranges_gets_plain_gets(tmp_path: Path) -> None:
    objs = _tree(tmp_path)
    with static_http_server(str(tmp_path)) as base:
        # the first: the ranged GET answered 200 (refused by object_store), then plain
        got, requests = _whole([f"{base}/big"])
        assert got == [(objs["big"], len(objs["big"]), "")]
        assert requests == 2
        # from then on one plain GET each, whatever the object
        names = ["one", "small", "empty", "big"]
        got, requests = _whole([f"{base}/{n}" for n in names])
        assert got == [(objs[n], len(objs[n]), "") for n in names]
        assert requests == len(names)


def test_s3_whole_objects_and_the_empty_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()
    with s3_bucket("lsio-whole", configure=True) as srv:
        cl = srv.client()
        cl.put_object(Bucket="lsio-whole", Key="a/data", Body=data)
        cl.put_object(Bucket="lsio-whole", Key="a/empty", Body=b"")
        urls = [f"s3://lsio-whole/a/{k}" for k in ("data", "empty", "missing")]
        got, requests = _whole(urls)
    assert got == [(data, len(data), ""), (b"", 0, ""), (None, None, "FileNotFoundError")]
    assert requests == 1 + 2 + 1


def test_nginx_byte_ranges_are_one_get_each_and_past_the_end_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    objs = _tree(root)
    big, n = objs["big"], len(objs["big"])
    log = tmp_path / "access.log"
    with nginx_server(str(root), str(log), log_format="$status $http_range") as base:
        url = f"{base}/big"
        with config.set(remote_coalesce_gap=0), Engine() as eng:
            asked = [(0, 10), (1 << 20, (1 << 20) + 4096), (n - 3, n)]
            res = eng.submit(OpGroup([get_ranges(url, asked)]), errors="return").collect()
            assert [bytes(c.data) for c in res] == [big[a:b] for a, b in asked]
            assert [c.file_size for c in res] == [None] * 3  # not asked, as for a file
            assert eng.stats()["remote_requests"] == 3
            # past the end: cut short by the server (the object's size then known), or
            # starting past it (416); both name the URL and the range
            past = [(n - 10, n + 10), (n + 5, n + 9)]
            res = eng.submit(OpGroup([get_ranges(url, past)]), errors="return").collect()
            for c in res:
                assert isinstance(c.error, RangePastEOFError), c.error
                assert url in str(c.error) and c.error.file_size == n
            # an empty range among others: the GET that tells the object's size
            both = [(100, 200), (150, 150)]
            res = eng.submit(OpGroup([get_ranges(url, both)]), errors="return").collect()
            assert [bytes(c.data) for c in res] == [big[100:200], b""]
            assert [c.error for c in res] == [None, None]
            # empty ranges alone: a HEAD tells inside (empty data) from past the end
            alone = [get_ranges(url, [(7, 7)]), get_ranges(url, [(n + 5, n + 5)])]
            inside, past_end = eng.submit(OpGroup(alone), errors="return").collect()
            assert inside.error is None and bytes(inside.data) == b""
            assert isinstance(past_end.error, RangePastEOFError), past_end.error
            assert url in str(past_end.error) and past_end.error.file_size == n
        lines = log.read_text().split("\n")[:-1]
        mib = 1 << 20
        want = ["206 bytes=0-9", f"206 bytes={mib}-{mib + 4095}", f"206 bytes={n - 3}-{n - 1}"]
        assert sorted(lines[:3]) == sorted(want)
