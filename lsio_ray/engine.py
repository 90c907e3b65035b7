"""The local engine: op groups in, ordered streams of zero-copy chunks out.

>>> from lsio_ray import Engine, OpGroup, get_ranges
>>> with Engine() as eng:
...     for group in eng.stream(OpGroup([get_ranges(p)]) for p in paths):   # groups in order
...         for chunk in group:                        # operation order (time series)
...             with chunk:                            # the buffer goes back on exit
...                 decode(chunk.data)

One background *driver* thread per engine sits in the C core's ``reap`` (the GIL released)
and files each batch of completions under its group; consumers iterate groups.

Chunks are views of pool buffers; while you hold them the pool stays full.  A chunk's
``data`` is a numpy view of a pool buffer: no copy.  The buffer goes back to the pool when
the chunk has been released (``with``, ``release()``) or garbage-collected *and* no array
taken from its ``data`` (or derived from one: slices, ``.view()``, ``memoryview``) is
alive any more.  An array kept past ``release()`` therefore stays valid -- it never shows
another read's bytes, and it keeps the engine's memory mapped after ``Engine.close()`` --
but it holds its buffer like an unreleased chunk.  Holding chunks (or their arrays) is the
back-pressure: when the pool is full, no new read is issued until buffers come back, so
memory stays bounded whatever is submitted.  Copy (``tobytes()``, ``detached()``,
``data.copy()``) what you keep for long.

Ordered delivery could deadlock a bounded pool (later chunks held while an earlier one
waits for a buffer).  The driver breaks that cycle: when a consumer waits, the engine is
starved and nothing is in flight, it moves chunks that landed but were not handed out yet
out of the pool -- those the consumer will reach last first, and only as many bytes as
the waiting read needs.  Each is *copied* (``stats()['spilled']``, ``'spilled_bytes'``)
while the copies held stay within ``spill_limit`` bytes (one pool's worth: memory stays
within twice the pool bound, ``'spill_held'``/``'spill_peak'`` count it); beyond that it
is *dropped* (``'evicted'``) and read again only when the consumer reaches it, so memory
never grows further, a dropped chunk never competes for buffers with the reads needed
before it, and each pass lets the waited-for read start.  A chunk read again is read at
the offset and length it had resolved to; if its file changed or vanished meanwhile, that
one chunk reports the new bytes or error.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from lsio_ray._lsio import ffi, lib
from lsio_ray.errors import GroupCancelledError, RangePastEOFError
from lsio_ray.io._core import FILE_DTYPE, RANGE_DTYPE, RawEngine, make_error
from lsio_ray.io.ops import ByteRange, Operation, OpGroup, get_ranges, put_file

__all__ = ["Chunk", "Engine", "GroupResult"]

Order = Literal["operation", "completion"]
Errors = Literal["raise", "return"]

_KIND = {
    "get": lib.LSIO_OP_READ,
    "put_file": lib.LSIO_OP_WRITE_FILE,
    "put_ranges": lib.LSIO_OP_WRITE_RANGES,
}
_OPNAME = {"get": "read", "put_file": "write", "put_ranges": "write"}
_FILE_ERROR = lib.LSIO_C_FILE_ERROR


class Chunk:
    """The result of one byte range: its bytes (a zero-copy view of a pool buffer) or its
    error, with the caller's metadata.

    Use as a context manager, or call :meth:`release`, to give the buffer back as soon as
    you are done; otherwise it goes back when the chunk is garbage-collected.  Either way,
    an array taken from ``data`` keeps the buffer out of the pool (and its bytes intact)
    until that array, and every array derived from it, is gone: the chunk's ``data``
    raises after a release, an array taken before it stays valid.
    """

    __slots__ = (
        "__weakref__",
        "_array",
        "_cdata",
        "error",
        "file_size",
        "group_metadata",
        "index",
        "kind",
        "length",
        "metadata",
        "offset",
        "path",
    )

    def __init__(
        self,
        op: Operation,
        index: int,
        metadata: Any,
        group_metadata: Any,
        offset: int,
        length: int,
        file_size: int,
        error: BaseException | None = None,
        array: np.ndarray | None = None,
        cdata: Any = None,
    ) -> None:
        self.path: str = op.path
        self.kind: str = op.kind
        self.index: int = index
        self.metadata: Any = metadata
        self.group_metadata: Any = group_metadata
        self.offset: int = offset
        self.length: int = length
        self.file_size: int | None = None if file_size < 0 else file_size
        self.error: BaseException | None = error
        self._array = array
        self._cdata = cdata

    @property
    def ok(self) -> bool:
        """True when the range succeeded."""
        return self.error is None

    @property
    def data(self) -> np.ndarray:
        """The bytes read, as a uint8 numpy array viewing the pool buffer (no copy).

        The array holds the buffer: it stays valid after :meth:`release`, and the buffer
        goes back to the pool only when the array (and every view of it) is gone.
        Raises the range's error if it failed, ValueError once the chunk was released.
        Empty for writes."""
        if self.error is not None:
            raise self.error
        if self._array is None:
            if self.kind != "get":
                return np.empty(0, np.uint8)
            raise ValueError(f"{self.path}: chunk {self.offset}+{self.length} was released")
        return self._array

    @property
    def nbytes(self) -> int:
        """Bytes read or written."""
        return 0 if self.error is not None else self.length

    def tobytes(self) -> bytes:
        """A copy of the bytes (the buffer can be released afterwards)."""
        return self.data.tobytes()

    def detached(self) -> Chunk:
        """This chunk with its bytes copied out of the pool (the pool buffer is given
        back now); errors and released chunks come back as they are."""
        if self._cdata is None or self._array is None:
            return self
        out = Chunk.__new__(Chunk)
        for name in Chunk.__slots__:
            if name != "__weakref__":
                setattr(out, name, getattr(self, name))
        out._array = self._array.copy()
        out._cdata = None
        self.release()
        return out

    def release(self) -> None:
        """Let go of the pool buffer (idempotent): it goes back to the pool now, or, when
        arrays taken from ``data`` are still alive, as soon as the last of them is gone.

        The buffer is owned by a cffi object with a destructor, referenced only by the
        array chain (``ffi.buffer`` -> ndarray -> user views); dropping the chunk's
        references runs the destructor at once unless a user view still needs the memory,
        so a view can never outlive its buffer (no other read's bytes, no unmapped arena).
        """
        self._cdata = self._array = None

    def __enter__(self) -> Chunk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = f"error={self.error!r}" if self.error else f"{self.length} bytes"
        return f"<Chunk {self.path} @{self.offset} {state} metadata={self.metadata!r}>"


# A completion row as the driver stores it:
# (tag, group, buf_id, data, offset, length, file_size, error, flags)
_Row = tuple


class _GroupState:
    """Everything about one submitted group; shared by the driver and the consumer."""

    def __init__(
        self,
        engine: Engine,
        gid: int,
        group: OpGroup,
        order: Order,
        errors: Errors,
        pins: list[Any],
    ) -> None:
        self.engine = engine
        self.gid = gid
        self.ops = group.operations
        self.metadata = group.metadata
        self.order = order
        self.errors = errors
        self.pins = pins  # cffi buffers pinning write data until the group ends
        n = np.array([len(op) for op in self.ops], np.int64)
        self.op_first = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
        self.total = int(self.op_first[-1])
        self.range_op = np.repeat(np.arange(len(self.ops), dtype=np.int64), n)
        self.cond = threading.Condition()
        self.slots: dict[int, _Row] = {}
        self.fifo: collections.deque[_Row] = collections.deque()
        self.skip = np.zeros(self.total, bool)
        self.spilled: dict[int, np.ndarray] = {}  # tag -> copy (counted in spill_held)
        # results dropped from the pool (tag -> resolved offset, length), read again when
        # the consumer reaches them; then their tags are in rereads until they land
        self.parked: dict[int, tuple[int, int]] = {}
        self.rereads: set[int] = set()
        self.received = 0
        self.yielded = 0
        self.next_idx = 0
        self.waiting = 0  # consumers blocked in next_row
        self.cancelled = False
        self.error: BaseException | None = None

    @property
    def landed(self) -> bool:
        return self.received >= self.total

    def deliver(self, rows: list[_Row]) -> list[int]:
        """File completions (driver thread). Returns buffer ids to release (cancelled)."""
        with self.cond:
            if self.cancelled:
                return [r[2] for r in rows if r[2]]
            for row in rows:
                tag = row[0]
                if self.rereads and tag in self.rereads:
                    # a dropped result read again: it stands for itself alone, even when
                    # its file failed this time (the op's other ranges landed before)
                    self.rereads.discard(tag)
                    self.received += 1
                elif row[8] & _FILE_ERROR:
                    end = int(self.op_first[self.range_op[tag] + 1])
                    self.skip[tag + 1 : end] = True
                    self.received += end - tag
                else:
                    self.received += 1
                if self.order == "operation":
                    self.slots[tag] = row
                else:
                    self.fifo.append(row)
            self.cond.notify_all()
        return []

    def in_pool(self) -> list[_Row]:
        """Landed, not handed out, holding a pool buffer (a snapshot)."""
        with self.cond:
            rows = self.slots.values() if self.order == "operation" else self.fifo
            return [r for r in rows if r[2]]

    def head_need(self) -> int:
        """Bytes the result a consumer waits for will need, when the request says so
        (an explicit range of the next operation-order result), else 0."""
        if self.order != "operation" or self.next_idx >= self.total:
            return 0
        op = self.ops[int(self.range_op[self.next_idx])]
        i = self.next_idx - int(self.op_first[self.range_op[self.next_idx]])
        return max(int(op.lengths[i]), 0) if int(op.offsets[i]) >= 0 else 0

    def take_out(self, row: _Row, copy: bool) -> bool:
        """Move one landed row out of the pool (driver thread): copy its bytes (``copy``)
        or drop it to be read again.  False when the consumer took it meanwhile.  The
        caller releases ``row[2]`` and, when dropped, queues the read again."""
        tag = row[0]
        with self.cond:
            if self.cancelled:
                return False
            if self.order == "operation":
                if self.slots.get(tag) is not row:
                    return False
                key: int = tag
            else:
                key = next((k for k, r in enumerate(self.fifo) if r is row), -1)
                if key < 0:
                    return False
            if copy:
                self.spilled[tag] = _view(row[3], row[5]).copy()
                new = (*row[:2], 0, *row[3:])
                if self.order == "operation":
                    self.slots[key] = new
                else:
                    self.fifo[key] = new
            else:
                if self.order == "operation":
                    del self.slots[key]
                else:
                    del self.fifo[key]
                self.received -= 1
                self.parked[tag] = (int(row[4]), int(row[5]))
        return True

    def unpark(self) -> None:
        """Queue dropped results to be read again, now that the consumer waits for them:
        in operation order, when the one it waits for is parked, that one and the parked
        ones after it; in completion order, any; up to half a pool of bytes (at least
        one).  Called with ``cond`` held, so none of them can land before it is filed
        under ``rereads``.  Parked results are not queued earlier: queued, they would take
        buffers ahead of the results the consumer needs first and be dropped again."""
        if self.order == "operation":
            if self.next_idx not in self.parked:
                return
            tags = sorted(t for t in self.parked if t >= self.next_idx)
        else:
            tags = sorted(self.parked)
        budget = self.engine.pool_bytes // 2
        todo: list[tuple[Operation, int, int, int]] = []
        nbytes = 0
        for t in tags:
            off, ln = self.parked[t]
            if todo and nbytes + ln > budget:
                break
            todo.append((self.ops[int(self.range_op[t])], off, ln, t))
            nbytes += ln
        self.engine._reread(self.gid, todo)
        for *_, t in todo:
            del self.parked[t]
            self.rereads.add(t)

    def cancel(self) -> list[int]:
        """Mark cancelled; returns the held buffer ids to release."""
        with self.cond:
            if self.cancelled:
                return []
            self.cancelled = True
            ids = [r[2] for r in self.slots.values() if r[2]]
            ids += [r[2] for r in self.fifo if r[2]]
            self.slots.clear()
            self.fifo.clear()
            copies = sum(a.nbytes for a in self.spilled.values())
            self.spilled.clear()
            self.parked.clear()
            self.rereads.clear()
            self.pins = []
            self.cond.notify_all()
        if copies:
            self.engine._spill_freed(copies)
        return ids

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            self.error = exc
            self.cond.notify_all()

    def next_row(self, timeout: float | None) -> _Row | None:
        """The next row to hand out; None when the group is exhausted."""
        with self.cond:
            while True:
                if self.cancelled:
                    raise GroupCancelledError(f"group {self.metadata!r} was cancelled")
                if self.order == "operation":
                    while self.next_idx < self.total and self.skip[self.next_idx]:
                        self.next_idx += 1
                    if self.next_idx >= self.total:
                        return None
                    row = self.slots.pop(self.next_idx, None)
                    if row is not None:
                        self.next_idx += 1
                        self.yielded += 1
                        return row
                else:
                    if self.fifo:
                        self.yielded += 1
                        return self.fifo.popleft()
                    if self.landed:
                        return None
                if self.error is not None:
                    raise self.error
                if self.parked:
                    self.unpark()
                self.waiting += 1
                try:
                    got = self.cond.wait(timeout)
                finally:
                    self.waiting -= 1
                if not got:
                    raise TimeoutError(f"group {self.metadata!r}: no result within {timeout} s")

    def make_chunk(self, row: _Row) -> Chunk:
        tag, _g, buf_id, data, offset, length, file_size, err, _flags = row
        op = self.ops[int(self.range_op[tag])]
        i = tag - int(self.op_first[self.range_op[tag]])
        meta = op.range_metadata(i)
        if err:
            exc = make_error(
                err,
                op.path,
                offset,
                length,
                file_size,
                op=_OPNAME[op.kind],
                pool_bytes=self.engine.pool_bytes,
            )
            return Chunk(op, i, meta, self.metadata, offset, length, file_size, error=exc)
        if length == 0 and offset > max(file_size, 0) and op.kind == "get":
            exc2 = _empty_past_eof(op.path, offset, file_size)
            if exc2 is not None:
                if buf_id:
                    self.engine._raw.release(buf_id)
                else:
                    self.spilled.pop(tag, None)
                return Chunk(op, i, meta, self.metadata, offset, 0, file_size, error=exc2)
        if buf_id:
            cdata = ffi.gc(
                ffi.cast("char *", data), _Releaser(self.engine._raw_ptr, buf_id), size=length
            )
            arr = np.frombuffer(ffi.buffer(cdata, length), dtype=np.uint8)
            return Chunk(
                op, i, meta, self.metadata, offset, length, file_size, array=arr, cdata=cdata
            )
        arr = self.spilled.pop(tag, None)
        if arr is not None:
            self.engine._spill_freed(arr.nbytes)
        elif op.kind == "get":
            arr = np.empty(0, np.uint8)
        return Chunk(op, i, meta, self.metadata, offset, length, file_size, array=arr)


def _empty_past_eof(path: str, offset: int, file_size: int) -> BaseException | None:
    """The error of an empty read at ``offset`` when that is past the end of the file.

    An explicit range is read without asking the file's size, and reading 0 bytes needs
    no IO, so the C core lets an empty range past the end succeed; the rule (ops.py) is
    that it fails like any range starting past the end.  Only empty ranges starting
    past 0 with the size unknown (or smaller) get here, so the stat is rare."""
    if file_size < 0:
        try:
            file_size = os.stat(path).st_size
        except OSError as exc:
            return OSError(exc.errno, f"{exc.strerror} (read of bytes {offset}..{offset})", path)
    if offset > file_size:
        return RangePastEOFError(path, offset, offset, file_size)
    return None


class _Releaser:
    """ffi.gc destructor: gives one buffer back.  The C engine outlives its buffers."""

    __slots__ = ("buf_id", "ptr")

    def __init__(self, ptr: Any, buf_id: int) -> None:
        self.ptr, self.buf_id = ptr, buf_id

    def __call__(self, _cdata: Any) -> None:
        lib.lsio_release(self.ptr, self.buf_id)


def _view(ptr: int, length: int) -> np.ndarray:
    if length == 0:
        return np.empty(0, np.uint8)
    return np.frombuffer(ffi.buffer(ffi.cast("char *", ptr), length), dtype=np.uint8)


class GroupResult:
    """The results of one submitted group: iterate it for :class:`Chunk` objects.

    Chunks come in operation order (``order="operation"``: the order of the operations
    and, within each, of its ranges) or as they land (``order="completion"``).  A failed
    range is raised where it stands (``errors="raise"``) -- iteration can go on after the
    exception -- or yielded as a chunk whose ``error`` is set (``errors="return"``).  A
    missing file is one error for all of its ranges.

    Leaving a ``with`` block, calling :meth:`cancel`, or dropping the last reference to an
    unfinished group cancels it: queued reads are dropped and held buffers go back.
    """

    def __init__(self, state: _GroupState) -> None:
        self._s = state

    @property
    def metadata(self) -> Any:
        """The group's metadata."""
        return self._s.metadata

    @property
    def nranges(self) -> int:
        """How many results the group will produce (a file error counts for its ranges)."""
        return self._s.total

    @property
    def done(self) -> bool:
        """True when every result has been handed out (or the group was cancelled)."""
        s = self._s
        return s.cancelled or (s.landed and not s.slots and not s.fifo)

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        return self.next()

    def next(self, timeout: float | None = None) -> Chunk:
        """The next chunk (waiting up to ``timeout`` seconds); StopIteration at the end."""
        row = self._s.next_row(timeout)
        if row is None:
            self._s.engine._forget(self._s)
            raise StopIteration
        chunk = self._s.make_chunk(row)
        if chunk.error is not None and self._s.errors == "raise":
            raise chunk.error
        return chunk

    def collect(self) -> list[Chunk]:
        """All chunks, errors included (as chunks with ``error`` set).

        The chunks view pool buffers while they fill at most half the pool; the rest are
        copies (their buffers given back at once), so a group larger than the pool
        cannot wait forever on buffers its own earlier chunks hold."""
        out = []
        raw = self._s.engine._raw
        half = raw.stats()["pool_bytes"] // 2
        while True:
            row = self._s.next_row(None)
            if row is None:
                self._s.engine._forget(self._s)
                return out
            chunk = self._s.make_chunk(row)
            if chunk._cdata is not None and raw.pool_in_use() > half:
                chunk = chunk.detached()
            out.append(chunk)

    def cancel(self) -> None:
        """Drop what has not landed, give held buffers back. Idempotent."""
        self._s.engine._cancel(self._s)

    def __enter__(self) -> GroupResult:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.done:
            self.cancel()

    def __del__(self) -> None:
        try:
            if not self.done:
                self.cancel()
        except Exception:
            pass

    def __repr__(self) -> str:
        s = self._s
        return (
            f"<GroupResult metadata={s.metadata!r} ranges={s.total} landed={s.received} "
            f"handed_out={s.yielded}{' cancelled' if s.cancelled else ''}>"
        )


class Engine:
    """A local IO engine: one C engine (io_uring ring or pread threads, and a bounded pool
    of aligned buffers) plus a driver thread.  Usable with no Ray at all.

    Memory: the pool bound, plus at most one pool's worth of copies made to break an
    ordered-delivery wait cycle (see the module docstring and :meth:`stats`), plus what the
    consumer copies itself.

    Settings default to :mod:`lsio_ray.config` (environment variables, ``config.set``):
    ``backend`` ("auto", "uring", "pread"), ``depth`` (ops in the kernel), ``pool_bytes``
    (the memory bound, e.g. "256M"), ``threads`` (pread workers), ``max_open``,
    ``register_buffers``, ``fixed_files``, ``link_open``.
    """

    def __init__(self, **settings: Any) -> None:
        # A C ring thread keeps io_uring busy while this process's Python threads hold the
        # GIL (without it, a busy consumer starved the ring: 6.6k vs 90k IOPS measured).
        settings.setdefault("ring_thread", True)
        self._raw = RawEngine(**settings)
        self._raw_ptr = self._raw.handle
        self._states: dict[int, _GroupState] = {}
        self._lock = threading.Lock()
        self._next_gid = 1
        self._driver: threading.Thread | None = None
        self._closing = False
        self._work = threading.Event()
        self._last_starved = 0
        self._last_ops = -1
        # the deadlock breaker's accounting (see _maybe_spill); _spill_lock guards it
        self._spill_lock = threading.Lock()
        self._spill_limit = self._raw.pool_bytes
        self._spill_held = 0
        self._spill_peak = 0
        self._spilled = 0
        self._spilled_bytes = 0
        self._evicted = 0
        self._breaking = False  # the last driver pass broke a wait cycle
        self._driver_error: BaseException | None = None

    # -- properties ------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """ "uring" or "pread"."""
        return self._raw.backend

    @property
    def features(self) -> frozenset[str]:
        """io_uring features probed at start-up (fixed_files, linked_open, ...)."""
        return self._raw.features

    @property
    def pool_bytes(self) -> int:
        """The buffer pool bound in bytes."""
        return self._raw.pool_bytes

    @property
    def raw(self) -> RawEngine:
        """The batch-level engine (arrays in, arrays out) for hot paths."""
        return self._raw

    def stats(self) -> dict[str, int]:
        """The C core's counters, ``groups_live``, and the ordered-delivery deadlock
        breaker's: ``spilled`` / ``spilled_bytes`` (chunks and bytes copied out of the
        pool), ``spill_held`` / ``spill_peak`` (bytes of such copies held now / at most),
        ``spill_limit`` (their bound: one pool), ``evicted`` (chunks dropped from the
        pool to be read again because the copies had reached the bound)."""
        st = self._raw.stats()
        with self._spill_lock:
            st["spilled"] = self._spilled
            st["spilled_bytes"] = self._spilled_bytes
            st["spill_held"] = self._spill_held
            st["spill_peak"] = self._spill_peak
            st["spill_limit"] = self._spill_limit
            st["evicted"] = self._evicted
        st["groups_live"] = len(self._states)
        return st

    # -- submission --------------------------------------------------------------------
    def submit(
        self,
        group: OpGroup | Iterable[Operation],
        *,
        metadata: Any = None,
        order: Order = "operation",
        errors: Errors = "raise",
    ) -> GroupResult:
        """Start a group's IO now; returns its :class:`GroupResult` (iterate for chunks)."""
        if order not in ("operation", "completion"):
            raise ValueError(f"order must be 'operation' or 'completion', not {order!r}")
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        if not isinstance(group, OpGroup):
            group = OpGroup(list(group), metadata)
        elif metadata is not None:
            raise ValueError("give metadata on the OpGroup or as an argument, not both")
        if self._closing:
            raise ValueError("the engine is closed")
        if self._driver_error is not None:
            raise RuntimeError("the engine's driver thread failed") from self._driver_error
        with self._lock:
            gid = self._next_gid
            self._next_gid += 1
        files, ranges, paths, pins = _encode(group, gid)
        state = _GroupState(self, gid, group, order, errors, pins)
        result = GroupResult(state)
        if state.total == 0 and not group.operations:
            return result
        with self._lock:
            self._states[gid] = state
        try:
            self._raw.submit(files, ranges, paths)
        except BaseException:
            with self._lock:
                self._states.pop(gid, None)
            raise
        self._ensure_driver()
        self._work.set()
        return result

    def stream(
        self,
        groups: Iterable[OpGroup],
        *,
        window: int = 4,
        order: Order = "operation",
        errors: Errors = "raise",
    ) -> Iterator[GroupResult]:
        """Submit groups lazily, ``window`` ahead of the consumer, and yield their results in
        submission order -- so the disk never idles between groups and memory stays bounded.

        A result must be consumed (or cancelled) before the next one is asked for; when the
        generator is closed early, groups still in flight are cancelled."""
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window}")
        pending: collections.deque[GroupResult] = collections.deque()
        it = iter(groups)
        try:
            for g in it:
                pending.append(self.submit(g, order=order, errors=errors))
                if len(pending) >= window:
                    yield pending.popleft()
            while pending:
                yield pending.popleft()
        finally:
            for r in pending:
                r.cancel()

    # -- conveniences --------------------------------------------------------------------
    def get(
        self,
        path: str | os.PathLike[str],
        ranges: Sequence[ByteRange | slice | tuple[int, int | None]] | None = None,
        *,
        direct: bool = False,
    ) -> list[Chunk]:
        """Read ranges of one file (the whole file by default); raises on the first error."""
        res = self.submit(OpGroup([get_ranges(path, ranges, direct=direct)]))
        return list(res)

    def read(self, path: str | os.PathLike[str], start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start:end`` of a file, copied (the buffer goes straight back)."""
        res = self.submit(OpGroup([get_ranges(path, [ByteRange(start, end)])]))
        with next(res) as chunk:
            out = chunk.tobytes()
        for _ in res:
            pass
        return out

    def put(self, path: str | os.PathLike[str], data: Any, *, fsync: bool = False) -> None:
        """Write a whole file atomically (temp + rename) and wait for it."""
        for _chunk in self.submit(OpGroup([put_file(path, data, fsync=fsync)])):
            pass

    # -- driver --------------------------------------------------------------------------
    def _ensure_driver(self) -> None:
        if self._driver is not None:
            return
        with self._lock:
            if self._driver is None:
                t = threading.Thread(
                    target=_drive,
                    args=(weakref.ref(self), self._raw),
                    name="lsio-driver",
                    daemon=True,
                )
                self._driver = t
                t.start()

    def _dispatch(self, out: np.ndarray) -> None:
        gids = out["group"]
        release: list[int] = []
        if gids.size and (gids == gids[0]).all():
            parts = [(int(gids[0]), out)]
        else:
            parts = [(int(g), out[gids == g]) for g in np.unique(gids)]
        for gid, rows in parts:
            state = self._states.get(gid)
            if state is None:
                release.extend(int(b) for b in rows["buf_id"] if b)
                continue
            release.extend(state.deliver(rows.tolist()))
        if release:
            self._raw.release_many(np.array(release, np.uint64))

    def _maybe_spill(self) -> bool:
        """Break the one wait cycle a bounded pool can have: a consumer blocked on a result
        that cannot be read because landed-but-unconsumed results hold every buffer.  Only
        then are results moved out of the pool; a consumer that simply holds its chunks
        (or arrays of them) is back-pressure, and nothing is moved for it.

        Moved first are the results the consumers will reach last (groups nobody waits on,
        latest first; then the latest results of the waited-on groups), and only until
        the bytes freed cover the waited-for read (its length when the request gives it,
        else the largest landed result; at least one result): a later pass, a few
        milliseconds on, moves more if the read still cannot start.
        A result is copied while the copies held stay within ``_spill_limit``; past that
        it is dropped, to be read again when the consumer reaches it (IO, no memory).
        Returns True when something was moved."""
        st = self._raw.stats()
        # Stuck: reads stalled on the pool since the last look (the starved count moved),
        # or no op issued at all since the last look (one reap timeout ago) -- with
        # nothing in flight and work pending either way.  The second, level test matters:
        # a stall seen while no consumer waited leaves the count still afterwards, since
        # the C scheduler retries only on a release.
        idle = st["ops_submitted"] == self._last_ops
        self._last_ops = st["ops_submitted"]
        if st["inflight"] or not st["files_pending"]:
            return False
        if st["starved"] == self._last_starved and not idle:
            return False
        self._last_starved = st["starved"]
        with self._lock:
            states = sorted(self._states.values(), key=lambda s: s.gid)
        waiting = [s for s in states if s.waiting]
        if not waiting:
            return False
        cands = [(s, row) for s in reversed(states) for row in s.in_pool()]
        if not cands:
            return False
        # reached last: groups nobody waits on (latest first), then the waited-on groups'
        # latest results
        cands.sort(key=lambda c: (not c[0].waiting, c[0].gid, c[1][0]), reverse=True)
        need = max(s.head_need() for s in waiting) or max(int(r[5]) for _, r in cands)
        ids: list[int] = []
        freed = 0
        for s, row in cands:
            if ids and freed >= need:
                break
            n = int(row[5])
            with self._spill_lock:
                copy = self._spill_held + n <= self._spill_limit
                if copy:  # reserved now, so the bound holds whatever the consumer does
                    self._spill_held += n
            if not s.take_out(row, copy):
                if copy:
                    self._spill_freed(n)
                continue
            with self._spill_lock:
                if copy:
                    self._spilled += 1
                    self._spilled_bytes += n
                    self._spill_peak = max(self._spill_peak, self._spill_held)
                else:
                    self._evicted += 1
            ids.append(int(row[2]))
            freed += max(n, 1)
        if ids:
            self._raw.release_many(np.array(ids, np.uint64))
        return bool(ids)

    def _reread(self, gid: int, rows: list[tuple[Operation, int, int, int]]) -> None:
        """Queue dropped results of group ``gid`` to be read again: one single-range file
        op each, with the result's tag, at the offset and length it had resolved to."""
        files = np.zeros(len(rows), FILE_DTYPE)
        ranges = np.zeros(len(rows), RANGE_DTYPE)
        names = []
        off = 0
        for k, (op, offset, length, tag) in enumerate(rows):
            name = os.fsencode(op.path) + b"\0"
            files[k] = (gid, off, lib.LSIO_OP_READ, lib.LSIO_F_DIRECT if op.direct else 0, 1)
            ranges[k] = (offset, length, tag, 0)
            names.append(name)
            off += len(name)
        self._raw.submit(files, ranges, b"".join(names))
        self._work.set()  # the driver may be idle: nothing was pending a moment ago

    def _spill_freed(self, nbytes: int) -> None:
        """Spilled copies of ``nbytes`` were handed out or dropped."""
        with self._spill_lock:
            self._spill_held -= nbytes

    def _forget(self, state: _GroupState) -> None:
        with self._lock:
            self._states.pop(state.gid, None)
        state.pins = []

    def _cancel(self, state: _GroupState) -> None:
        ids = state.cancel()
        with self._lock:
            self._states.pop(state.gid, None)
        if self._raw.closed:
            return
        self._raw.cancel_group(state.gid)
        if ids:
            self._raw.release_many(np.array(ids, np.uint64))

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel every group, stop the driver, free the engine (idempotent).

        Chunks already handed out, and arrays taken from them, stay valid: the C engine
        keeps its buffer arena mapped until the last of their buffers comes back."""
        if self._closing:
            return
        self._closing = True
        with self._lock:
            states = list(self._states.values())
        for s in states:
            self._cancel(s)
        self._raw.wake()
        self._work.set()
        if self._driver is not None:
            self._driver.join()
        self._raw.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"<Engine backend={self.backend} pool={self.pool_bytes >> 20} MiB "
            f"groups_live={len(self._states)}>"
        )


def _drive(engine_ref: weakref.ref[Engine], raw: RawEngine) -> None:
    """The driver thread: reap completions, file them, break pool deadlocks."""
    while True:
        eng = engine_ref()
        if eng is None or eng._closing:
            return
        try:
            # A wait cycle is looked for when a reap comes back empty: after 20 ms without
            # a completion, or 2 ms right after breaking one (the read it made room for
            # may need more room, one more pass, or land at once).
            out = raw.reap(4096, 1, 2 if eng._breaking else 20)
            if len(out):
                eng._dispatch(out)
                continue
            st = raw.stats()
            if st["files_pending"] == 0 and st["completions_ready"] == 0:
                work = eng._work
                del eng  # do not keep the engine alive while idle
                work.wait(0.5)
                work.clear()
                continue
            eng._breaking = eng._maybe_spill()
        except BaseException as exc:
            eng._driver_error = exc
            for s in list(eng._states.values()):
                s.fail(exc)
            return
        finally:
            eng = None


def _encode(group: OpGroup, gid: int) -> tuple[np.ndarray, np.ndarray, bytes, list[Any]]:
    """The C arrays for a group: one lsio_file per operation, one lsio_range per range."""
    ops = group.operations
    files = np.zeros(len(ops), FILE_DTYPE)
    names = [os.fsencode(op.path) + b"\0" for op in ops]
    offs = np.zeros(len(ops), np.int64)
    if ops:
        offs[1:] = np.cumsum([len(n) for n in names])[:-1]
    if offs.size and int(offs[-1]) + len(names[-1]) >= 1 << 32:
        raise ValueError("a group's paths must total less than 4 GiB; split the group")
    files["group"] = gid
    files["path_off"] = offs
    files["kind"] = [_KIND[op.kind] for op in ops]
    files["flags"] = [
        (lib.LSIO_F_DIRECT if op.direct else 0)
        | (lib.LSIO_F_FSYNC if op.fsync else 0)
        | (lib.LSIO_F_CREATE if op.create else 0)
        for op in ops
    ]
    files["nranges"] = [len(op) for op in ops]
    total = int(sum(len(op) for op in ops))
    ranges = np.zeros(total, RANGE_DTYPE)
    pins: list[Any] = []
    if total:
        ranges["offset"] = np.concatenate([op.offsets for op in ops])
        ranges["length"] = np.concatenate([op.lengths for op in ops])
        ranges["tag"] = np.arange(total, dtype=np.uint64)
        k = 0
        for op in ops:
            if op.kind != "get":
                for j, mv in enumerate(op.data):
                    if mv.nbytes:
                        c = ffi.from_buffer(mv)
                        pins.append(c)
                        ranges["data"][k + j] = int(ffi.cast("uintptr_t", c))
            k += len(op)
    return files, ranges, b"".join(names), pins
