"""The re-chunk task's decode of a block (:mod:`lsio_ray.zarr.blocks`), without Ray.

Batches are built here by hand from the files on disk, as the IO actor would send them;
the block, decoded sub-block by sub-block into one reused buffer, unit by unit, must
equal zarr-python's read of the same box on every layout the C decoder takes (units
merging chunks, decoded in place one unit at a time; units splitting them; units cutting
through them), and the Python path must be left to the codecs it does not take.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec

import lsio_ray.zarr as lz
from lsio_ray.ray.batches import INDEX_DTYPE, Batch
from lsio_ray.zarr.blocks import CBlock, decode_file, unit_pieces
from lsio_ray.zarr.errors import ChunkCorruptError, ShardIndexError
from lsio_ray.zarr.plan import select_chunks


def _data(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    a = (rng.normal(0, 1, shape) * 40).astype(dtype)
    a[tuple(slice(0, s // 3) for s in shape)] = 0  # all-fill chunks are not stored
    return a


def _make(path: Path, data: np.ndarray, **kw: Any) -> Any:
    z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, **kw)
    z[...] = data
    return lz.open(str(path)).layout


def _batches(lay: Any, blo: np.ndarray, bhi: np.ndarray, parts: int = 2) -> list[Batch]:
    """The files of the box ``[blo, bhi)``, read whole, in ``parts`` batches."""
    coords = select_chunks(blo, bhi, lay.file_shape).coords
    out = []
    for chunk in np.array_split(np.arange(len(coords)), parts):
        if not len(chunk):
            continue
        blobs, index = [], np.zeros(len(chunk), INDEX_DTYPE)
        pos = 0
        for k, i in enumerate(chunk.tolist()):
            path = lay.file_path(coords[i])
            index["op"][k] = k
            if os.path.exists(path):
                b = Path(path).read_bytes()
                blobs.append(b)
                index["start"][k], index["nbytes"][k], index["length"][k] = pos, len(b), len(b)
                pos += len(b)
            else:
                index["error"][k] = -errno.ENOENT
        paths = np.array([os.fsencode(lay.file_path(coords[i])) for i in chunk.tolist()])
        data = np.frombuffer(b"".join(blobs) or b"\0", np.uint8)[:pos].copy()
        data.flags.writeable = False  # object-store memory is read-only
        out.append(
            Batch(
                index=index,
                data=data,
                metadata=[tuple(int(x) for x in coords[i]) for i in chunk.tolist()],
                op_ids=np.arange(len(chunk), dtype=np.int64),
                paths=paths,
                kinds=np.zeros(len(chunk), np.int8),
                group_metadata=None,
                node_id="test",
                seq=len(out),
            )
        )
    return out


SENTINEL = 77


def _sentinel_buffer(shape: tuple[int, ...], dtype: Any, what: str) -> np.ndarray:
    return np.full(shape, SENTINEL, dtype)


def _decode(
    lay: Any, blo: np.ndarray, bhi: np.ndarray, unit: tuple[int, ...], batches: list[Batch]
) -> tuple[np.ndarray, CBlock]:
    """Decode through ``CBlock.subblocks`` and put the block back together; checks that
    every unit comes once and that edge units hold the fill value past the block's end.
    The reused buffer starts full of SENTINEL: a piece left undecoded shows."""
    ext = bhi - blo
    u = np.asarray(unit, np.int64)
    grid = tuple(int(x) for x in -(-ext // u))
    cb = CBlock(lay, blo, bhi, batches, unit, buffers=_sentinel_buffer)
    fill = lay.fill_value
    out = np.full(tuple(int(x) for x in ext), SENTINEL, lay.dtype)
    seen: set[tuple[int, ...]] = set()
    for first, units in cb.subblocks(lay.dtype, fill):
        assert units.shape[len(u) :] == unit
        for k in np.ndindex(*units.shape[: len(u)]):
            g = tuple(int(x) for x in first + np.asarray(k))
            assert g not in seen, f"unit {g} twice"
            seen.add(g)
            lo = np.asarray(g) * u
            hi = np.minimum(lo + u, ext)
            inside = tuple(slice(0, int(x)) for x in hi - lo)
            out[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))] = units[k][
                inside
            ]
            past = units[k].copy()
            past[inside] = fill
            assert (past == fill).all(), f"unit {g}: not the fill value past the block's end"
    assert seen == set(np.ndindex(*grid))
    return out, cb


BOXES = [((0, 0, 0), None), ((3, 5, 1), (37, 41, 7)), ((16, 0, 4), (32, 32, 8))]


@pytest.mark.parametrize(
    "kind",
    ["v3-zstd", "v3-sharded", "v2-blosc", "v2-raw-F"],
)
@pytest.mark.parametrize("box", range(len(BOXES)))
@pytest.mark.parametrize("unit", ["merging", "splitting", "cutting"])
def test_c_block_equals_zarr(tmp_path: Path, kind: str, box: int, unit: str) -> None:
    data = _data((40, 50, 8), "float32" if kind != "v2-raw-F" else "int16")
    kw: dict[str, Any] = {
        "v3-zstd": dict(chunks=(8, 9, 4), zarr_format=3, fill_value=0),
        "v3-sharded": dict(chunks=(8, 8, 4), shards=(16, 32, 8), zarr_format=3, fill_value=0),
        "v2-blosc": dict(
            chunks=(7, 9, 5),
            zarr_format=2,
            compressors=numcodecs.Blosc("zstd", 3, numcodecs.Blosc.SHUFFLE),
            fill_value=0,
        ),
        "v2-raw-F": dict(
            chunks=(11, 6, 3), zarr_format=2, order="F", compressors=None, fill_value=-1
        ),
    }[kind]
    lay = _make(tmp_path / "a.zarr", data, **kw)
    assert lay.codec.c_codec is not None
    files = sorted(
        p
        for p in (tmp_path / "a.zarr").rglob("*")
        if p.is_file() and not p.name.startswith((".", "zarr.json"))
    )
    files[len(files) // 2].unlink()  # a missing file is the fill value
    want_all = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[...]
    lo, hi = BOXES[box]
    blo = np.asarray(lo, np.int64)
    bhi = np.asarray(hi if hi is not None else data.shape, np.int64)
    # merging: two chunks deep, else the chunk's shape (whole chunks decode in place, a
    # unit at a time); splitting: half a chunk deep; cutting: a grid through the chunks
    ushape = {
        "merging": (2 * lay.chunks[0], *lay.chunks[1:]),
        "splitting": (max(1, lay.chunks[0] // 2), *lay.chunks[1:]),
        "cutting": (5, 7, 3),
    }[unit]
    out, cb = _decode(lay, blo, bhi, ushape, _batches(lay, blo, bhi))
    assert cb.nread > 0
    np.testing.assert_array_equal(
        out, want_all[tuple(slice(int(a), int(b)) for a, b in zip(blo, bhi, strict=True))]
    )
    if unit == "merging" and box != 1:  # unit-aligned blocks: one unit per sub-block
        assert cb.bshape == (1, 1, 1, *ushape)
    if unit == "splitting" and lay.chunks[0] % 2 == 0 and box != 1:  # a chunk's two units
        assert cb.bshape == (2, 1, 1, *ushape)


def test_python_path_for_other_codecs(tmp_path: Path) -> None:
    data = _data((20, 30), "int32")
    lay = _make(
        tmp_path / "g.zarr", data, chunks=(6, 7), zarr_format=3, compressors=GzipCodec(level=2)
    )
    blo, bhi = np.zeros(2, np.int64), np.asarray(data.shape, np.int64)
    assert lay.codec.c_codec is None
    with pytest.raises(ValueError, match="C decoder"):
        CBlock(lay, blo, bhi, _batches(lay, blo, bhi), (5, 6))
    out = np.zeros(data.shape, data.dtype)
    scratch = np.empty(lay.codec.nbytes, np.uint8)
    for batch in _batches(lay, blo, bhi):
        for i in range(len(batch)):
            if batch.index["error"][i]:  # a chunk of zeros, not stored: out is 0 already
                continue
            s, n = int(batch.index["start"][i]), int(batch.index["nbytes"][i])
            view = batch.data[s : s + n]
            coords = np.asarray(batch.metadata[i], np.int64)
            decode_file(lay, view, coords, out, blo, bhi, scratch)
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("sharded", [False, True])
def test_corrupt_chunk_is_named(tmp_path: Path, sharded: bool) -> None:
    data = _data((16, 32), "float64") + 1.0
    kw: dict[str, Any] = dict(chunks=(8, 8), zarr_format=3, compressors=BloscCodec(cname="lz4"))
    if sharded:
        kw["shards"] = (16, 16)
    lay = _make(tmp_path / "c.zarr", data, **kw)
    blo, bhi = np.zeros(2, np.int64), np.asarray(data.shape, np.int64)
    batches = _batches(lay, blo, bhi, parts=1)
    b = batches[0]
    data_rw = b.data.copy()
    # garble the second stored file's first chunk (past a start index for shards there
    # is none: zarr puts the index at the end)
    s = int(b.index["start"][1])
    data_rw[s + 3 : s + 40] ^= 0x5A
    b.data = data_rw
    with pytest.raises(ChunkCorruptError) as ei:
        _decode(lay, blo, bhi, (8, 8), batches)
    msg = str(ei.value)
    key = lay.key(np.asarray(b.metadata[1]))
    assert key in msg and str(tmp_path / "c.zarr") in msg
    if sharded:
        assert "inner chunk (0, 0)" in msg


def test_corrupt_shard_index_is_named(tmp_path: Path) -> None:
    data = _data((16, 32), "int64") + 5
    lay = _make(tmp_path / "s.zarr", data, chunks=(8, 8), shards=(16, 16), zarr_format=3)
    blo, bhi = np.zeros(2, np.int64), np.asarray(data.shape, np.int64)
    batches = _batches(lay, blo, bhi, parts=1)
    b = batches[0]
    d = b.data.copy()
    end = int(b.index["start"][0] + b.index["nbytes"][0])
    d[end - 20 : end - 4] = 0xFF  # the index's last entries (and its checksum)
    b.data = d
    with pytest.raises(ShardIndexError, match="corrupt index") as ei:
        _decode(lay, blo, bhi, (8, 8), batches)
    assert lay.key(np.asarray(b.metadata[0])) in str(ei.value)


def test_unit_pieces_tile_each_box() -> None:
    rng = np.random.default_rng(5)
    lo = rng.integers(0, 30, (40, 3))
    hi = lo + rng.integers(1, 25, (40, 3))
    unit = np.array([4, 7, 5])
    row, uidx, plo, phi = unit_pieces(lo, hi, unit)
    assert (np.diff(row) >= 0).all()  # pieces of a box are consecutive
    assert ((plo >= uidx * unit) & (phi <= (uidx + 1) * unit) & (plo < phi)).all()
    for i in range(len(lo)):
        mine = row == i
        vol = np.prod(phi[mine] - plo[mine], axis=1).sum()
        assert vol == np.prod(hi[i] - lo[i])  # disjoint (one per unit) and covering
        assert len({tuple(u) for u in uidx[mine]}) == mine.sum()


def test_worker_buffers_are_released_when_idle() -> None:
    import time

    from lsio_ray.ray.rechunk import block as r

    buf = r._buffer((16,), np.float32, "test")
    r._keep_buffers(0.2)
    assert r._buffer((16,), np.float32, "test") is buf  # kept for the next block
    r._keep_buffers(0.2)  # each block restarts the clock
    deadline = time.monotonic() + 5
    while r._SCRATCH and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not r._SCRATCH
    assert r._buffer((16,), np.float32, "test") is not buf


def test_python_path_sharded_and_its_corrupt_index(tmp_path: Path) -> None:
    """A sharded source the C decoder does not take (gzip inner chunks) goes through
    ``decode_file``; its shard index is checked the same way."""
    data = _data((16, 24), "int32") + 3
    lay = _make(
        tmp_path / "gs.zarr",
        data,
        chunks=(4, 6),
        shards=(8, 12),
        zarr_format=3,
        compressors=GzipCodec(level=1),
        fill_value=0,
    )
    assert lay.codec.c_codec is None
    blo, bhi = np.asarray([2, 3], np.int64), np.asarray([15, 22], np.int64)
    out = np.zeros(tuple(bhi - blo), data.dtype)
    scratch = np.empty(lay.codec.nbytes, np.uint8)
    batches = _batches(lay, blo, bhi, parts=1)
    b = batches[0]
    for i in range(len(b)):
        s, n = int(b.index["start"][i]), int(b.index["nbytes"][i])
        coords = np.asarray(b.metadata[i], np.int64)
        decode_file(lay, b.data[s : s + n], coords, out, blo, bhi, scratch)
    np.testing.assert_array_equal(out, data[2:15, 3:22])
    s, n = int(b.index["start"][0]), int(b.index["nbytes"][0])
    bad = b.data[s : s + n].copy()
    bad[-12:-4] = 0xFF  # the index's last entry
    with pytest.raises(ShardIndexError, match="corrupt index") as ei:
        decode_file(lay, bad, np.asarray(b.metadata[0]), out, blo, bhi, scratch)
    assert lay.key(np.asarray(b.metadata[0])) in str(ei.value)


def test_decode_chunks_takes_no_pool_buffers() -> None:
    """The engine-free entry refuses jobs that name pool buffers or are not one array."""
    from lsio_ray.io._core import DECODE_JOB_DTYPE, DecodeSpec, decode_chunks

    spec = DecodeSpec("raw", 16, 4, (4,), (4,))
    src = np.arange(4, dtype=np.float32)
    dst = np.zeros(4, np.float32)
    jobs = np.zeros(2, DECODE_JOB_DTYPE)
    jobs["src"], jobs["src_len"], jobs["dst"] = src.ctypes.data, 16, dst.ctypes.data
    jobs["dst_lo"], jobs["dst_len"] = dst.ctypes.data, dst.nbytes
    jobs["shape"][:, 0], jobs["direct"] = 4, 1
    assert decode_chunks(spec, jobs[:1].copy()) == 0
    np.testing.assert_array_equal(dst, src)
    jobs["buf_id"][1] = 7
    with pytest.raises(ValueError, match="pool buffers"):
        decode_chunks(spec, jobs)
    with pytest.raises(ValueError, match="C-contiguous"):
        decode_chunks(spec, np.zeros(4, DECODE_JOB_DTYPE)[::2])
    short = jobs[:1].copy()
    short["src_len"] = 12  # raw bytes of the wrong size: a status, not a crash
    assert decode_chunks(spec, short) == 1 and short["status"][0] != 0


def test_random_blocks_decode_by_sub_block(tmp_path: Path) -> None:
    """Random arrays, chunk and unit shapes, blocks placed as the planner places them
    (whole units, at a multiple of the block shape): reassembled from its sub-blocks,
    every block equals the array, and every sub-block is no bigger than the lcm grid."""
    rng = np.random.default_rng(11)
    for case in range(24):
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(x) for x in rng.integers(3, 30, ndim))
        chunks = tuple(int(rng.integers(1, s + 1)) for s in shape)
        unit = tuple(int(rng.integers(1, s + 1)) for s in shape)
        data = _data(shape, "int32") + case
        lay = _make(tmp_path / f"r{case}.zarr", data, chunks=chunks, zarr_format=3)
        block = tuple(u * int(rng.integers(1, 4)) for u in unit)
        grid = tuple(-(-s // b) for s, b in zip(shape, block, strict=True))
        bid = int(rng.integers(0, int(np.prod(grid))))
        coords = np.array(np.unravel_index(bid, grid), np.int64).reshape(-1)
        blo = coords * np.asarray(block)
        bhi = np.minimum(blo + np.asarray(block), np.asarray(shape))
        out, cb = _decode(lay, blo, bhi, unit, _batches(lay, blo, bhi))
        want = data[tuple(slice(int(a), int(b)) for a, b in zip(blo, bhi, strict=True))]
        np.testing.assert_array_equal(out, want, err_msg=f"case {case}")
        lcm = [np.lcm(c, u) // u for c, u in zip(chunks, unit, strict=True)]
        assert all(g <= m for g, m in zip(cb.bshape[:ndim], lcm, strict=True)), case
