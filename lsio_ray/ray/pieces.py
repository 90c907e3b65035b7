"""Serving pieces of op groups as ordered streams of batches, over the process's IO
service: what a node's IO actor does, and what a Ray task does in-process
(:func:`process_io`) when it reads and writes its node's files itself.

Reading a piece (:meth:`PieceServer.run`):

* the piece is one :class:`~lsio_ray.io.ordered.OrderedGroup` of the IO service: its
  operations go to the engine in slices, only so far ahead of what has been yielded
  (``ahead_bytes``/``ahead_ranges``), so a stalled consumer holds a bounded amount of
  memory; the service's IO thread files completions, and breaks the ordered-delivery
  wait cycle when one forms (:func:`~lsio_ray.io.ordered.break_wait_cycle`: the same
  deadlock breaker as the local ``Engine``'s, because it is the same code);
* the piece's thread takes the results in operation order, copies each chunk from its
  pool buffer into the batch buffer and gives the pool buffers back at once (one
  ``release_many`` per step), and yields a :class:`~lsio_ray.ray.Batch` whenever the
  buffer is full.

Why a copy: the engine reads only into its own pool (the C API takes no caller buffer),
and a Ray object can only be filled by Ray's ``put``; the copy into the batch buffer
(memory speed) is what lets the pool be recycled at once, so the pool bound, not the
consumer, limits the memory the engine holds.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from lsio_ray.io import objects, stores
from lsio_ray.io.ops import get_ranges, put_file, put_ranges
from lsio_ray.io.ordered import OrderedGroup
from lsio_ray.io.request import KIND_CODES
from lsio_ray.io.service import IOService, default_service
from lsio_ray.io.url import is_remote
from lsio_ray.paths import remove_stray_temp_files
from lsio_ray.ray.batches import INDEX_DTYPE, Batch, BatchBuilder, default_batch_bytes
from lsio_ray.ray.errors import OutputError
from lsio_ray.ray.spec import PieceSpec, piece_of_ops

__all__ = ["PieceServer", "close_process_io", "process_io"]

_READ = KIND_CODES["get"]
_ENOENT = 2


def _node_id() -> str:
    """The Ray node this process runs on ("local" without Ray)."""
    try:
        import ray  # optional: the servers work without Ray (unit tests)
    except ImportError:
        return "local"
    if ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return "local"


class _PieceRun:
    """One piece being served: an ordered group of the service, results copied into
    batches in operation order."""

    def __init__(self, server: PieceServer, spec: PieceSpec, batch_bytes: int) -> None:
        self.server = server
        self.spec = spec
        self.task = OrderedGroup(
            server.service,
            spec,
            ahead_ranges=server.ahead_ranges,
            ahead_bytes=server.ahead_bytes,
        )
        self.range_op = self.task.range_op
        n = spec.total
        self.is_read = spec.kinds[self.range_op] == _READ if n else np.zeros(0, bool)
        self.builder = BatchBuilder(batch_bytes, self._make_batch, server._buffers.take)
        self.seq = 0
        self.done = n == 0

    def _emit(self, tags: np.ndarray, r: np.ndarray) -> None:
        a, b = int(tags[0]), int(tags[-1]) + 1
        spec = self.spec
        err = r["error"]
        ok_read = (err == 0) & self.is_read[a:b]
        idx = np.zeros(b - a, INDEX_DTYPE)
        idx["range"] = spec.range_ids[a:b]
        idx["op"] = spec.op_ids[self.range_op[a:b]]
        idx["error"] = err
        idx["nbytes"] = np.where(ok_read, r["length"], 0)
        failed = err != 0
        idx["offset"] = np.where(failed, spec.offsets[a:b], r["offset"])
        idx["length"] = np.where(failed, spec.lengths[a:b], r["length"])
        idx["file_size"] = r["file_size"]
        try:
            self.builder.add(np.arange(a, b, dtype=np.int64), r, idx)
        finally:
            ids = r["buf_id"]
            held = ids != 0
            if held.any():
                self.server.service.engine.release_many(ids[held])
            if self.task.spilled:
                for t in tags[~held & ok_read].tolist():
                    self.task.pop_spilled(t)
        st = self.server._counts
        st["ranges_read"] += int(np.count_nonzero(ok_read))
        st["bytes_read"] += int(idx["nbytes"].sum())
        st["range_errors"] += int(np.count_nonzero(failed))
        writes = ~self.is_read[a:b] & ~failed
        st["ranges_written"] += int(np.count_nonzero(writes))
        st["bytes_written"] += int(r["length"][writes].sum())
        record = self.server._record
        if record is not None:
            first = self.task.op_first[self.range_op[a:b]] == np.arange(a, b)
            for op in self.range_op[a:b][first & ok_read].tolist():
                record.append(spec.path(op))

    def _make_batch(self, index: np.ndarray, data: np.ndarray, local: np.ndarray) -> Batch:
        spec = self.spec
        ops_local = np.unique(self.range_op[local])
        meta = spec.metadata
        if meta is not None:
            meta = (
                meta[local] if isinstance(meta, np.ndarray) else [meta[i] for i in local.tolist()]
            )
        b = Batch(
            index=index,
            data=data,
            metadata=meta,
            op_ids=spec.op_ids[ops_local].astype(np.int64),
            paths=spec.paths[ops_local],
            kinds=spec.kinds[ops_local],
            group_metadata=spec.group_metadata,
            node_id=self.server.node_id,
            seq=self.seq,
        )
        self.seq += 1
        return b

    def batches(self) -> Iterator[Batch]:
        """The piece's batches, in order (runs on the calling thread)."""
        clock = time.perf_counter
        times = self.server._times
        if not self.done:
            self.server.service.start(self.task)
        while not self.done:
            t0 = clock()
            got = self.task.take()
            t1 = clock()
            times["wait_s"] += t1 - t0
            if got is None:
                self.done = True
                break
            self._emit(*got)
            ready = self.builder.take_ready()
            times["copy_s"] += clock() - t1
            yield from self._hand_out(ready)
        self.builder.flush()
        yield from self._hand_out(self.builder.take_ready())

    def _hand_out(self, ready: list[Batch]) -> Iterator[Batch]:
        """Yield batches; each buffer is recycled once its consumer is done with it (for
        a Ray generator: once Ray has copied the yielded object into its store)."""
        for batch in ready:
            self.server._counts["batches"] += 1
            t0 = time.perf_counter()
            yield batch
            self.server._times["yield_s"] += time.perf_counter() - t0
            if self.server._recycle:
                self.server._buffers.give(batch.data)

    def close(self) -> None:
        """Cancel what is left and give every held buffer back (idempotent)."""
        if not self.done:
            self.done = True
            self.task.cancel()


class _BufferCache:
    """Batch buffers for reuse: a fresh 16 MiB numpy buffer costs 4,096 page faults on
    first touch (the copy into it ran at 2.6 GB/s; into a reused one at memory speed)."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._free: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A buffer of ``nbytes`` (reused if one is free)."""
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
        return np.empty(nbytes, np.uint8)

    def give(self, data: np.ndarray) -> None:
        """Return the buffer under ``data`` for reuse (kept only up to the limit)."""
        base = data.base if isinstance(data.base, np.ndarray) else data
        if base.base is not None or not base.flags.writeable or not base.nbytes:
            return
        with self._lock:
            free = self._free.setdefault(base.nbytes, [])
            if len(free) < self._keep:
                free.append(base)


class PieceServer:
    """Serves pieces of op groups over an IO service (see the module docstring).

    ``engine``: settings for a service of its own (``backend``, ``pool_bytes``,
    ``depth``...; defaults from :mod:`lsio_ray.config`); none: the process's service
    (:func:`~lsio_ray.io.service.default_service`).  ``ahead_bytes``/``ahead_ranges``: how
    far a piece's submissions may run ahead of the batches it has yielded.
    ``record_paths``: remember every file read (for tests).  ``recycle``: a batch's
    buffer is reused once the next batch is asked for (right for a Ray generator, whose
    batches Ray has copied by then); False for an in-process server
    (:func:`process_io`), whose caller keeps batches and hands their buffers back with
    :meth:`recycle`.
    """

    def __init__(
        self,
        engine: dict[str, Any] | None = None,
        *,
        ahead_bytes: int = 64 << 20,
        ahead_ranges: int = 8192,
        record_paths: bool = False,
        recycle: bool = True,
    ) -> None:
        settings = dict(engine or {})
        if settings:
            settings.setdefault("ring_thread", True)
            self.service = IOService(from_budget=True, **settings)
            self._own = True
        else:
            self.service = default_service()
            self._own = False
        self.ahead_bytes = int(ahead_bytes)
        self.ahead_ranges = int(ahead_ranges)
        self._record: list[str] | None = [] if record_paths else None
        self._recycle = recycle
        self._buffers = _BufferCache(keep=8 if recycle else 2)
        self._lock = threading.Lock()
        self._runs: set[_PieceRun] = set()
        self._times: dict[str, float] = dict.fromkeys(("wait_s", "copy_s", "yield_s"), 0.0)
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "ranges_read",
                "bytes_read",
                "range_errors",
                "ranges_written",
                "bytes_written",
                "batches",
                "pieces",
            ),
            0,
        )
        self.node_id: str = _node_id()
        self._started = time.time()

    # -- public methods ------------------------------------------------------------------
    def run(
        self, spec: PieceSpec, batch_bytes: int | None = None, skip: int = 0
    ) -> Iterator[Batch]:
        """Serve a piece of a group: yield its batches in operation order, skipping the
        first ``skip`` (already delivered before a failure; the cut is deterministic).

        Called through Ray (a streaming generator), every batch is an object of its own.
        Called directly, a batch's buffer is reused once the next one is asked for:
        copy what must outlive the iteration."""
        if spec.store_options:
            stores.apply(spec.store_options)
        if spec.data:
            self._make_parent_dirs(spec)
        run = _PieceRun(self, spec, batch_bytes or default_batch_bytes())
        with self._lock:
            self._runs.add(run)
        self._counts["pieces"] += 1
        try:
            for batch in run.batches():
                if batch.seq >= skip:
                    yield batch
        finally:
            run.close()
            with self._lock:
                self._runs.discard(run)

    def recycle(self, batches: Iterable[Batch]) -> None:
        """Take back the buffers of batches served in-process (``recycle=False``): the
        caller is done with them, and they may be reused by later batches."""
        for batch in batches:
            self._buffers.give(batch.data)

    def write_files(self, paths: list[str], datas: list[Any], *, fsync: bool = False) -> int:
        """Write whole files atomically (temp file, write, rename), making parent
        directories as needed; returns the bytes written.  Raises
        :class:`~lsio_ray.ray.OutputError` naming the first file that failed."""
        ops = [put_file(p, d, fsync=fsync) for p, d in zip(paths, datas, strict=True)]
        return self._write_ops(ops)

    def write_ranges(
        self,
        path: str,
        offsets: list[int],
        datas: list[Any],
        *,
        create: bool = True,
        fsync: bool = False,
    ) -> int:
        """Write pieces into one file at ``offsets`` (creating it if ``create``)."""
        op = put_ranges(path, list(zip(offsets, datas, strict=True)), create=create, fsync=fsync)
        return self._write_ops([op])

    def _write_ops(self, ops: list[Any]) -> int:
        starts = np.zeros(len(ops) + 1, np.int64)
        np.cumsum([len(op) for op in ops], out=starts[1:])
        spec = piece_of_ops(ops, list(range(len(ops))), starts[:-1].tolist())
        total = 0
        for batch in self.run(spec, 1 << 20):
            bad = np.flatnonzero(batch.index["error"])
            if bad.size:
                i = int(bad[0])
                err = batch.error(i)
                raise OutputError(batch.path(i), self.node_id, str(err.cause if err else ""))
            total += int(batch.index["length"].sum())
        return total

    def read_files(self, paths: list[str]) -> list[bytes | None]:
        """Whole small files (metadata documents) as bytes; None where a file is missing.
        Other errors raise :class:`~lsio_ray.ray.InputError`."""
        ops = [get_ranges(p) for p in paths]
        spec = piece_of_ops(ops, list(range(len(ops))), list(range(len(ops))))
        out: list[bytes | None] = [None] * len(paths)
        for batch in self.run(spec, 64 << 20):
            for i in range(len(batch)):
                err = int(batch.index["error"][i])
                if err == -_ENOENT:
                    continue
                out[int(batch.index["range"][i])] = batch.view(i).tobytes()
        return out

    def exists(self, paths: list[str]) -> list[bool]:
        """Which of ``paths`` exist on this node (a stat each; a URL: whether the
        object is there)."""
        return [
            objects.object_size(p) is not None if is_remote(p) else os.path.exists(p) for p in paths
        ]

    def listdir(self, path: str) -> list[str] | None:
        """The names in directory ``path`` on this node (None if it does not exist); for
        an object-storage URL, the first key segments under the prefix (None: no object
        there)."""
        if is_remote(path):
            names = sorted({k.split("/", 1)[0] for k, _ in objects.list_prefix(path) if k})
            return names or None
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return None

    def remove_tree(self, path: str) -> None:
        """Delete ``path`` and everything under it on this node (missing is fine); for
        an object-storage URL, every object under the prefix."""
        if is_remote(path):
            objects.delete_prefix(path)
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)

    def remove_temp_files(self, root: str) -> int:
        """Delete the engine's leftover temp files (``*.lsio-tmp.*``) under ``root``,
        left by writes interrupted by a crash, whatever their writer: for a finished
        job that owns ``root`` (:func:`lsio_ray.paths.remove_stray_temp_files` with
        ``finished=True``); returns how many were removed.  Object stores have none
        (a PUT is atomic): 0 for a URL."""
        if is_remote(root):
            return 0
        return remove_stray_temp_files(root, finished=True)

    def _make_parent_dirs(self, spec: PieceSpec) -> None:
        # not cached across calls: another node may remove a directory (shared storage)
        made: set[str] = set()
        for i in np.flatnonzero(spec.kinds != _READ).tolist():
            p = spec.path(i)
            if is_remote(p):  # object stores have no directories
                continue
            d = os.path.dirname(p)
            if d not in made:
                os.makedirs(d, exist_ok=True)
                made.add(d)

    def stats(self) -> dict[str, Any]:
        """Counters: ranges and bytes read/written, batches, pieces, spills (results the
        service's deadlock breaker moved out of the pool); the service's counters under
        ``engine``; the time the piece threads spent waiting for the engine
        (``wait_s``), copying into batches (``copy_s``) and handing batches on
        (``yield_s``: for a Ray generator serialisation and back-pressure), summed over
        threads."""
        out: dict[str, Any] = dict(self._counts)
        out.update(self._times)
        eng = self.service.stats()
        out["spilled"] = eng["spilled"] + eng["evicted"]
        out["engine"] = eng
        out["backend"] = self.service.backend
        out["node_id"] = self.node_id
        out["pid"] = os.getpid()
        out["pieces_live"] = len(self._runs)
        out["uptime_s"] = time.time() - self._started
        return out

    def paths_read(self) -> list[str]:
        """Every file read since start or the last reset (``record_paths=True`` only)."""
        return list(self._record or [])

    def reset_stats(self) -> None:
        """Zero the counters and forget the recorded paths."""
        for k in self._counts:
            self._counts[k] = 0
        for k in self._times:
            self._times[k] = 0.0
        if self._record is not None:
            self._record.clear()

    def close(self) -> None:
        """Cancel the pieces being served; a service of its own is closed too (the
        server is unusable after)."""
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            run.close()
        if self._own:
            self.service.close()


_PROCESS_IO: tuple[tuple[Any, ...], PieceServer] | None = None
_process_io_lock = threading.Lock()


def process_io(engine: dict[str, Any] | None = None, *, ahead_bytes: int = 16 << 20) -> PieceServer:
    """This process's own piece server (not a Ray actor), for a task that reads and
    writes its node's files itself, with no hop through an actor and the object store.
    It runs on the process's IO service (one with ``engine`` settings of its own when
    they are given).  Its batches are not recycled behind the caller's back: give them
    back with :meth:`PieceServer.recycle`.  Made on first use (made again if the
    arguments change); freed by :func:`close_process_io`.  Reads and writes through it
    are the calling process's: they count on its node, not in the node's IO actor's
    statistics."""
    global _PROCESS_IO
    key = (tuple(sorted((engine or {}).items())), int(ahead_bytes))
    with _process_io_lock:
        if _PROCESS_IO is not None and _PROCESS_IO[0] == key:
            return _PROCESS_IO[1]
        old, _PROCESS_IO = _PROCESS_IO, None
        if old is not None:
            old[1].close()
        io = PieceServer(engine, ahead_bytes=int(ahead_bytes), recycle=False)
        _PROCESS_IO = (key, io)
        return io


def close_process_io() -> None:
    """Free the process's own piece server (and its service when it has one of its own).
    Buffers it handed out stay valid; the pool is unmapped when the last comes back."""
    global _PROCESS_IO
    with _process_io_lock:
        old, _PROCESS_IO = _PROCESS_IO, None
    if old is not None:
        old[1].close()
