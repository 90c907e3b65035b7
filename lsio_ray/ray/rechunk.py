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
not written, nor are empty inner chunks of a shard: zarr-python's default
``write_empty_chunks=False``, with the encoder the array writer uses
(:mod:`lsio_ray.zarr.encode`), so a conversion and ``lz.save`` of the same data store
the same files.

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
from lsio_ray.zarr.blocks import CBlock, c_decodable, decode_block
from lsio_ray.zarr.encode import encode_unit
from lsio_ray.zarr.layout import ArrayLayout, docs_from_files, layout_from_docs, metadata_docs

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


def _layout(root: str, docs: dict[str, Any]) -> ArrayLayout:
    """An ArrayLayout from metadata documents (cached per process)."""
    key = root + "\0" + json.dumps(docs, sort_keys=True)
    lay = _LAYOUTS.get(key)
    if lay is None:
        lay = layout_from_docs(root, docs)
        _LAYOUTS[key] = lay
    return lay


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
        if c_decodable(src):
            cblock = CBlock(src, blo, bhi, batches, unit, buffers=_buffer)
            nread = cblock.nread
            for first, units in cblock.subblocks(dst.dtype, dst.fill_value):
                for k in np.ndindex(*units.shape[: len(ushape)]):
                    g = blo // unit + first + np.asarray(k, dtype=np.int64)
                    out.add(dst.file_path(g), encode_unit(dst, units[k], g * unit), units)
        else:
            nread, whole = decode_block(src, blo, bhi, batches, dst.dtype, buffers=_buffer)
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
                g = blo // unit + c
                out.add(dst.file_path(g), encode_unit(dst, part, g * unit), part)
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
        src_docs = docs_from_files(dict(zip(names, got, strict=True)), src_root)
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
        dst_bytes = metadata_docs(**kwargs)
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
