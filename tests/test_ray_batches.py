"""The IO actor's batching, without a cluster: the actor class used as a plain object."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsio_ray import ByteRange, OpGroup, get_ranges, put_file
from lsio_ray.ray.actor import IOActor
from lsio_ray.ray.batches import INDEX_DTYPE, BatchBuilder
from lsio_ray.ray.errors import InputError
from lsio_ray.ray.spec import split_runs

pytest.importorskip("ray")


def _content(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture(params=["uring", "pread"])
def actor(request: pytest.FixtureRequest):
    a = IOActor({"backend": request.param, "pool_bytes": "8M"})
    yield a
    a.shutdown()


def _files(tmp_path: Path, sizes: list[int]) -> list[tuple[str, bytes]]:
    out = []
    for i, n in enumerate(sizes):
        p = tmp_path / f"f{i:04d}"
        data = _content(i, n)
        p.write_bytes(data)
        out.append((str(p), data))
    return out


def _collect(actor: IOActor, group: OpGroup, batch_bytes: int, skip: int = 0):
    ((_node, spec),) = split_runs(group, ["n"] * len(group.operations))
    out = []
    for b in actor.run(spec, batch_bytes, skip):
        chunks = []
        for i in range(len(b)):
            err = b.error(i)
            chunks.append(err if err is not None else b.view(i).tobytes())
        out.append((b.seq, b.index.copy(), chunks, b.metadata, b.nbytes))
    return out


def test_operation_order_and_cut(actor: IOActor, tmp_path: Path) -> None:
    files = _files(tmp_path, [1000 + 37 * i for i in range(60)])
    group = OpGroup([get_ranges(p) for p, _ in files], metadata="g")
    got = _collect(actor, group, 8192)
    flat = [c for _, _, cs, _, _ in got for c in cs]
    assert flat == [d for _, d in files]
    ranges = np.concatenate([idx["range"] for _, idx, _, _, _ in got])
    assert ranges.tolist() == list(range(60))
    for *_, nbytes in got[:-1]:
        assert nbytes <= 8192 and nbytes + 3000 > 8192  # closed only when the next won't fit
    assert [s for s, *_ in got] == list(range(len(got)))
    # the cut is deterministic: the same group read again, skipping the first 3
    again = _collect(actor, group, 8192, skip=3)
    assert [s for s, *_ in again] == list(range(3, len(got)))
    for a, b in zip(got[3:], again, strict=True):
        assert a[2] == b[2]
        assert (a[1] == b[1]).all()


def test_ranges_metadata_and_errors(actor: IOActor, tmp_path: Path) -> None:
    ((p, data),) = _files(tmp_path, [10_000])
    op = get_ranges(
        p,
        [ByteRange(0, 10), ByteRange(100, 300, "mid"), ByteRange.last(5), ByteRange(9_990, 10_020)],
        metadata=["a", "b", "c", "d"],
    )
    missing = get_ranges(tmp_path / "nope", metadata=np.array([7]))
    group = OpGroup([op, missing])
    ((_, idx, chunks, meta, _),) = _collect(actor, group, 1 << 20)
    assert chunks[0] == data[:10] and chunks[1] == data[100:300] and chunks[2] == data[-5:]
    assert isinstance(chunks[3], InputError) and "past the end" in str(chunks[3])
    assert isinstance(chunks[4], InputError)
    assert isinstance(chunks[4].cause, FileNotFoundError)
    assert "nope" in str(chunks[4]) and "node local" in str(chunks[4])
    assert list(meta) == ["a", "b", "c", "d", 7]
    assert idx.dtype == INDEX_DTYPE


def test_writes_through_the_actor(actor: IOActor, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "out.bin"
    n = actor.write_files([str(target)], [np.arange(100, dtype=np.uint8)])
    assert n == 100 and target.read_bytes() == bytes(range(100))
    actor.write_ranges(str(target), [200], [np.full(4, 9, np.uint8)])
    assert target.read_bytes()[200:] == b"\x09" * 4
    got = actor.read_files([str(target), str(tmp_path / "missing")])
    assert got[0][:100] == bytes(range(100)) and got[1] is None
    group = OpGroup([put_file(tmp_path / "a", b"hello"), get_ranges(tmp_path / "a")])
    ((_, idx, chunks, _, _),) = _collect(actor, group, 1 << 20)
    assert idx["length"][0] == 5 and chunks[0] == b""


def test_small_pool_does_not_deadlock(tmp_path: Path) -> None:
    """Results landing out of order must not hold the pool forever (spill)."""
    a = IOActor({"pool_bytes": "256K"}, ahead_bytes=4 << 20, ahead_ranges=4096)
    try:
        files = _files(tmp_path, [60_000] * 40)
        group = OpGroup([get_ranges(p) for p, _ in files])
        got = _collect(a, group, 100_000)
        assert [c for _, _, cs, _, _ in got for c in cs] == [d for _, d in files]
        assert a.stats()["engine"]["buffers_out"] == 0
    finally:
        a.shutdown()


def test_builder_oversized_chunk() -> None:
    made = []
    b = BatchBuilder(100, lambda idx, data, loc: made.append((idx, data.copy(), loc)) or 0)
    src = np.arange(300, dtype=np.uint8)
    comps = np.zeros(3, [("data", "<u8")])
    comps["data"] = [src.ctypes.data, src.ctypes.data + 50, src.ctypes.data + 250]
    idx = np.zeros(3, INDEX_DTYPE)
    idx["nbytes"] = [50, 200, 50]
    b.add(np.arange(3), comps, idx)
    b.flush()
    assert [len(d) for _, d, _ in made] == [50, 200, 50]
    assert made[1][1].tolist() == src[50:250].tolist()


def test_process_io_keeps_batches_until_recycled(tmp_path: Path) -> None:
    """In-process (recycle=False), every batch of a piece keeps its own buffer while the
    caller holds the batches; recycled buffers are reused by the next piece."""
    from lsio_ray.ray.pieces import close_process_io, process_io

    io = process_io({"pool_bytes": "1M"}, ahead_bytes=1 << 20)
    try:
        assert process_io({"pool_bytes": "1M"}, ahead_bytes=1 << 20) is io  # one per process
        files = _files(tmp_path, [20_000] * 30)
        group = OpGroup([get_ranges(p) for p, _ in files])
        ((_node, spec),) = split_runs(group, ["n"] * len(group.operations))
        batches = list(io.run(spec, 64 << 10))
        assert len(batches) > 3
        assert len({b.data.ctypes.data for b in batches}) == len(batches)  # none reused
        got = [b.view(i).tobytes() for b in batches for i in range(len(b))]
        assert got == [d for _, d in files]
        first = {
            b.data.base.ctypes.data if b.data.base is not None else b.data.ctypes.data
            for b in batches
        }
        io.recycle(batches)
        again = list(io.run(spec, 64 << 10))
        reused = {
            b.data.base.ctypes.data if b.data.base is not None else b.data.ctypes.data
            for b in again
        }
        assert reused & first  # the cache handed recycled buffers out again
        assert [b.view(i).tobytes() for b in again for i in range(len(b))] == got
        assert io.stats()["engine"]["buffers_out"] == 0
    finally:
        close_process_io()
    assert process_io({"pool_bytes": "1M"}, ahead_bytes=1 << 20) is not io
    close_process_io()
