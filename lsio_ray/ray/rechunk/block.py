"""The re-chunk job's task: one block read, decoded, encoded and written.

:func:`rechunk_block` runs as a Ray task (one CPU).  Its block's input files come
either from the worker's own in-process IO service (``in_task``:
:func:`~lsio_ray.ray.pieces.process_io`, reading the files where the task runs), or as
the IO actors' batches the driver passes in.  The block is decoded with the Zarr
layer's block decoders (:mod:`lsio_ray.zarr.blocks`: the C decoder sub-block by
sub-block for raw, zstd and blosc chunks, numcodecs into the whole block for the rest),
each output unit encoded with the writer's encoder (:mod:`lsio_ray.zarr.encode`,
zarr-python's ``write_empty_chunks=False``), and the encoded units written ~8 MiB at a
time (:class:`UnitWriter`), through the same in-process IO service when the output is
on this node, shared or on object storage, else through the output node's IO actor.

A worker keeps its decode buffers (and its IO service) for the next block, and frees
them ``_SCRATCH_TTL`` seconds after its last one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsio_ray.io.stores import apply
from lsio_ray.io.url import is_remote
from lsio_ray.ray.actor import io_actor
from lsio_ray.ray.batches import Batch
from lsio_ray.ray.pieces import close_process_io, process_io
from lsio_ray.ray.rechunk.plan import block_box, block_ops, cached_layout, ceil_div
from lsio_ray.ray.spec import piece_of_ops
from lsio_ray.zarr.codec_api import CBlock, c_decodable, decode_block, encode_unit

__all__ = ["BlockJob", "BlockResult", "UnitWriter", "rechunk_block"]


@dataclass(frozen=True)
class BlockJob:
    """What every block's task needs to know of the job (put in the object store once)."""

    src: str
    dst: str
    src_docs: dict[str, Any]
    dst_docs: dict[str, Any]
    grid: tuple[int, ...]
    block: tuple[int, ...]
    owner: str | None
    """The node holding the destination (None: shared storage)."""
    fsync: bool
    direct: bool
    """Read the input files with O_DIRECT."""
    local_engine: dict[str, Any] = field(default_factory=dict)
    """In-task IO: the worker's engine settings (its pool big enough for the largest
    input file, read whole)."""
    local_ahead: int = 16 << 20
    local_batch: int = 32 << 20
    storage: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The driver's object-store options (:func:`lsio_ray.io.stores.configured`), set in
    the worker before it reads or writes a URL."""


@dataclass(frozen=True)
class BlockResult:
    """What one block's task did."""

    bid: int
    units: int
    """Output units written (units all fill value are not)."""
    bytes_read: int
    bytes_written: int
    reads_by_node: dict[str, int]


# -- the worker's buffers ----------------------------------------------------------------

_SCRATCH: dict[tuple[Any, ...], np.ndarray] = {}
_SCRATCH_TTL = 3.0  # seconds a worker keeps its buffers after its last block
_scratch_timer: threading.Timer | None = None
_scratch_lock = threading.Lock()
_scratch_busy = False


def _buffer(shape: tuple[int, ...], dtype: Any, what: str) -> np.ndarray:
    """A buffer of ``shape`` reused by the blocks a worker process runs one after the
    other (fresh 64 MiB blocks cost ~10% of a task in page faults); released
    ``_SCRATCH_TTL`` seconds after the worker's last block (:func:`_keep_buffers`).
    The :data:`~lsio_ray.zarr.blocks.Buffers` the block decoders take."""
    key = (what, shape, np.dtype(dtype).str)
    with _scratch_lock:
        buf = _SCRATCH.get(key)
        if buf is None:
            if len(_SCRATCH) > 8:  # a few shapes per job (edge blocks); never grow unbounded
                _SCRATCH.clear()
            buf = _SCRATCH[key] = np.empty(shape, dtype=dtype)
    return buf


def _drop_buffers() -> None:
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


# -- the task ----------------------------------------------------------------------------


def rechunk_block(job: BlockJob, bid: int, in_task: bool, *batches: Batch) -> BlockResult:
    """One block (a Ray task): decode its inputs, encode and write its output units.

    ``in_task``: the task reads the block's input files itself, through this worker's
    in-process IO service (:func:`~lsio_ray.ray.pieces.process_io`), and writes its units
    the same way when the output is on this node; else ``batches`` are the block's
    inputs as the IO actors streamed them, and the units go to the output's IO actor."""
    _hold_buffers()
    try:
        return _run_block(job, bid, in_task, batches)
    finally:
        _keep_buffers()


def _run_block(job: BlockJob, bid: int, in_task: bool, batches: Sequence[Batch]) -> BlockResult:
    import ray  # optional and heavy (~1 s): imported on use

    if job.storage:
        apply(job.storage)
    src = cached_layout(job.src, job.src_docs)
    dst = cached_layout(job.dst, job.dst_docs)
    blo, bhi = block_box(bid, job.grid, job.block, src.shape)
    here = ray.get_runtime_context().get_node_id()
    io = None
    if in_task:
        # Ownership: the batches' buffers are this worker's (copied out of the engine's
        # pool, which got its buffers back at once); they go back to the service's
        # cache once the block is decoded, below.
        io = process_io(job.local_engine, ahead_bytes=job.local_ahead)
        ops = block_ops(src, job.grid, job.block, bid, job.direct)
        spec = piece_of_ops(ops, list(range(len(ops))), list(range(len(ops))), bid)
        batches = tuple(io.run(spec, job.local_batch))
    reads: dict[str, int] = {}
    for b in batches:
        reads[b.node_id] = reads.get(b.node_id, 0) + int(b.index["nbytes"].sum())
    unit = np.asarray(dst.file_shape, dtype=np.int64)
    ushape = tuple(int(x) for x in unit)
    node = job.owner or here
    local_io = io if io is not None and job.owner in (None, here) else None
    if local_io is None and is_remote(job.dst):
        # objects are written from wherever the task runs (every node reaches the store)
        local_io = process_io(job.local_engine, ahead_bytes=job.local_ahead)

    def sink(paths: list[str], datas: list[np.ndarray], fsync: bool) -> int:
        if local_io is not None:
            return local_io.write_files(paths, datas, fsync=fsync)
        return int(ray.get(io_actor(node).write_files.remote(paths, datas, fsync=fsync)))

    out = UnitWriter(sink, job.fsync)
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
            for k in np.ndindex(*ceil_div(bhi - blo, unit)):
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
    return BlockResult(bid, out.units, nread, out.written, reads)


class UnitWriter:
    """A block's encoded units, written as they come, ``flush_bytes`` at a time (one
    engine batch, or one call to the output node's IO actor, each): the task holds a
    few MiB of encoded bytes, not the block's.  ``sink(paths, datas, fsync)`` writes
    and returns the bytes written."""

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
        """Queue one unit's stored bytes (None: nothing to store, not written).
        ``source`` is the buffer the unit was encoded from: bytes still sharing its
        memory (a codec-less unit) are copied, since the buffer is reused before they
        are written."""
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
