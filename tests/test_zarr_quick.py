"""Small reads on the calling thread (lsio_ray.zarr.quick, lsio_ray.io.cached).

Real arrays written by zarr-python on the disk-backed temp directory, read with and
without the path (``call_files``); files evicted from the page cache with
``posix_fadvise(DONTNEED)``; FIFOs, symlinks, corrupt, missing and oversized chunk
files, and several threads at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

import lsio_ray.zarr as lz
from lsio_ray.io import read_cached
from lsio_ray.io.service import IOService
from lsio_ray.zarr import quick
from lsio_ray.zarr.errors import ChunkCorruptError

SHAPE = (12, 40, 50)
CHUNKS = (1, 16, 20)


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[IOService, IOService]]:
    """A service that reads small calls on the caller, and one that never does."""
    on, off = IOService(call_files=8), IOService(call_files=0)
    try:
        yield on, off
    finally:
        on.close()
        off.close()


def _write(path: str, compressors: object, fill: float = -1.0) -> np.ndarray:
    data = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
    arr = zarr.create_array(
        path, shape=SHAPE, chunks=CHUNKS, dtype="float32", fill_value=fill,
        compressors=compressors, overwrite=True,
    )  # fmt: skip
    arr[...] = data
    return data


def _warm(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if os.path.isfile(p) and not os.path.islink(p):  # never open the FIFO
                with open(p, "rb") as fh:
                    fh.read()


def _evict(path: str) -> None:
    for root, _dirs, files in os.walk(os.path.join(path, "c")):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _calls(svc: IOService) -> tuple[int, int, int]:
    st = svc.stats()
    return st["call_reads"], st["call_read_bytes"], st["call_read_misses"]


@pytest.mark.parametrize("codec", ["zstd", "blosc", "raw"])
def test_small_reads_on_the_caller_equal_the_io_thread(tmp_path, services, codec):
    on, off = services
    comp = {"zstd": [ZstdCodec(level=3)], "blosc": [BloscCodec(cname="lz4")], "raw": None}[codec]
    path = str(tmp_path / "a.zarr")
    data = _write(path, comp)
    _warm(path)
    a_on, a_off = lz.open(path, loader=on), lz.open(path, loader=off)
    keys = [
        (slice(0, 2), slice(0, 32), slice(0, 40)),  # 8 whole chunks
        (slice(3, 5), slice(5, 30), slice(7, 33)),  # 8 parts of chunks
        (4, slice(16, 32), slice(20, 40)),  # one chunk, an integer axis dropped
        (slice(0, 6, 3), slice(0, 16), slice(0, 20)),  # a step: the box 0:4
        (slice(11, 12), slice(32, 40), slice(40, 50)),  # the edge chunk
        (slice(0, 12), slice(0, 40), slice(0, 50)),  # 108 chunks: through the IO thread
    ]
    before = _calls(on)
    for k in keys:
        np.testing.assert_array_equal(a_on[k], data[k])
        np.testing.assert_array_equal(a_off[k], data[k])
    # read(out=...) into a Fortran-ordered array: strides unlike the chunk's
    out = np.zeros((2, 32, 40), np.float32, order="F")
    a_on.read((slice(0, 2), slice(0, 32), slice(0, 40)), out=out)
    np.testing.assert_array_equal(out, data[0:2, 0:32, 0:40])
    taken, nbytes, _ = (x - y for x, y in zip(_calls(on), before, strict=True))
    assert taken == 6  # all but the 108-chunk read
    assert nbytes > 0
    assert _calls(off)[0] == 0


def test_evicted_files_go_through_the_engine_then_come_back(tmp_path, services):
    on, _ = services
    path = str(tmp_path / "a.zarr")
    data = _write(path, [ZstdCodec(level=3)])
    a = lz.open(path, loader=on)
    key = (slice(2, 4), slice(0, 32), slice(0, 40))
    _warm(path)
    np.testing.assert_array_equal(a[key], data[key])
    _evict(path)
    taken, _, missed = _calls(on)
    np.testing.assert_array_equal(a[key], data[key])  # not cached: the engine reads it
    assert _calls(on)[2] == missed + 1
    assert a._call_skip == quick.SKIP_AFTER_MISS
    for _ in range(quick.SKIP_AFTER_MISS):  # these go to the IO service directly
        np.testing.assert_array_equal(a[key], data[key])
    assert _calls(on)[:1] == (taken,) and a._call_skip == 0
    np.testing.assert_array_equal(a[key], data[key])  # read by the engine: cached now
    assert _calls(on)[0] == taken + 1


def test_read_cached_refuses_what_it_cannot_take_whole(tmp_path):
    reg = tmp_path / "f"
    reg.write_bytes(b"x" * 5000)
    _warm(str(tmp_path))
    got = read_cached([os.fsencode(reg)], 5000)
    assert got is not None and bytes(got[0]) == b"x" * 5000
    assert read_cached([os.fsencode(reg)], 4999) is None  # larger than the limit
    (tmp_path / "empty").write_bytes(b"")
    assert read_cached([os.fsencode(tmp_path / "empty")], 100) is None
    os.symlink(reg, tmp_path / "link")
    assert read_cached([os.fsencode(tmp_path / "link")], 5000) is None
    os.mkfifo(tmp_path / "fifo")  # opened O_NONBLOCK: no wait for a writer
    assert read_cached([os.fsencode(reg), os.fsencode(tmp_path / "fifo")], 5000) is None
    assert read_cached([os.fsencode(tmp_path / "missing")], 5000) is None
    assert read_cached([os.fsencode(tmp_path)], 5000) is None  # a directory
    _evict_file(reg)
    assert read_cached([os.fsencode(reg)], 5000) is None  # not in the page cache


def _evict_file(p: os.PathLike[str]) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _outcome(a: lz.Array, key: tuple[slice, ...]) -> object:
    """The result of ``a[key]``, or the type and message of its error, in a thread with a
    time limit (a FIFO must not hang the call)."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(a[key])
        except Exception as exc:  # compared below
            box.append((type(exc), str(exc)))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert box, f"a[{key}] hung"
    return box[0]


@pytest.mark.parametrize("bad", ["fifo", "symlink", "missing", "corrupt", "oversized"])
def test_bad_chunk_files_behave_as_through_the_engine(tmp_path, services, bad):
    on, off = services
    path = str(tmp_path / "a.zarr")
    data = _write(path, [ZstdCodec(level=3)], fill=-1.0)
    victim = os.path.join(path, "c", "1", "0", "0")
    os.unlink(victim)
    if bad == "fifo":
        os.mkfifo(victim)
    elif bad == "symlink":
        os.symlink(os.path.join(path, "c", "0", "0", "0"), victim)
    elif bad == "corrupt":
        with open(victim, "wb") as f:
            f.write(b"\x28\xb5\x2f\xfd" + b"not a zstd frame" * 10)
    elif bad == "oversized":  # beyond any codec's output: the engine reads it and fails
        with open(victim, "wb") as f:
            f.write(os.urandom(CHUNKS[1] * CHUNKS[2] * 4 * 2))
    _warm(path)
    key = (slice(0, 2), slice(0, 32), slice(0, 40))
    got_on = _outcome(lz.open(path, loader=on), key)
    got_off = _outcome(lz.open(path, loader=off), key)
    if isinstance(got_off, np.ndarray):
        assert isinstance(got_on, np.ndarray)
        np.testing.assert_array_equal(got_on, got_off)
        if bad == "missing":
            want = data[key].copy()
            want[1, 0:16, 0:20] = -1.0
            np.testing.assert_array_equal(got_on, want)
    else:
        assert got_on == got_off
        assert "c/1/0/0" in got_on[1]  # the error names the chunk
    if bad == "corrupt":
        assert got_on[0] is ChunkCorruptError


def test_corrupt_chunk_read_on_the_caller_names_it(tmp_path, services):
    on, _ = services
    path = str(tmp_path / "a.zarr")
    _write(path, [ZstdCodec(level=3)])
    victim = os.path.join(path, "c", "0", "1", "1")
    size = os.path.getsize(victim)
    os.truncate(victim, size // 2)  # a valid frame header, its blocks cut short
    _warm(path)
    before = _calls(on)[0]
    with pytest.raises(ChunkCorruptError, match=r"c/0/1/1.*cannot decode"):
        lz.open(path, loader=on)[0:2, 0:32, 0:40]
    assert _calls(on)[0] == before + 1  # it was read on the caller, and failed there


def test_many_threads_reading_small_calls(tmp_path, services):
    on, _ = services
    path = str(tmp_path / "a.zarr")
    data = _write(path, [ZstdCodec(level=3)])
    _warm(path)
    a = lz.open(path, loader=on)
    errors: list[BaseException] = []

    def loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(60):
                z, y, x = (
                    int(rng.integers(0, n - s + 1)) for n, s in zip(SHAPE, (2, 20, 25), strict=True)
                )
                key = (slice(z, z + 2), slice(y, y + 20), slice(x, x + 25))
                np.testing.assert_array_equal(a[key], data[key])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert _calls(on)[0] > 0
