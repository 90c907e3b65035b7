"""Cluster-wide Zarr re-chunking and format conversion, resumable.

>>> import lsio_ray
>>> lsio_ray.rechunk("in.zarr", "out.zarr", chunks=(64, 256, 256), shards=(64, 1024, 1024),
...                  codec="zstd:3", zarr_format=3)

Any layout to any other: Zarr v2 or v3, sharded or not, any chunk shape, any codec.
zarr-python parses and writes the metadata documents and its codec objects (numcodecs)
decode and encode; the C decoder decodes raw, zstd and blosc inputs.

**Plan.**  The output is made in *blocks*: boxes that hold whole output units (chunks,
or shards when sharded) and, where memory allows, whole input files too -- per axis the
least common multiple of the input file and output unit shapes, halved on the axis with
the most units until one block's decoded bytes fit ``block_bytes``, or doubled on the
axis with the most room while they still fit and the array still makes four blocks per
CPU of the cluster (each block costs a Ray task and an op group: several ms of CPU,
which small blocks of one output chunk did not amortise).  Each block is one
op group (every input file it touches, read whole) and one Ray task: decode the inputs
(in C for raw, zstd and blosc chunks, one call per sub-block: the smallest box of whole
units that no input chunk crosses, e.g. one output chunk when chunks are merged;
numcodecs into the whole block for the rest), encode each output unit, and write the
encoded units a few MiB at a time.  Missing input
chunk files are the fill value, as Zarr says; output units that are all fill value are
not written (zarr-python's ``write_empty_chunks=False``), nor are empty inner chunks of
a shard.

**Where the IO runs** (``io=``).  With ``"auto"`` (the default) a block whose input files
are all on one node, or all on shared storage, is read by its own task, on that node,
through the worker's in-process IO service (:func:`~lsio_ray.ray.actor.process_io`),
and its units are written the same way when the output is on that node or shared
(else through the output node's IO actor): nothing crosses the object store.  Blocks
whose inputs span nodes, and every block with ``"actors"``, are read by the IO actors
of the nodes holding the files (the coordinator's ordered ObjectRef streams) and
written through the output node's IO actor.

**Memory.**  At most one task per core runs; with ``io="actors"`` at most ``window``
more blocks are being read, their batches in the object store.  A task holds its
block's stored inputs, one sub-block decoded (C path; the whole block on the numcodecs
path) and at most ~8 MiB of encoded units not yet written.  What stays resident is
more: each worker is a Python process with numpy and zarr loaded, and keeps its buffers
and IO engine for the next block (released 3 s after its last); the object store keeps
the pages its objects touched.  The driver reads the metadata and keeps the journal
itself when they are on its node (or shared), so a job whose blocks all do their own IO
starts no IO actor.  Measured on the 2 GiB benchmark job (64 MiB blocks, 2 CPUs), the
node's processes peaked ~180 MiB above an idle Ray cluster with ``io="auto"``, ~700 MiB
with ``io="actors"`` (much of it object store pages; BENCHMARKS.md, issue 4).

**Resume.**  Each output unit is written atomically (temp file, rename).  When a block's
units are all written, its number is appended to a journal
(``DST/.lsio-rechunk/done``, 16-byte records carrying a check word, so a torn tail is
ignored).  Run again after an interruption, the job skips the blocks in the journal and
redoes the others whole; encoding is deterministic, so the result is byte-identical to
an uninterrupted run.  The metadata documents are written last, so an unfinished
destination is never mistaken for an array; then the journal is removed.  A destination
that exists and is not an unfinished run of the same job is refused unless
``overwrite=True``.  A destination that is the source, lies inside it or holds it
(symbolic links resolved, links inside the destination tree included) is always refused,
before Ray starts and before anything is removed or written.
"""

from __future__ import annotations

import collections
import errno
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsio_ray import config
from lsio_ray.ops import Operation, OpGroup, get_ranges
from lsio_ray.paths import check_disjoint
from lsio_ray.ray.batches import Batch
from lsio_ray.ray.coordinator import Coordinator, is_system_error, root_cause
from lsio_ray.ray.errors import RayLayerError
from lsio_ray.ray.tasks import on_node

__all__ = ["RechunkError", "RechunkResult", "block_shape", "parse_codec", "rechunk"]

STATE_DIR = ".lsio-rechunk"
_MAGIC = np.uint64(0x6C73696F72636B31)  # "lsiorck1"
_JOB_VERSION = 1


class RechunkError(RayLayerError):
    """The conversion failed; the message names the block, and the file and node when
    an input was at fault."""


@dataclass
class RechunkResult:
    """What a :func:`rechunk` run did."""

    src: str
    dst: str
    shape: tuple[int, ...]
    block: tuple[int, ...]
    blocks: int
    blocks_skipped: int
    units_written: int
    bytes_read: int
    bytes_written: int
    seconds: float
    retries: int
    bytes_read_by_node: dict[str, int] = field(default_factory=dict)
    """Chunk bytes read per node (the metadata documents, read by the IO actors, are
    not counted)."""
    blocks_in_task: int = 0
    """Blocks whose task did its own IO (``io="auto"``); the others went through the
    IO actors' streams."""


# -- codecs ------------------------------------------------------------------------------

_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def parse_codec(text: str | None, zarr_format: int) -> dict[str, Any]:
    """``create_array`` keyword arguments for a codec spec.

    ``zstd[:LEVEL]``, ``gzip[:LEVEL]``, ``blosc[:CNAME[:LEVEL[:SHUFFLE]]]`` (SHUFFLE one of
    noshuffle, shuffle, bitshuffle), ``lz4`` (v2 only), ``none``; None keeps zarr-python's
    default for the format."""
    if text is None:
        return {}
    parts = text.strip().lower().split(":")
    name, args = parts[0], parts[1:]

    def level(default: int) -> int:
        try:
            return int(args[0]) if args and args[0] else default
        except ValueError:
            raise ValueError(f"codec {text!r}: level {args[0]!r} is not an integer") from None

    if name == "none":
        return {"compressors": None}
    if zarr_format == 3:
        import zarr.codecs as zc

        if name == "zstd":
            return {"compressors": [zc.ZstdCodec(level=level(3))]}
        if name == "gzip":
            return {"compressors": [zc.GzipCodec(level=level(5))]}
        if name == "blosc":
            cname = args[0] if args and args[0] else "zstd"
            clevel = int(args[1]) if len(args) > 1 else 5
            shuffle = args[2] if len(args) > 2 else "shuffle"
            if shuffle not in _SHUFFLES:
                raise ValueError(f"codec {text!r}: shuffle must be one of {sorted(_SHUFFLES)}")
            return {"compressors": [zc.BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle)]}
    else:
        import numcodecs

        if name == "zstd":
            return {"compressors": numcodecs.Zstd(level=level(3))}
        if name == "gzip":
            return {"compressors": numcodecs.GZip(level=level(5))}
        if name == "lz4":
            return {"compressors": numcodecs.LZ4(acceleration=level(1))}
        if name == "blosc":
            cname = args[0] if args and args[0] else "zstd"
            clevel = int(args[1]) if len(args) > 1 else 5
            shuffle = args[2] if len(args) > 2 else "shuffle"
            if shuffle not in _SHUFFLES:
                raise ValueError(f"codec {text!r}: shuffle must be one of {sorted(_SHUFFLES)}")
            return {
                "compressors": numcodecs.Blosc(
                    cname=cname, clevel=clevel, shuffle=_SHUFFLES[shuffle]
                )
            }
    raise ValueError(
        f"unknown codec {text!r} for Zarr v{zarr_format} "
        "(zstd[:L], gzip[:L], blosc[:CNAME[:L[:SHUFFLE]]], lz4 (v2), none)"
    )


# -- planning ----------------------------------------------------------------------------


def block_shape(
    shape: Sequence[int],
    src_file: Sequence[int],
    dst_unit: Sequence[int],
    itemsize: int,
    budget: int,
    min_blocks: int = 1,
) -> tuple[int, ...]:
    """The block shape: whole output units, aligned with the input files, as close to
    ``budget`` decoded bytes as the array allows while it still makes ``min_blocks``
    blocks (see the module's docstring)."""
    block = []
    caps = []
    for n, s, t in zip(shape, src_file, dst_unit, strict=True):
        b = math.lcm(int(s), int(t))
        cap = -(-max(int(n), 1) // int(t)) * int(t)  # the array's extent in whole units
        caps.append(cap)
        block.append(max(int(t), min(b, cap)))

    def nbytes(blk: list[int]) -> int:
        return int(np.prod(blk, dtype=np.int64)) * itemsize

    while nbytes(block) > budget:
        cands = [d for d in range(len(block)) if block[d] > dst_unit[d]]
        if not cands:
            break
        d = max(cands, key=lambda k: block[k] // dst_unit[k])
        units = block[d] // dst_unit[d]
        block[d] = int(dst_unit[d]) * max(1, units // 2)
    # grow small blocks (e.g. one output chunk of a few MiB): each block costs a Ray
    # task and an op group, several ms of CPU that big blocks amortise (BENCHMARKS.md)
    while True:
        cands = [
            d
            for d in range(len(block))
            if block[d] < caps[d]
            and nbytes(block) * 2 <= budget
            and math.prod(_ceil_div(shape, [*block[:d], block[d] * 2, *block[d + 1 :]]))
            >= min_blocks
        ]
        if not cands:
            break
        d = max(cands, key=lambda k: (caps[k] / block[k], -k))
        block[d] = min(block[d] * 2, caps[d])
    return tuple(block)


def _ceil_div(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-int(x) // int(y)) for x, y in zip(a, b, strict=True))


def _block_box(
    bid: int, grid: tuple[int, ...], block: tuple[int, ...], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    coords = (
        np.array(np.unravel_index(bid, grid), dtype=np.int64).reshape(-1)
        if grid
        else (np.zeros(0, np.int64))
    )
    lo = coords * np.asarray(block, dtype=np.int64)
    hi = np.minimum(lo + np.asarray(block, dtype=np.int64), np.asarray(shape, dtype=np.int64))
    return lo, hi


# -- layouts (driver and workers) --------------------------------------------------------

_LAYOUTS: dict[str, Any] = {}


def _layout(root: str, docs: dict[str, Any]) -> Any:
    """An ArrayLayout from metadata documents (cached per process)."""
    from lsio_ray.zarr._zarr_compat import parse_metadata
    from lsio_ray.zarr.layout import ArrayLayout

    key = root + "\0" + json.dumps(docs, sort_keys=True)
    lay = _LAYOUTS.get(key)
    if lay is None:
        lay = ArrayLayout(root, parse_metadata(root, docs))
        _LAYOUTS[key] = lay
    return lay


def _is_fill(a: np.ndarray, fill: np.ndarray) -> bool:
    # the first element settles it for almost every unit of real data; only a unit that
    # starts with the fill value pays for the full comparison
    # (a one-element view: reshape(-1) would copy a non-contiguous unit, e.g. an inner
    # chunk cut out of a shard)
    if a.size and not _same(a[(slice(0, 1),) * a.ndim], fill):
        return False
    return _same(a, fill)


def _same(a: np.ndarray, fill: np.ndarray) -> bool:
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, np.broadcast_to(fill, a.shape), equal_nan=True))
    return bool((a == fill).all())


_SCRATCH: dict[tuple[Any, ...], np.ndarray] = {}
_SCRATCH_TTL = 3.0  # seconds a worker keeps its buffers after its last block
_scratch_timer: threading.Timer | None = None
_scratch_lock = threading.Lock()


def _buffer(shape: tuple[int, ...], dtype: Any, what: str) -> np.ndarray:
    """A buffer of ``shape`` reused by the blocks a worker process runs one after the
    other (fresh 64 MiB blocks cost ~10% of a task in page faults); released
    ``_SCRATCH_TTL`` seconds after the worker's last block (:func:`_keep_buffers`)."""
    key = (what, shape, np.dtype(dtype).str)
    with _scratch_lock:
        buf = _SCRATCH.get(key)
        if buf is None:
            if len(_SCRATCH) > 8:  # a few shapes per job (edge blocks); never grow unbounded
                _SCRATCH.clear()
            buf = _SCRATCH[key] = np.empty(shape, dtype=dtype)
    return buf


_scratch_busy = False


def _drop_buffers() -> None:
    from lsio_ray.ray.actor import close_process_io

    with _scratch_lock:
        if _scratch_busy:  # a block started meanwhile: it keeps them
            return
        _SCRATCH.clear()
        close_process_io()


def _hold_buffers() -> None:
    """A block starts: its worker's buffers (and in-process IO) must not be dropped
    under it by the timer of the previous block."""
    global _scratch_busy, _scratch_timer
    with _scratch_lock:
        _scratch_busy = True
        if _scratch_timer is not None:
            _scratch_timer.cancel()
            _scratch_timer = None


def _keep_buffers(ttl: float | None = None) -> None:
    """Keep this worker's buffers for the next block, at most ``ttl`` seconds: an idle
    worker does not hold a block's worth of memory after the job."""
    global _scratch_busy, _scratch_timer
    with _scratch_lock:
        _scratch_busy = False
        if _scratch_timer is not None:
            _scratch_timer.cancel()
        _scratch_timer = threading.Timer(_SCRATCH_TTL if ttl is None else ttl, _drop_buffers)
        _scratch_timer.daemon = True
        _scratch_timer.start()


def _paste(
    out: np.ndarray, lo: np.ndarray, hi: np.ndarray, arr: np.ndarray, arr_lo: np.ndarray
) -> None:
    """Copy the part of ``arr`` (whose origin is ``arr_lo``) inside ``[lo, hi)`` (block
    ``out``'s origin is ``lo``... clipped to arr's extent)."""
    a = np.maximum(lo, arr_lo)
    b = np.minimum(hi, arr_lo + np.asarray(arr.shape, dtype=np.int64))
    if np.any(b <= a):
        return
    dst = tuple(slice(int(x), int(y)) for x, y in zip(a - lo, b - lo, strict=True))
    src = tuple(slice(int(x), int(y)) for x, y in zip(a - arr_lo, b - arr_lo, strict=True))
    out[dst] = arr[src]


def _shard_table(src: Any, view: np.ndarray, key: str) -> np.ndarray:
    """The decoded index (offset, length per inner chunk) of one stored shard whose bytes
    are ``view``; a short shard or a bad index raises
    :class:`~lsio_ray.zarr.errors.ChunkCorruptError` naming ``key``."""
    from lsio_ray.zarr.codecs import CorruptData
    from lsio_ray.zarr.errors import ChunkCorruptError
    from lsio_ray.zarr.shards import check_index

    idx = src.index
    nb = view.nbytes
    if nb < idx.nbytes:
        raise ChunkCorruptError(src.path, key, f"shard of {nb} bytes is shorter than its index")
    raw = view[: idx.nbytes] if idx.location == "start" else view[nb - idx.nbytes :]
    try:
        table = idx.decode(raw)
    except CorruptData as exc:  # e.g. the index's crc32c
        raise ChunkCorruptError(src.path, key, f"shard index: {exc}") from None
    why = check_index(table, idx, nb)
    if why:
        raise ChunkCorruptError(src.path, key, f"shard index: {why}")
    return table


def _decode_file(
    src: Any,
    view: np.ndarray,
    coords: np.ndarray,
    out: np.ndarray,
    blo: np.ndarray,
    bhi: np.ndarray,
    scratch: np.ndarray,
    path: str,
) -> None:
    """Decode the part of one stored input object (chunk or shard) inside the block."""
    from lsio_ray.zarr.codecs import CorruptData
    from lsio_ray.zarr.errors import ChunkCorruptError
    from lsio_ray.zarr.plan import select_chunks
    from lsio_ray.zarr.shards import EMPTY

    file_shape = np.asarray(src.file_shape, dtype=np.int64)
    flo = coords * file_shape
    key = os.path.relpath(path, src.path)
    try:
        if src.shards is None:
            arr = src.codec.decode(view, scratch)
            _paste(out, blo, bhi, arr, flo)
            return
        table = _shard_table(src, view, key)
        a = np.maximum(blo, flo) - flo
        b = np.minimum(bhi, np.minimum(flo + file_shape, np.asarray(src.shape))) - flo
        sel = select_chunks(a, b, src.chunks)
        inner = np.asarray(src.chunks, dtype=np.int64)
        cps = src.chunks_per_shard
        for c in sel.coords:
            k = int(np.ravel_multi_index(tuple(int(x) for x in c), cps)) if cps else 0
            off, nb = table[k]
            origin = flo + c * inner
            if off == EMPTY:
                fill = np.broadcast_to(src.fill_value, tuple(int(x) for x in inner))
                _paste(out, blo, bhi, fill, origin)
                continue
            piece = view[int(off) : int(off) + int(nb)]
            arr = src.codec.decode(piece, scratch)
            _paste(out, blo, bhi, arr, origin)
    except CorruptData as exc:
        raise ChunkCorruptError(src.path, key, str(exc)) from None


def _unit_pieces(
    lo: np.ndarray, hi: np.ndarray, unit: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut boxes ``[lo[i], hi[i])`` (block coordinates, one row each) along the output
    unit grid: returns ``(row, uidx, plo, phi)`` -- for each piece the box it came from,
    its unit's grid index and its bounds (block coordinates).  Pieces of one box are
    consecutive."""
    n, ndim = lo.shape
    u0 = lo // unit
    counts = (hi - 1) // unit - u0 + 1
    per = counts.prod(axis=1) if ndim else np.ones(n, np.int64)
    row = np.repeat(np.arange(n, dtype=np.int64), per)
    local = np.arange(len(row), dtype=np.int64) - np.repeat(np.cumsum(per) - per, per)
    uidx = np.empty((len(row), ndim), np.int64)
    for d in range(ndim - 1, -1, -1):
        c = counts[row, d]
        uidx[:, d] = u0[row, d] + local % c
        local //= c
    plo = np.maximum(lo[row], uidx * unit)
    phi = np.minimum(hi[row], (uidx + 1) * unit)
    return row, uidx, plo, phi


def _c_decodable(src: Any) -> bool:
    """Whether the C decoder takes this source's chunks (raw, zstd, blosc; 1-8 dims)."""
    codec = src.codec
    return codec.c_codec is not None and 0 < len(codec.shape) <= 8 and src.ndim == len(codec.shape)


def _chunk_sources(
    src: Any, sel: Any, blo: np.ndarray, bhi: np.ndarray, batches: Sequence[Batch]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Where each stored chunk ``sel`` selects in the block lies in ``batches``: its
    address and length (unsharded: the file; sharded: the inner chunk, through the
    shard's index), whether it is the fill value (a missing file, an empty inner chunk),
    and the stored bytes read.  A file that failed otherwise raises its error; a chunk no
    batch holds raises :class:`RechunkError`."""
    from lsio_ray.zarr.plan import select_chunks
    from lsio_ray.zarr.shards import EMPTY

    ndim = len(blo)
    n = len(sel)
    # per stored chunk: where its bytes are (0: a fill chunk), and that it was read
    src_addr = np.zeros(n, np.uint64)
    src_len = np.zeros(n, np.uint64)
    have = np.zeros(n, bool)
    is_fill = np.zeros(n, bool)
    c0 = sel.coords[0] if n else np.zeros(ndim, np.int64)
    counts = tuple(int(x) for x in (sel.coords.max(axis=0) - c0 + 1)) if n else ()

    def rows_of(coords: np.ndarray) -> np.ndarray:
        return np.ravel_multi_index(tuple((coords - c0).T), counts).astype(np.int64)

    nread = 0
    fshape = np.asarray(src.file_shape, dtype=np.int64)
    for batch in batches:
        nb_items = len(batch)
        if not nb_items:
            continue
        errs = batch.index["error"]
        starts = batch.index["start"]
        sizes = batch.index["nbytes"]
        fcoords = np.asarray(batch.metadata, dtype=np.int64).reshape(nb_items, ndim)
        for i in np.flatnonzero(errs != 0).tolist():
            if int(errs[i]) != -errno.ENOENT:  # a missing file is the fill value
                raise batch.error(i)  # type: ignore[misc]
        base = batch.data.ctypes.data
        if src.shards is None:
            ok = errs == 0
            rows = rows_of(fcoords)
            src_addr[rows[ok]] = base + starts[ok]
            src_len[rows[ok]] = sizes[ok]
            have[rows] = True
            is_fill[rows[~ok]] = True
            nread += int(sizes[ok].sum())
            continue
        cps = np.asarray(src.chunks_per_shard, dtype=np.int64)
        for i in range(nb_items):
            # the inner chunks of this shard that lie in the block
            flo = fcoords[i] * fshape
            a = np.maximum(blo, flo)
            b = np.minimum(np.minimum(bhi, flo + fshape), np.asarray(src.shape))
            ssel = select_chunks(a, b, src.chunks)
            rows = rows_of(ssel.coords)
            have[rows] = True
            if errs[i]:
                is_fill[rows] = True
                continue
            nb = int(sizes[i])
            nread += nb
            view = batch.data[int(starts[i]) : int(starts[i]) + nb]
            table = _shard_table(src, view, str(src.key(fcoords[i])))
            k = np.ravel_multi_index(tuple((ssel.coords - fcoords[i] * cps).T), tuple(cps))
            off = table[k, 0]
            empty = off == EMPTY
            src_addr[rows[~empty]] = base + int(starts[i]) + off[~empty].astype(np.int64)
            src_len[rows[~empty]] = table[k, 1][~empty]
            is_fill[rows[empty]] = True
    if not have.all():
        missing = src.chunk_key(sel.coords[int(np.flatnonzero(~have)[0])])
        raise RechunkError(f"{src.path}: chunk {missing} of a block was not read")
    return src_addr, src_len, is_fill, nread


class _CBlock:
    """A block's input chunks, resolved from its batches, decoded sub-block by sub-block
    with the C decoder (:func:`lsio_ray._core.decode_chunks`: one call per sub-block, no
    GIL, a reused zstd context, no Python per chunk).

    The block is cut into *sub-blocks*: the smallest boxes of whole output units that no
    input chunk crosses (per axis, the least common multiple of the chunk and unit
    shapes, counted from the array's origin; the whole block when that is larger).
    :meth:`subblocks` decodes one at a time into a buffer of the worker's laid out unit
    by unit (unit grid + unit shape, C order), so each unit is one contiguous array to
    encode where it lies, and a stored chunk that fits in a unit with the unit's own
    strides (e.g. (1,256,256) chunks into (16,256,256) units) is decoded straight into
    place (no scratch, no box copy).  A merge of chunks into bigger units decodes one
    unit at a time: the worker holds one unit, not the block (64 MiB), and the unit is
    still in cache when it is encoded.  Every chunk is decoded once (a chunk crossing
    the block's own edge is decoded by each block it touches, as before).

    ``nread``: the stored bytes of the block's inputs.  Missing files and empty inner
    chunks of a shard are the fill value; past the array's end, edge units hold the
    fill value.  A corrupt chunk or shard index raises
    :class:`~lsio_ray.zarr.errors.ChunkCorruptError` naming it.  Ownership: the jobs
    point into the batches' buffers, which the caller keeps until the last sub-block is
    decoded; nothing is kept after :meth:`subblocks` returns.
    """

    def __init__(
        self,
        src: Any,
        blo: np.ndarray,
        bhi: np.ndarray,
        batches: Sequence[Batch],
        unit: Sequence[int],
    ) -> None:
        from lsio_ray._core import DECODE_JOB_DTYPE, DecodeSpec
        from lsio_ray.zarr.plan import select_chunks

        if not _c_decodable(src):
            raise ValueError(f"{src.path}: the C decoder does not take this array's chunks")
        codec = src.codec
        self.src = src
        ndim = len(blo)
        self.ushape = ushape = np.asarray(unit, dtype=np.int64)
        self.ext = ext = np.asarray(bhi, np.int64) - np.asarray(blo, np.int64)
        self.ugrid = ugrid = np.asarray(_ceil_div(ext, ushape), dtype=np.int64)
        inner = np.asarray(src.chunks, dtype=np.int64)
        sel = select_chunks(blo, bhi, src.chunks)
        self.sel = sel
        src_addr, src_len, is_fill, self.nread = _chunk_sources(src, sel, blo, bhi, batches)

        # the sub-block grid (units per sub-block, and where the block's first unit lies
        # in its sub-block: sub-blocks are counted from the array's origin)
        lcm = np.array([math.lcm(int(a), int(b)) for a, b in zip(inner, ushape, strict=True)])
        self.sg = sg = np.minimum(lcm // ushape, np.maximum(ugrid, 1))
        shift = (np.asarray(blo, np.int64) // ushape) % sg
        self.shift = shift
        self.sgrid = _ceil_div(ugrid + shift, sg)

        # the chunks cut along the unit grid: one job per piece, sorted by sub-block
        lo = sel.coords * inner - blo + sel.src_lo  # block coordinates of each chunk's part
        hi = sel.coords * inner - blo + sel.src_hi
        row, uidx, plo, phi = _unit_pieces(lo, hi, ushape)
        sub = (uidx + shift) // sg
        sid = np.ravel_multi_index(tuple(sub.T), self.sgrid).astype(np.int64)
        order = np.argsort(sid, kind="stable")
        row, uidx, plo, phi, sid, sub = (x[order] for x in (row, uidx, plo, phi, sid, sub))
        nsub = int(np.prod(self.sgrid, dtype=np.int64))
        fill_p = is_fill[row]
        self.fill_sid = sid[fill_p]
        self.fill_uidx, self.fill_plo, self.fill_phi = uidx[fill_p], plo[fill_p], phi[fill_p]
        keep = ~fill_p
        row, uidx, plo, phi, sid, sub = (x[keep] for x in (row, uidx, plo, phi, sid, sub))
        self.bounds = np.searchsorted(sid, np.arange(nsub + 1))
        self.fill_bounds = np.searchsorted(self.fill_sid, np.arange(nsub + 1))
        # the buffer: one sub-block, unit by unit; a piece's place in it
        self.bshape = (*(int(x) for x in sg), *(int(x) for x in ushape))
        itemsize = codec.dtype.itemsize
        ustr = np.zeros(ndim, np.int64)
        gstr = np.zeros(ndim, np.int64)
        acc = itemsize
        for d in range(ndim - 1, -1, -1):
            ustr[d] = acc
            acc *= int(ushape[d])
        for d in range(ndim - 1, -1, -1):
            gstr[d] = acc
            acc *= int(sg[d])
        cstr = np.asarray(codec.chunk_strides, dtype=np.int64)
        self.spec = DecodeSpec(
            codec.c_codec, codec.nbytes, itemsize, codec.chunk_strides, tuple(int(x) for x in ustr)
        )
        # block-relative index of each piece's sub-block's first unit
        u0 = np.maximum(sub * sg - shift, 0)
        jobs = np.zeros(len(row), DECODE_JOB_DTYPE)
        jobs["src"] = src_addr[row]
        jobs["src_len"] = src_len[row]
        jobs["dst"] = ((uidx - u0) * gstr).sum(axis=1) + ((plo - uidx * ushape) * ustr).sum(
            axis=1
        )  # the buffer's address is added by subblocks()
        origin = sel.coords[row] * inner - blo  # block coordinates of each chunk's origin
        jobs["src_off"] = ((plo - origin) * cstr).sum(axis=1)
        jobs["shape"][:, :ndim] = phi - plo
        jobs["tag"] = row
        big = inner > 1
        whole = ((phi - plo) == inner).all(axis=1)
        jobs["direct"] = whole & bool((ustr[big] == cstr[big]).all())
        self.jobs = jobs

    def subblocks(self, dtype: Any, fill: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decode the sub-blocks one after the other, each into the same buffer (of the
        worker's, reused by its next block), and yield ``(first, units)``: the block
        grid index of its first unit, and its units (shape: the sub-block's unit grid +
        the unit shape).  ``units`` is valid until the next one is asked for."""
        from lsio_ray._core import DEC_OK, DEC_SKIPPED, decode_chunks, decode_error, extent
        from lsio_ray.zarr.errors import ChunkCorruptError

        src = self.src
        buf = _buffer(self.bshape, dtype, "units")
        base = np.uint64(buf.ctypes.data)
        bounds = extent(buf)  # the C decoder refuses a box reaching outside ``buf``
        for s in range(int(np.prod(self.sgrid, dtype=np.int64))):
            sc = np.asarray(np.unravel_index(s, self.sgrid), dtype=np.int64).reshape(-1)
            first = np.maximum(sc * self.sg - self.shift, 0)
            last = np.minimum((sc + 1) * self.sg - self.shift, self.ugrid)
            units = buf[tuple(slice(0, int(x)) for x in last - first)]
            for k in np.ndindex(*(int(x) for x in last - first)):
                if ((first + np.asarray(k, np.int64) + 1) * self.ushape > self.ext).any():
                    units[k] = fill  # an edge unit: past the array's end is fill
            f0, f1 = int(self.fill_bounds[s]), int(self.fill_bounds[s + 1])
            for p in range(f0, f1):
                u = self.fill_uidx[p]
                box = tuple(
                    slice(int(x), int(y))
                    for x, y in zip(
                        self.fill_plo[p] - u * self.ushape,
                        self.fill_phi[p] - u * self.ushape,
                        strict=True,
                    )
                )
                units[tuple(int(x) for x in u - first)][box] = fill
            j0, j1 = int(self.bounds[s]), int(self.bounds[s + 1])
            if j1 > j0:
                jobs = self.jobs[j0:j1].copy()
                jobs["dst"] += base
                jobs["dst_lo"], jobs["dst_len"] = bounds
                # Ownership: every src points into a batch the caller holds, every dst
                # into ``buf``, held here; the decoder keeps no pointer after it returns.
                if decode_chunks(self.spec, jobs):
                    status = jobs["status"]
                    bad = jobs[(status != DEC_OK) & (status != DEC_SKIPPED)][0]
                    raise ChunkCorruptError(
                        src.path,
                        src.chunk_key(self.sel.coords[int(bad["tag"])]),
                        f"cannot decode: {decode_error(self.spec, bad)}",
                    )
            yield first, units


def _c_order(a: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into a 1-d one
    return a if a.flags.c_contiguous else a.copy(order="C")


def _encode_unit(dst: Any, unit: np.ndarray) -> np.ndarray | None:
    """The stored bytes of one full output unit, or None if it is all fill value."""
    fill = dst.fill_value
    if _is_fill(unit, fill):
        return None
    if dst.shards is None:
        return dst.codec.encode(_c_order(unit))
    idx = dst.index
    inner = tuple(int(c) for c in dst.chunks)
    cps = dst.chunks_per_shard
    n = int(np.prod(cps, dtype=np.int64))
    table = np.full((n, 2), np.uint64(2**64 - 1), dtype=np.uint64)
    parts: list[np.ndarray] = []
    pos = idx.nbytes if idx.location == "start" else 0
    for k in range(n):
        c = np.unravel_index(k, cps) if cps else ()
        box = tuple(slice(int(i) * s, (int(i) + 1) * s) for i, s in zip(c, inner, strict=True))
        chunk = unit[box]
        if _is_fill(chunk, fill):
            continue
        enc = dst.codec.encode(_c_order(chunk))
        table[k] = (pos, enc.nbytes)
        parts.append(enc)
        pos += enc.nbytes
    index = idx.encode(table)
    body = [index, *parts] if idx.location == "start" else [*parts, index]
    return np.concatenate(body) if body else np.zeros(0, np.uint8)


def _block_ops(
    src: Any, grid: Sequence[int], block: Sequence[int], bid: int, direct: bool = False
) -> list[Operation]:
    """The reads of block ``bid``: every input file it touches, whole, each carrying its
    file-grid coordinates as metadata (``direct``: with O_DIRECT)."""
    from lsio_ray.zarr.plan import select_chunks

    lo, hi = _block_box(bid, grid, block, src.shape)
    coords = select_chunks(lo, hi, tuple(int(x) for x in src.file_shape)).coords
    return [
        get_ranges(src.file_path(c), metadata=coords[i : i + 1], direct=direct)
        for i, c in enumerate(coords.tolist())
    ]


def _local_engine(coord: Coordinator, src: Any) -> dict[str, Any]:
    """Engine settings for a worker's in-process IO: the IO actors' settings, with a
    pool of at least 32 MiB and four times the largest input file can be (each is read
    whole; a compressed chunk can be a little bigger than its decoded bytes)."""
    settings = dict(coord.engine_settings or {})
    nbytes = int(np.prod(src.file_shape, dtype=np.int64)) * src.dtype.itemsize
    bound = nbytes + nbytes // 64 + (1 << 20)
    settings["pool_bytes"] = max(32 << 20, 1 << (4 * bound - 1).bit_length())
    return settings


def _rechunk_block(
    job: dict[str, Any], bid: int, in_task: bool, *batches: Batch
) -> tuple[int, int, int, int, dict[str, int]]:
    """One block (a Ray task): decode its inputs, encode and write its output units.

    ``in_task``: the task reads the block's input files itself, through this worker's
    in-process IO service (:func:`~lsio_ray.ray.actor.process_io`), and writes its units
    the same way when the output is on this node; else ``batches`` are the block's
    inputs as the IO actors streamed them, and the units go to the output's IO actor.
    Returns (block, units written, bytes read, bytes written, bytes read per node)."""
    _hold_buffers()
    try:
        return _run_block(job, bid, in_task, batches)
    finally:
        _keep_buffers()


def _run_block(
    job: dict[str, Any], bid: int, in_task: bool, batches: Sequence[Batch]
) -> tuple[int, int, int, int, dict[str, int]]:
    import ray

    from lsio_ray.ray.actor import io_actor, process_io
    from lsio_ray.ray.spec import piece_of_ops

    src = _layout(job["src"], job["src_docs"])
    dst = _layout(job["dst"], job["dst_docs"])
    grid = tuple(job["grid"])
    block = tuple(job["block"])
    shape = tuple(src.shape)
    blo, bhi = _block_box(bid, grid, block, shape)
    here = ray.get_runtime_context().get_node_id()
    io = None
    if in_task:
        # Ownership: the batches' buffers are this worker's (copied out of the engine's
        # pool, which got its buffers back at once); they go back to the service's
        # cache once the block is decoded, below.
        io = process_io(job["local_engine"], ahead_bytes=job["local_ahead"])
        ops = _block_ops(src, grid, block, bid, job["direct"])
        spec = piece_of_ops(ops, list(range(len(ops))), list(range(len(ops))), bid)
        batches = tuple(io.run(spec, job["local_batch"]))
    reads: dict[str, int] = {}
    for b in batches:
        reads[b.node_id] = reads.get(b.node_id, 0) + int(b.index["nbytes"].sum())
    unit = np.asarray(dst.file_shape, dtype=np.int64)
    ushape = tuple(int(x) for x in unit)
    owner = job["owner"]
    node = owner or here
    local_io = io if io is not None and owner in (None, here) else None

    def sink(paths: list[str], datas: list[np.ndarray], fsync: bool) -> int:
        if local_io is not None:
            return local_io.write_files(paths, datas, fsync=fsync)
        return int(ray.get(io_actor(node).write_files.remote(paths, datas, fsync=fsync)))

    out = _UnitWriter(sink, job["fsync"])
    try:
        if _c_decodable(src):
            cblock = _CBlock(src, blo, bhi, batches, unit)
            nread = cblock.nread
            for first, units in cblock.subblocks(dst.dtype, dst.fill_value):
                for k in np.ndindex(*units.shape[: len(ushape)]):
                    c = first + np.asarray(k, dtype=np.int64)
                    out.add(dst.file_path(blo // unit + c), _encode_unit(dst, units[k]), units)
        else:
            nread, whole = _py_decode_block(src, blo, bhi, batches, dst.dtype)
            for k in np.ndindex(*_ceil_div(bhi - blo, unit)):
                c = np.asarray(k, dtype=np.int64)
                ulo = c * unit
                uhi = np.minimum(ulo + unit, bhi - blo)
                part = whole[tuple(slice(int(a), int(b)) for a, b in zip(ulo, uhi, strict=True))]
                if not (np.all(uhi - ulo == unit) and part.flags.c_contiguous):
                    full = _buffer(ushape, dst.dtype, "unit")
                    if np.any(uhi - ulo < unit):
                        full[...] = dst.fill_value
                    full[tuple(slice(0, int(x)) for x in uhi - ulo)] = part
                    part = full
                out.add(dst.file_path(blo // unit + c), _encode_unit(dst, part), part)
        out.flush()
    finally:
        if io is not None:  # decoded: the inputs' buffers may serve the next block
            io.recycle(batches)
    return bid, out.units, nread, out.written, reads


class _UnitWriter:
    """A block's encoded units, written as they come, ``flush_bytes`` at a time (one
    engine batch, or one call to the output node's IO actor, each): the task holds a
    few MiB of encoded bytes, not the block's."""

    def __init__(
        self,
        sink: Callable[[list[str], list[np.ndarray], bool], int],
        fsync: bool,
        flush_bytes: int = 8 << 20,
    ) -> None:
        self._sink = sink
        self._fsync = fsync
        self._flush_bytes = flush_bytes
        self._paths: list[str] = []
        self._datas: list[np.ndarray] = []
        self._pending = 0
        self.units = 0
        self.written = 0

    def add(self, path: str, enc: np.ndarray | None, source: np.ndarray) -> None:
        """Queue one unit's stored bytes (None: all fill value, not written).  ``source``
        is the buffer the unit was encoded from: bytes still sharing its memory (a
        codec-less unit) are copied, since the buffer is reused before they are written."""
        if enc is None:
            return
        if np.may_share_memory(enc, source):
            enc = enc.copy()
        self._paths.append(path)
        self._datas.append(enc)
        self._pending += enc.nbytes
        if self._pending >= self._flush_bytes:
            self.flush()

    def flush(self) -> None:
        """Write what is queued (raises :class:`~lsio_ray.ray.OutputError` on failure)."""
        if not self._paths:
            return
        paths, datas = self._paths, self._datas
        self._paths, self._datas, self._pending = [], [], 0
        self.written += self._sink(paths, datas, self._fsync)
        self.units += len(paths)


def _py_decode_block(
    src: Any, blo: np.ndarray, bhi: np.ndarray, batches: Sequence[Batch], dtype: Any
) -> tuple[int, np.ndarray]:
    """Decode a block's input files with the codecs' Python objects (numcodecs) into the
    worker's block buffer; returns the bytes read and the buffer."""
    out = _buffer(tuple(int(x) for x in bhi - blo), dtype, "block")
    scratch = _buffer((src.codec.nbytes,), np.uint8, "scratch")
    nread = 0
    for batch in batches:
        errs = batch.index["error"]
        starts = batch.index["start"].tolist()
        sizes = batch.index["nbytes"].tolist()
        meta = batch.metadata
        for i in range(len(batch)):
            coords = np.asarray(meta[i], dtype=np.int64)
            if errs[i]:
                if int(errs[i]) == -errno.ENOENT:  # a missing chunk is the fill value
                    fshape = np.asarray(src.file_shape, dtype=np.int64)
                    fill = np.broadcast_to(src.fill_value, tuple(int(x) for x in fshape))
                    _paste(out, blo, bhi, fill, coords * fshape)
                    continue
                raise batch.error(i)  # type: ignore[misc]
            view = batch.data[starts[i] : starts[i] + sizes[i]]
            nread += sizes[i]
            _decode_file(src, view, coords, out, blo, bhi, scratch, batch.path(i))
    return nread, out


# -- the journal of finished blocks ------------------------------------------------------


def _decode_journal(raw: bytes | None, nblocks: int) -> np.ndarray:
    done = np.zeros(nblocks, bool)
    if not raw:
        return done
    n = len(raw) // 16
    rec = np.frombuffer(raw[: n * 16], dtype="<u8").reshape(-1, 2)
    ok = (rec[:, 1] == (rec[:, 0] ^ _MAGIC)) & (rec[:, 0] < nblocks)
    done[rec[ok, 0].astype(np.int64)] = True
    return done


class _Journal:
    """Appends finished block numbers through the destination's IO actor."""

    def __init__(self, call: Callable[..., Any], path: str, size: int, fsync: bool) -> None:
        self.call = call  # call(method, *args, **kwargs) on the destination's IO actor
        self.path = path
        self.size = size - size % 16
        self.fsync = fsync
        self.pending: list[int] = []
        self.last = time.monotonic()

    def add(self, bid: int) -> None:
        """Note a finished block (written at the next flush)."""
        self.pending.append(bid)

    def flush(self, force: bool = False) -> None:
        """Append the noted blocks (every 256 blocks or 0.5 s, or now if ``force``)."""

        if not self.pending or (
            not force and len(self.pending) < 256 and time.monotonic() - self.last < 0.5
        ):
            return
        ids = np.array(self.pending, dtype="<u8")
        rec = np.stack([ids, ids ^ _MAGIC], axis=1).astype("<u8").reshape(-1).view(np.uint8)
        self.call("write_ranges", self.path, [self.size], [rec], create=True, fsync=self.fsync)
        self.size += rec.nbytes
        self.pending = []
        self.last = time.monotonic()


# -- the driver --------------------------------------------------------------------------


def _docs_from(files: dict[str, bytes | None], root: str) -> dict[str, Any]:
    docs: dict[str, Any] = {}
    for name in ("zarr.json", ".zarray", ".zattrs"):
        raw = files.get(name)
        if raw is not None:
            docs[name] = json.loads(raw)
    if "zarr.json" in docs:
        docs.pop(".zarray", None)
        docs.pop(".zattrs", None)
    if not docs or ("zarr.json" not in docs and ".zarray" not in docs):
        raise FileNotFoundError(errno.ENOENT, "no Zarr array here (no zarr.json or .zarray)", root)
    return docs


def _progress_fn(
    progress: Any, total: int, initial: int
) -> tuple[Callable[[int], None], Callable[[], None]]:
    if callable(progress):
        state = {"n": initial}

        def step(k: int) -> None:
            state["n"] += k
            progress(state["n"], total)

        return step, lambda: None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=initial, unit="block", desc="rechunk", dynamic_ncols=True)
        return bar.update, bar.close
    return (lambda k: None), (lambda: None)


def _check_disjoint_on(node: str, src: str, dst: str) -> None:
    """:func:`~lsio_ray.paths.check_disjoint` run on ``node`` (its file system's view);
    its :class:`ValueError` raised here as is."""
    import ray

    check = ray.remote(num_cpus=0, max_retries=0)(check_disjoint)
    try:
        ray.get(check.options(**on_node(node, soft=False)).remote(src, dst))
    except Exception as exc:
        cause = root_cause(exc)
        if isinstance(cause, ValueError):
            raise ValueError(f"on node {node}: {cause}") from None
        raise


def _majority(nodes: list[str]) -> str:
    return collections.Counter(nodes).most_common(1)[0][0]


def rechunk(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    chunks: Sequence[int],
    shards: Sequence[int] | None = None,
    codec: str | None = None,
    zarr_format: int | None = None,
    overwrite: bool = False,
    address: str | None = None,
    roots: dict[str, list[str]] | None = None,
    coordinator: Coordinator | None = None,
    block_bytes: int = 64 << 20,
    batch_bytes: int | None = None,
    window: int | None = None,
    max_attempts: int = 4,
    fsync: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    io: str = "auto",
    direct: bool | None = None,
) -> RechunkResult:
    """Re-chunk (and/or convert) the Zarr array ``src`` into a new array ``dst``.

    ``chunks``: the new chunk shape (the inner chunk when ``shards`` is given);
    ``shards``: the new shard shape, or None for no sharding; ``codec``: see
    :func:`parse_codec` (None: zarr-python's default); ``zarr_format``: 2 or 3 (default:
    the source's).  ``address``: the Ray cluster to join when not connected yet;
    ``roots``/``coordinator``: file locality (see :class:`~lsio_ray.ray.Coordinator`).
    ``block_bytes``: the decoded size of one block (the memory per task); ``window``:
    blocks planned ahead of the running tasks -- for blocks read through the IO actors,
    the blocks being read at once (default: two per node).  ``progress``: a tqdm bar in this
    process, or a callable ``(done, total)``.  ``io``: ``"auto"`` (default) lets the task
    of a block whose input files are all on one node (or on shared storage) read them
    itself, on that node, and write its output there when the output is on that node
    (or shared) -- no hop through an IO actor and the object store; other blocks, and
    every block with ``"actors"``, read through the IO actors' ordered streams and write
    through the output's IO actor.  ``direct``: read the input files with O_DIRECT (each
    is read once: no page-cache copy, and the page cache is left to the output).  It is
    for inputs read cold or larger than memory: measured 3-9% faster cold, 0-4% slower
    from a warm cache, as a task waits for the device before decoding its block.
    Default: the ``direct`` setting of :mod:`lsio_ray.config` (env ``LSIO_DIRECT``); off
    where the driver sees the source on a file system refusing it.  Resumable: see the
    module docstring.

    Raises :class:`ValueError` naming both paths, before Ray is started and before
    anything is removed or written, when ``dst`` is ``src``, lies inside it or holds it,
    compared as written and with symbolic links resolved, or holds a symbolic link
    leading into the source (:func:`lsio_ray.paths.check_disjoint`): ``overwrite=True``
    never removes the source.  A node-local destination on another node than the
    driver's is checked on that node as well.
    """
    import ray

    if io not in ("auto", "actors"):
        raise ValueError(f"io must be 'auto' or 'actors', not {io!r}")
    # before Ray starts and anything is removed or written: a destination that is the
    # source, inside it or holding it (symbolic links resolved) would destroy the source
    src_root, dst_root = check_disjoint(src, dst)
    t0 = time.time()
    if direct is None:
        direct = bool(config.get("direct"))
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    coord = coordinator or Coordinator(roots=roots, batch_bytes=batch_bytes)
    if direct and os.path.isdir(src_root):
        from lsio_ray.zarr.array import supports_direct

        direct = supports_direct(src_root)
    here = ray.get_runtime_context().get_node_id()

    def meta_node(path: str) -> str:
        node = coord.node_of(path)
        if node is not None:
            return node
        return here if here in coord.nodes else coord.nodes[0]

    from ray.util.client import ray as ray_client

    from lsio_ray.ray.actor import close_process_io, process_io

    # the metadata and the journal, when on this driver's node, go through this process's
    # own IO service (process_io): no IO actor (a process of ~70 MiB) is started for them.
    # Not under Ray Client, whose driver runs on another machine than the node it names.
    see_here = not ray_client.is_connected()
    used_here = False

    def call(node: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """An IO actor method for ``node``'s files: run here when ``node`` is this
        driver's, else by the node's IO actor."""
        nonlocal used_here
        if node == here and see_here:
            used_here = True
            return getattr(process_io(coord.engine_settings), method)(*args, **kwargs)
        return ray.get(getattr(coord.actor(node), method).remote(*args, **kwargs))

    try:
        # the source's metadata, read on the node that holds it
        names = ["zarr.json", ".zarray", ".zattrs"]
        got = call(meta_node(src_root), "read_files", [os.path.join(src_root, n) for n in names])
        src_docs = _docs_from(dict(zip(names, got, strict=True)), src_root)
        src_l = _layout(src_root, src_docs)
        fmt = int(zarr_format or src_l.zarr_format)
        if fmt not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, not {fmt}")
        chunks_t = tuple(int(c) for c in chunks)
        if len(chunks_t) != src_l.ndim:
            raise ValueError(f"chunks {chunks_t} for an array of {src_l.ndim} dimensions")
        shards_t = None if shards is None else tuple(int(s) for s in shards)
        if shards_t is not None and fmt != 3:
            raise ValueError("shards need zarr_format 3")

        # the destination's metadata, as zarr-python would write it
        from lsio_ray.zarr._zarr_compat import create_metadata_docs

        kwargs: dict[str, Any] = {
            "shape": src_l.shape,
            "dtype": src_l.dtype,
            "chunks": chunks_t,
            "zarr_format": fmt,
            "fill_value": src_l.fill_value[()],
            "attributes": dict(src_l.attrs),
        }
        if shards_t is not None:
            kwargs["shards"] = shards_t
        if fmt == 3 and src_l.meta.dimension_names is not None:
            kwargs["dimension_names"] = list(src_l.meta.dimension_names)
        kwargs.update(parse_codec(codec, fmt))
        dst_bytes = create_metadata_docs(**kwargs)
        dst_docs = {k: json.loads(v) for k, v in dst_bytes.items()}
        dst_l = _layout(dst_root, dst_docs)

        cpus = int(ray.cluster_resources().get("CPU", 1))
        block = block_shape(
            src_l.shape,
            src_l.file_shape,
            dst_l.file_shape,
            src_l.dtype.itemsize,
            block_bytes,
            min_blocks=4 * max(1, cpus),
        )
        grid = _ceil_div(src_l.shape, block) if src_l.ndim else ()
        nblocks = int(np.prod(grid, dtype=np.int64)) if all(s > 0 for s in src_l.shape) else 0

        # the destination: fresh, or an unfinished run of this very job
        owner = coord.node_of(dst_root)
        if owner is not None and (owner != here or not see_here):
            # a node-local destination this driver cannot see: check it where it is too
            _check_disjoint_on(owner, src_root, dst_root)

        def on_dst(method: str, *args: Any, **kwargs: Any) -> Any:
            """Call the destination's IO actor.  On shared storage a node lost mid-job is
            pruned and the call goes to another node's actor; a node-local destination
            lost with its node fails the job."""
            for attempt in range(max_attempts):
                node = owner or meta_node(dst_root)
                try:
                    return call(node, method, *args, **kwargs)
                except Exception as exc:
                    if owner is not None or not is_system_error(exc) or attempt + 1 == max_attempts:
                        raise
                    coord.node_alive(node)

        state = os.path.join(dst_root, STATE_DIR)
        job_doc = {
            "version": _JOB_VERSION,
            "src": src_root,
            "src_docs": src_docs,
            "dst_docs": dst_docs,
            "block": list(block),
        }
        job_bytes = json.dumps(job_doc, sort_keys=True).encode()
        listing = on_dst("listdir", dst_root)
        prev = on_dst("read_files", [os.path.join(state, "job.json"), os.path.join(state, "done")])
        resuming = prev[0] is not None and prev[0] == job_bytes
        if listing and not resuming:
            if not overwrite:
                what = (
                    "an unfinished conversion with other settings"
                    if prev[0] is not None
                    else "a Zarr array"
                    if {"zarr.json", ".zarray"} & set(listing)
                    else "a non-empty directory"
                )
                raise FileExistsError(
                    errno.EEXIST,
                    f"the destination holds {what}; "
                    "pass overwrite=True (--overwrite) to replace it",
                    dst_root,
                )
            on_dst("remove_tree", dst_root)
        if not resuming:
            job_doc_bytes = np.frombuffer(job_bytes, np.uint8)
            on_dst("write_files", [os.path.join(state, "job.json")], [job_doc_bytes])
            prev = [job_bytes, None]
        done = _decode_journal(prev[1], nblocks)
        journal = _Journal(on_dst, os.path.join(state, "done"), len(prev[1] or b""), fsync)
        todo = np.flatnonzero(~done)
        skipped = nblocks - len(todo)

        job = {
            "src": src_root,
            "dst": dst_root,
            "src_docs": src_docs,
            "dst_docs": dst_docs,
            "grid": list(grid),
            "block": list(block),
            "owner": owner,
            "fsync": fsync,
            "direct": direct,
            # in-task IO (io="auto"): the worker's own engine, its pool big enough for the
            # largest input file (read whole), and batches of a block's size
            "local_engine": _local_engine(coord, src_l),
            "local_ahead": 16 << 20,
            "local_batch": 32 << 20,
        }
        job_ref = ray.put(job)
        task = ray.remote(num_cpus=1, max_retries=0)(_rechunk_block)
        ncpu = max(1, int(ray.cluster_resources().get("CPU", 1)))
        window = window or max(2, 2 * len(coord.nodes))
        max_running = ncpu + len(coord.nodes)

        def place(bid: int) -> tuple[OpGroup, str | None, bool]:
            """The block's reads, the node its task must run on (None: any), and whether
            the task does its own IO (its inputs all on one node, or shared)."""
            group = OpGroup(_block_ops(src_l, grid, block, bid, direct), metadata=bid)
            if io == "actors":
                return group, None, False
            holders = {coord.node_of(op.path) for op in group.operations}
            if len(holders) > 1:
                return group, None, False  # inputs on several nodes: the actors' streams
            node = holders.pop() if holders else None
            if node is not None and attempts[bid] and not coord.node_alive(node):
                raise RechunkError(
                    f"block {bid} of {src_root}: its input {group.operations[0].path} is on "
                    f"node {node}, which is gone"
                )
            return group, node, True

        step, close_bar = _progress_fn(progress, nblocks, skipped)
        attempts: dict[int, int] = collections.defaultdict(int)
        retry: collections.deque[int] = collections.deque()
        queue: Iterator[int] = iter(todo.tolist())
        reading: collections.deque[tuple[int, Any, str | None]] = collections.deque()
        running: dict[Any, int] = {}
        units = nread = nwritten = in_task = 0
        local_blocks: set[int] = set()
        by_node: dict[str, int] = collections.defaultdict(int)
        retries0 = coord.retries

        def next_block() -> int | None:
            if retry:
                return retry.popleft()
            return next(queue, None)

        def failed(bid: int, exc: BaseException) -> None:
            attempts[bid] += 1
            if is_system_error(exc) and attempts[bid] < max_attempts:
                if bid in local_blocks:
                    coord.node_alive("")  # forget lost nodes: the retry goes to a live one
                retry.append(bid)
                return
            cause = root_cause(exc)
            lo, hi = _block_box(bid, grid, block, src_l.shape)
            raise RechunkError(
                f"block {bid} ({lo.tolist()}..{hi.tolist()}) of {src_root}: "
                f"{type(cause).__name__}: {cause}"
            ) from cause

        try:
            exhausted = False
            while True:
                while not exhausted and len(reading) < window:
                    bid = next_block()
                    if bid is None:
                        exhausted = True
                        break
                    group, node, local = place(bid)
                    if local:
                        reading.append((bid, None, node))  # the task reads: nothing to start
                    else:
                        reading.append((bid, coord.submit(group, order="node"), None))
                if not reading and not running:
                    if retry:
                        exhausted = False
                        continue
                    break
                launched = False
                if reading and len(running) < max_running:
                    bid, stream, node = reading.popleft()
                    if stream is None:
                        # its inputs' node (hard: only it has them), else the next node
                        # round-robin (soft: another if that one is lost) -- the codecs are
                        # the bottleneck, so shared inputs spread over every node's cores,
                        # even when the output is one node's (its actor then writes)
                        where = node or coord.pick_node()
                        opts = on_node(where, soft=node is None)
                        ref = task.options(**opts).remote(job_ref, bid, True)
                        local_blocks.add(bid)
                        running[ref] = bid
                        launched = True
                    else:
                        try:
                            brefs = stream.refs()
                        except Exception as exc:
                            failed(bid, exc)
                        else:
                            where = _majority([b.node_id for b in brefs]) if brefs else None
                            opts = on_node(where) if where else {}
                            ref = task.options(**opts).remote(
                                job_ref, bid, False, *[b.ref for b in brefs]
                            )
                            running[ref] = bid
                            launched = True
                    if retry:
                        exhausted = False
                if running:
                    # every task already done, else (when there is nothing to launch) block
                    # until the first one is: a core must not idle until all of them end
                    refs = list(running)
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                    if not ready and not (launched or (reading and len(running) < max_running)):
                        ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                    for ref in ready:
                        bid = running.pop(ref)
                        try:
                            _, n_units, n_in, n_out, reads = ray.get(ref)
                        except Exception as exc:
                            failed(bid, exc)
                            exhausted = False
                            continue
                        units += n_units
                        nread += n_in
                        nwritten += n_out
                        for n, b in reads.items():
                            by_node[n] += b
                        in_task += bid in local_blocks
                        journal.add(bid)
                        step(1)
                journal.flush()
            journal.flush(force=True)
        except BaseException:
            try:
                journal.flush(force=True)
            finally:
                for ref in running:
                    try:
                        ray.cancel(ref)
                    except Exception:
                        pass
                for _, stream, _ in reading:
                    if stream is not None:
                        stream.cancel()
                close_bar()
            raise
        close_bar()

        # finish: metadata last (v2: attributes before .zarray), then forget the journal
        order = sorted(dst_bytes, key=lambda k: (k == ".zarray", k == "zarr.json", k))
        for name in order:
            on_dst(
                "write_files",
                [os.path.join(dst_root, name)],
                [np.frombuffer(dst_bytes[name], np.uint8)],
                fsync=fsync,
            )
        on_dst("remove_tree", state)
        # writes interrupted by a crash leave temp files beside the units: all are
        # where the destination is (its node's disk, or the shared storage)
        on_dst("remove_temp_files", dst_root)
        return RechunkResult(
            src=src_root,
            dst=dst_root,
            shape=tuple(src_l.shape),
            block=block,
            blocks=nblocks,
            blocks_skipped=skipped,
            units_written=units,
            bytes_read=nread,
            bytes_written=nwritten,
            seconds=time.time() - t0,
            retries=coord.retries - retries0 + sum(attempts.values()),
            bytes_read_by_node=dict(by_node),
            blocks_in_task=in_task,
        )
    finally:
        if used_here:
            close_process_io()
