"""The IO actor: one per node, owning that node's engine and buffer pool.

Each node runs one :class:`IOActor`, named ``lsio-io-<node_id>`` in the ``lsio_ray``
namespace, pinned to its node (``NodeAffinitySchedulingStrategy(node_id, soft=False)``),
started on first use (:func:`io_actor`) and restarted by Ray if it dies
(``max_restarts=-1``).  It asks for no CPU (``num_cpus=0``): the cores belong to the
decode tasks.  It is a threaded actor: every call runs on its own thread, so several
groups stream at once and ``stats``/``ping`` answer while they do.

Reading a piece of a group (:meth:`IOActor.run`, a streaming generator):

* the piece's operations go to the C engine in slices, only so far ahead of what has
  been yielded (``ahead_bytes``/``ahead_ranges``), so a stalled consumer holds a
  bounded amount of memory;
* one dispatcher thread per actor reaps completions (the GIL released while it waits)
  and files them under their piece; the engine's own ring thread keeps io_uring busy
  while Python holds the GIL;
* the piece's thread takes the results in operation order, copies each chunk from its
  pool buffer into the batch buffer and gives the pool buffers back at once (one
  ``release_many`` per step), and yields a :class:`~lsio_ray.ray.Batch` whenever the
  buffer is full.

Why a copy: the engine reads only into its own registered pool (the C API takes no
caller buffer), and a Ray object can only be filled by Ray's ``put``; the copy into the
batch buffer (memory speed) is what lets the pool be recycled at once, so the pool
bound, not the consumer, limits the memory the engine holds.

If results that landed out of order fill the pool while the next one in order cannot
be read (the pool is starved with nothing in flight), the dispatcher copies the held
results out of the pool -- the same deadlock breaker as the local engine's.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from lsio_ray.io._core import C_FILE_ERROR, COMPLETION_DTYPE, OP_READ, RawEngine
from lsio_ray.ray.batches import INDEX_DTYPE, Batch, BatchBuilder, default_batch_bytes
from lsio_ray.ray.errors import OutputError
from lsio_ray.ray.spec import PieceSpec, piece_of_ops

__all__ = ["NAMESPACE", "IOActor", "actor_name", "close_process_io", "io_actor", "process_io"]

NAMESPACE = "lsio_ray"
"""The Ray namespace the IO actors are registered in."""

_READ = OP_READ
_FILE_ERROR = C_FILE_ERROR
_ENOENT = 2


def actor_name(node_id: str) -> str:
    """The registered name of a node's IO actor."""
    return f"lsio-io-{node_id}"


class _PieceRun:
    """One piece being served: submission in slices, results in operation order."""

    def __init__(
        self,
        actor: IOActor,
        spec: PieceSpec,
        gid: int,
        batch_bytes: int,
        ahead_bytes: int,
        ahead_ranges: int,
    ) -> None:
        self.actor = actor
        self.raw: RawEngine = actor._raw
        self.spec = spec
        self.gid = gid
        n = spec.total
        self.rows = np.zeros(n, COMPLETION_DTYPE)
        self.have = np.zeros(n, bool)
        self.cursor = 0
        self.op_first = spec.op_first()
        self.range_op = np.repeat(
            np.arange(spec.nops, dtype=np.int64), spec.nranges.astype(np.int64)
        )
        self.known = np.zeros(n + 1, np.int64)
        np.cumsum(np.maximum(spec.lengths, 0), out=self.known[1:])
        self.is_read = spec.kinds[self.range_op] == _READ if n else np.zeros(0, bool)
        self.next_op = 0
        self.ahead_bytes = ahead_bytes
        self.ahead_ranges = ahead_ranges
        self.slice_ranges = max(1, min(ahead_ranges // 2, 4096))
        self.slice_bytes = max(1, ahead_bytes // 2)
        self.cond = threading.Condition()
        self.inbox: list[np.ndarray] = []
        self.keep: list[np.ndarray] = []
        self.closed = False
        self.failure: BaseException | None = None
        self.builder = BatchBuilder(batch_bytes, self._make_batch, actor._buffers.take)
        self.seq = 0

    # -- dispatcher side -----------------------------------------------------------------
    def deliver(self, comps: np.ndarray) -> bool:
        """File completions (dispatcher thread); False if the piece is closed."""
        with self.cond:
            if self.closed:
                return False
            self.inbox.append(comps)
            self.cond.notify()
            return True

    def fail(self, exc: BaseException) -> None:
        """The dispatcher died: wake the piece with its error."""
        with self.cond:
            self.failure = exc
            self.cond.notify()

    def spill(self) -> int:
        """Copy held results out of the pool and release their buffers; returns how many."""
        with self.cond:
            if self.closed:
                return 0
            parts = list(self.inbox)
            held = np.flatnonzero(self.have[self.cursor :]) + self.cursor
            ids: list[int] = []
            for arr in parts:
                ids.extend(self._spill_rows(arr))
            if held.size:
                sub = self.rows[held]
                ids.extend(self._spill_rows(sub))
                self.rows[held] = sub
        if ids:
            self.raw.release_many(np.array(ids, np.uint64))
        return len(ids)

    def _spill_rows(self, rows: np.ndarray) -> list[int]:
        mask = (rows["buf_id"] != 0) & (rows["error"] == 0)
        if not mask.any():
            return []
        sel = np.flatnonzero(mask)
        sizes = rows["length"][sel]
        heap = np.empty(int(sizes.sum()), np.uint8)
        base = heap.ctypes.data
        pos = 0
        newptr = []
        for src, n in zip(rows["data"][sel].tolist(), sizes.tolist(), strict=True):
            ctypes.memmove(base + pos, src, n)
            newptr.append(base + pos)
            pos += n
        ids = rows["buf_id"][sel].tolist()
        rows["data"][sel] = newptr
        rows["buf_id"][sel] = 0
        self.keep.append(heap)
        return [int(i) for i in ids]

    # -- piece side ----------------------------------------------------------------------
    def _submit_more(self) -> None:
        spec = self.spec
        while self.next_op < spec.nops:
            r0 = int(self.op_first[self.next_op])
            if r0 - self.cursor >= self.ahead_ranges:
                return
            if int(self.known[r0]) - int(self.known[self.cursor]) >= self.ahead_bytes:
                return
            hi = self.next_op + 1
            while (
                hi < spec.nops
                and int(self.op_first[hi]) - r0 < self.slice_ranges
                and int(self.known[self.op_first[hi]]) - int(self.known[r0]) < self.slice_bytes
            ):
                hi += 1
            files, ranges, blob, _ = spec.c_arrays(self.gid, self.next_op, hi)
            self.raw.submit(files, ranges, blob)
            self.next_op = hi
            self.actor._work.set()

    def _land(self) -> None:
        parts, self.inbox = self.inbox, []
        for comps in parts:
            tags = comps["tag"].astype(np.int64)
            fe = (comps["flags"] & _FILE_ERROR) != 0
            if fe.any():
                for k in np.flatnonzero(fe).tolist():
                    op = int(self.range_op[tags[k]])
                    lo, hi = int(self.op_first[op]), int(self.op_first[op + 1])
                    free = np.flatnonzero(~self.have[lo:hi]) + lo
                    self.rows[free] = comps[k]
                    self.have[free] = True
                comps = comps[~fe]
                tags = tags[~fe]
            self.rows[tags] = comps
            self.have[tags] = True

    def _emit(self) -> None:
        a = self.cursor
        if a >= len(self.have):
            return
        gap = np.flatnonzero(~self.have[a:])
        b = a + int(gap[0]) if gap.size else len(self.have)
        if b == a:
            return
        spec = self.spec
        r = self.rows[a:b]
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
        self.builder.add(np.arange(a, b, dtype=np.int64), r, idx)
        ids = r["buf_id"]
        ids = ids[ids != 0]
        if ids.size:
            self.raw.release_many(ids)
        self.rows["buf_id"][a:b] = 0
        self.cursor = b
        st = self.actor._counts
        nread = int(np.count_nonzero(ok_read))
        st["ranges_read"] += nread
        st["bytes_read"] += int(idx["nbytes"].sum())
        st["range_errors"] += int(np.count_nonzero(failed))
        writes = ~self.is_read[a:b] & ~failed
        st["ranges_written"] += int(np.count_nonzero(writes))
        st["bytes_written"] += int(r["length"][writes].sum())
        if self.actor._record is not None:
            first = self.op_first[self.range_op[a:b]] == np.arange(a, b)
            for op in self.range_op[a:b][first & ok_read].tolist():
                self.actor._record.append(spec.path(op))

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
            node_id=self.actor.node_id,
            seq=self.seq,
        )
        self.seq += 1
        return b

    def batches(self) -> Iterator[Batch]:
        """The piece's batches, in order (runs on the calling thread)."""
        n = self.spec.total
        with self.cond:
            self._submit_more()
        clock = time.perf_counter
        times = self.actor._times
        while self.cursor < n:
            with self.cond:
                t0 = clock()
                while not self.inbox and self.failure is None:
                    self.cond.wait(1.0)
                if self.failure is not None:
                    raise RuntimeError("the IO actor's dispatcher failed") from self.failure
                t1 = clock()
                self._land()
                self._emit()
                ready = self.builder.take_ready()
                self._submit_more()
                times["wait_s"] += t1 - t0
                times["copy_s"] += clock() - t1
            yield from self._hand_out(ready)
        self.builder.flush()
        yield from self._hand_out(self.builder.take_ready())

    def _hand_out(self, ready: list[Batch]) -> Iterator[Batch]:
        """Yield batches; each buffer is recycled once its consumer is done with it (for
        a Ray generator: once Ray has copied the yielded object into its store)."""
        for batch in ready:
            self.actor._counts["batches"] += 1
            t0 = time.perf_counter()
            yield batch
            self.actor._times["yield_s"] += time.perf_counter() - t0
            if self.actor._recycle:
                self.actor._buffers.give(batch.data)

    def close(self) -> None:
        """Cancel what is left and give every held buffer back (idempotent)."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            parts, self.inbox = self.inbox, []
            held = self.rows["buf_id"][self.have & (self.rows["buf_id"] != 0)]
        unfinished = self.cursor < self.spec.total
        if unfinished and not self.raw.closed:
            self.raw.cancel_group(self.gid)
        ids = [held] + [p["buf_id"][p["buf_id"] != 0] for p in parts]
        allids = np.concatenate(ids) if ids else np.zeros(0, np.uint64)
        if allids.size and not self.raw.closed:
            self.raw.release_many(allids)
        self.keep = []


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


class IOActor:
    """A node's IO service: its engine, its pool, its batches.  Use :func:`io_actor`.

    ``engine``: settings for the node's :class:`~lsio_ray.io._core.RawEngine` (``backend``,
    ``pool_bytes``, ``depth``...; defaults from :mod:`lsio_ray.config`).
    ``ahead_bytes``/``ahead_ranges``: how far a piece's submissions may run ahead of the
    batches it has yielded.  ``record_paths``: remember every file read (for tests).
    ``recycle``: a batch's buffer is reused once the next batch is asked for (right for
    a Ray generator, whose batches Ray has copied by then); False for an instance used
    in-process (:func:`process_io`), whose caller keeps batches and hands their buffers
    back with :meth:`recycle`.
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
        settings["ring_thread"] = True
        self._raw = RawEngine(**settings)
        self._lock = threading.Lock()
        self._runs: dict[int, _PieceRun] = {}
        self._next_gid = 1
        self._work = threading.Event()
        self._closing = False
        self._last_starved = 0
        self._ahead_bytes = int(ahead_bytes)
        self._ahead_ranges = int(ahead_ranges)
        self._record: list[str] | None = [] if record_paths else None
        self._recycle = recycle
        self._buffers = _BufferCache(keep=8 if recycle else 2)
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
                "spilled",
            ),
            0,
        )
        self.node_id: str = "local"
        try:
            import ray

            if ray.is_initialized():
                self.node_id = ray.get_runtime_context().get_node_id()
        except ImportError:  # used without Ray (unit tests)
            pass
        self._started = time.time()
        self._thread = threading.Thread(
            target=self._dispatch_loop, name="lsio-dispatch", daemon=True
        )
        self._thread.start()

    # -- dispatcher ----------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        raw = self._raw
        try:
            while not self._closing:
                out = raw.reap(4096, 1, 100)
                if len(out):
                    self._route(out)
                    continue
                st = raw.stats()
                if st["files_pending"] == 0 and st["completions_ready"] == 0:
                    self._work.wait(0.5)
                    self._work.clear()
                    continue
                if (
                    st["starved"] != self._last_starved
                    and not st["inflight"]
                    and st["files_pending"]
                ):
                    self._last_starved = st["starved"]
                    with self._lock:
                        runs = list(self._runs.values())
                    self._counts["spilled"] += sum(r.spill() for r in runs)
        except BaseException as exc:
            with self._lock:
                runs = list(self._runs.values())
            for r in runs:
                r.fail(exc)

    def _route(self, out: np.ndarray) -> None:
        gids = out["group"]
        if (gids == gids[0]).all():
            parts = [(int(gids[0]), out)]
        else:
            parts = [(int(g), out[gids == g]) for g in np.unique(gids)]
        stray: list[np.ndarray] = []
        for gid, rows in parts:
            with self._lock:
                run = self._runs.get(gid)
            if run is None or not run.deliver(rows):
                stray.append(rows["buf_id"][rows["buf_id"] != 0])
        if stray:
            ids = np.concatenate(stray)
            if ids.size:
                self._raw.release_many(ids)

    def _start(self, spec: PieceSpec, batch_bytes: int | None) -> _PieceRun:
        with self._lock:
            gid = self._next_gid
            self._next_gid += 1
            run = _PieceRun(
                self,
                spec,
                gid,
                batch_bytes or default_batch_bytes(),
                self._ahead_bytes,
                self._ahead_ranges,
            )
            self._runs[gid] = run
        self._counts["pieces"] += 1
        return run

    def _finish(self, run: _PieceRun) -> None:
        run.close()
        with self._lock:
            self._runs.pop(run.gid, None)

    # -- public methods ------------------------------------------------------------------
    def run(
        self, spec: PieceSpec, batch_bytes: int | None = None, skip: int = 0
    ) -> Iterator[Batch]:
        """Serve a piece of a group: yield its batches in operation order, skipping the
        first ``skip`` (already delivered before a failure; the cut is deterministic).

        Called through Ray (a streaming generator), every batch is an object of its own.
        Called directly, a batch's buffer is reused once the next one is asked for:
        copy what must outlive the iteration."""
        if spec.data:
            self._make_parent_dirs(spec)
        run = self._start(spec, batch_bytes)
        try:
            for batch in run.batches():
                if batch.seq >= skip:
                    yield batch
        finally:
            self._finish(run)

    def recycle(self, batches: Iterable[Batch]) -> None:
        """Take back the buffers of batches served in-process (``recycle=False``): the
        caller is done with them, and they may be reused by later batches."""
        for batch in batches:
            self._buffers.give(batch.data)

    def write_files(self, paths: list[str], datas: list[Any], *, fsync: bool = False) -> int:
        """Write whole files atomically (temp file, write, rename), making parent
        directories as needed; returns the bytes written.  Raises
        :class:`~lsio_ray.ray.OutputError` naming the first file that failed."""
        from lsio_ray.io.ops import put_file

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
        from lsio_ray.io.ops import put_ranges

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
        from lsio_ray.io.ops import get_ranges

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
        """Which of ``paths`` exist on this node (a stat each)."""
        return [os.path.exists(p) for p in paths]

    def listdir(self, path: str) -> list[str] | None:
        """The names in directory ``path`` on this node (None if it does not exist)."""
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return None

    def remove_tree(self, path: str) -> None:
        """Delete ``path`` and everything under it on this node (missing is fine)."""
        import shutil

        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)

    def remove_temp_files(self, root: str) -> int:
        """Delete the engine's leftover temp files (``*.lsio-tmp.*``) under ``root``,
        left by writes interrupted by a crash, whatever their writer: for a finished
        job that owns ``root`` (:func:`lsio_ray.paths.remove_stray_temp_files` with
        ``finished=True``); returns how many were removed."""
        from lsio_ray.paths import remove_stray_temp_files

        return remove_stray_temp_files(root, finished=True)

    def _make_parent_dirs(self, spec: PieceSpec) -> None:
        # not cached across calls: another node may remove a directory (shared storage)
        made: set[str] = set()
        for i in np.flatnonzero(spec.kinds != _READ).tolist():
            d = os.path.dirname(spec.path(i))
            if d not in made:
                os.makedirs(d, exist_ok=True)
                made.add(d)

    def stats(self) -> dict[str, Any]:
        """Counters: ranges and bytes read/written, batches, pieces, spills; the engine's
        counters under ``engine``; the node id, the actor's process id and the CPU time
        its process used (``cpu_s``, all threads, since it started); the time the piece
        threads spent waiting for the engine (``wait_s``), copying into batches
        (``copy_s``) and handing batches to Ray (``yield_s``: serialisation and
        back-pressure), summed over threads."""
        out: dict[str, Any] = dict(self._counts)
        out.update(self._times)
        out["engine"] = self._raw.stats()
        out["backend"] = self._raw.backend
        out["node_id"] = self.node_id
        out["pid"] = os.getpid()
        out["pieces_live"] = len(self._runs)
        out["uptime_s"] = time.time() - self._started
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_s"] = ru.ru_utime + ru.ru_stime
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

    def ping(self) -> str:
        """The node id (a liveness check)."""
        return self.node_id

    def shutdown(self) -> None:
        """Stop the dispatcher and free the engine (the actor is unusable after)."""
        self._closing = True
        self._raw.wake()
        self._work.set()
        self._thread.join(5)
        self._raw.close()


_REMOTE: Any = None
_HANDLES: dict[str, Any] = {}
"""Handles of the actors this process started: a non-detached actor lives as long as its
creator holds a handle, so they are kept for the life of the process (the driver)."""


def _remote_class() -> Any:
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(IOActor)
    return _REMOTE


def io_actor(
    node_id: str,
    *,
    engine: dict[str, Any] | None = None,
    detached: bool = False,
    record_paths: bool = False,
    max_concurrency: int = 64,
    **options: Any,
) -> Any:
    """The IO actor of ``node_id``: found by name if it runs, else started there.

    Started with ``num_cpus=0`` (it must never hold a core the tasks need),
    ``max_restarts=-1`` (Ray restarts it if it dies), no automatic task retries (the
    coordinator resumes streams itself), ``max_concurrency`` threads, and
    ``NodeAffinitySchedulingStrategy(node_id, soft=False)``.  ``detached=True`` keeps it
    alive after the driver exits.  ``engine`` and ``record_paths`` apply only when this
    call starts the actor.  The process that starts an actor keeps its handle (a
    non-detached actor dies with its creator's last handle), so the actors of a driver
    live until it exits.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = actor_name(node_id)
    job = ray.get_runtime_context().get_job_id()
    if _HANDLES.get("job") != job:  # a new connection: handles of an old one are void
        _HANDLES.clear()
        _HANDLES["job"] = job
    mine = _HANDLES.get(node_id)
    if mine is not None:
        return mine
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    opts: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
        "max_task_retries": 0,
        "max_concurrency": max_concurrency,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
    }
    if detached:
        opts["lifetime"] = "detached"
    opts.update(options)
    handle = _remote_class().options(**opts).remote(engine, record_paths=record_paths)
    _HANDLES[node_id] = handle
    return handle


_PROCESS_IO: tuple[tuple[Any, ...], IOActor] | None = None
_process_io_lock = threading.Lock()


def process_io(engine: dict[str, Any] | None = None, *, ahead_bytes: int = 16 << 20) -> IOActor:
    """This process's own IO service: an :class:`IOActor` instance run in-process (not a
    Ray actor), for a task that reads and writes its node's files itself, with no hop
    through an actor and the object store.  Its batches are not recycled behind the
    caller's back: give them back with :meth:`IOActor.recycle`.  Made on first use with
    ``engine`` settings (made again if they change); freed by :func:`close_process_io`.
    Reads and writes through it are the calling process's: they count on its node, not
    in the node's IO actor's statistics."""
    global _PROCESS_IO
    key = (tuple(sorted((engine or {}).items())), int(ahead_bytes))
    with _process_io_lock:
        if _PROCESS_IO is not None and _PROCESS_IO[0] == key:
            return _PROCESS_IO[1]
        old, _PROCESS_IO = _PROCESS_IO, None
        if old is not None:
            old[1].shutdown()
        io = IOActor(engine, ahead_bytes=int(ahead_bytes), recycle=False)
        _PROCESS_IO = (key, io)
        return io


def close_process_io() -> None:
    """Free the process's own IO service (its engine and buffer pool), if it has one.
    Buffers it handed out stay valid; the pool is unmapped when the last comes back."""
    global _PROCESS_IO
    with _process_io_lock:
        old, _PROCESS_IO = _PROCESS_IO, None
    if old is not None:
        old[1].shutdown()
