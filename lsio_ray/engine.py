"""The local engine: op groups in, ordered streams of zero-copy chunks out.

>>> from lsio_ray import Engine, OpGroup, get_ranges
>>> with Engine() as eng:
...     for group in eng.stream(OpGroup([get_ranges(p)]) for p in paths):   # groups in order
...         for chunk in group:                        # operation order (time series)
...             with chunk:                            # the buffer goes back on exit
...                 decode(chunk.data)

An ``Engine`` is a facade over the process's IO service (:mod:`lsio_ray.io.service`):
``Engine()`` shares :func:`~lsio_ray.io.service.default_service` with everything else in
the process (the Zarr reader, the Store, Ray tasks); ``Engine(**settings)`` makes a
private service with those settings.  The service's IO thread sits in the C core's
``reap`` (the GIL released) and files each batch of completions under its group
(:class:`~lsio_ray.io.ordered.OrderedGroup`); consumers iterate groups.

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
waits for a buffer).  The service breaks that cycle (:mod:`lsio_ray.io.ordered`): chunks
that landed but were not handed out yet are copied out of the pool, within one pool's
worth of copies (``stats()['spilled']``, ``'spill_held'``, ``'spill_peak'``), beyond that
dropped and read again when the consumer reaches them (``'evicted'``).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from lsio_ray.errors import GroupCancelledError, RangePastEOFError
from lsio_ray.io import config, make_error
from lsio_ray.io.engines import Engines
from lsio_ray.io.ops import ByteRange, Operation, OpGroup, get_ranges, put_file
from lsio_ray.io.ordered import Order, OrderedGroup
from lsio_ray.io.request import Request
from lsio_ray.io.service import IOService, default_service
from lsio_ray.io.url import is_remote

__all__ = ["Chunk", "Engine", "GroupResult"]

Errors = Literal["raise", "return"]

_OPNAME = {"get": "read", "put_file": "write", "put_ranges": "write"}


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
        array chain (``RawEngine.owned_view`` -> user views); dropping the chunk's
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

    def __init__(
        self, engine: Engine, group: OpGroup, task: OrderedGroup | None, errors: Errors
    ) -> None:
        self._engine = engine
        self._ops = group.operations
        self._metadata = group.metadata
        self._task = task
        self._errors = errors
        self._tags: list[int] = []
        self._rows: np.ndarray | None = None
        self._items: list[tuple[Any, ...]] = []
        self._pos = 0
        self._yielded = 0
        self._finished = task is None
        self._cancelled = False

    @property
    def metadata(self) -> Any:
        """The group's metadata."""
        return self._metadata

    @property
    def nranges(self) -> int:
        """How many results the group will produce (a file error counts for its ranges)."""
        return 0 if self._task is None else self._task.total

    @property
    def done(self) -> bool:
        """True when every result has been handed out (or the group was cancelled)."""
        t = self._task
        return self._finished or self._cancelled or t is None or t.cancelled

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        return self.next()

    def _next_row(self, timeout: float | None) -> tuple[int, Any] | None:
        t = self._task
        if self._cancelled:
            raise GroupCancelledError(f"group {self._metadata!r} was cancelled")
        while True:
            if self._rows is not None and self._pos < len(self._tags):
                k = self._pos
                self._pos += 1
                tag = self._tags[k]
                if t is not None and t.order == "operation" and t.skip[tag]:
                    continue  # stood for by its op's file error, which came before
                return tag, self._items[k]
            if t is None or self._finished:
                return None
            got = t.take(timeout)
            if got is None:
                self._finished = True
                self._rows = None
                self._engine._forget(t)
                return None
            tags, rows = got
            self._tags = tags.tolist()
            self._rows = rows
            self._items = rows.tolist()  # tuples: field access without numpy scalars
            self._pos = 0

    def next(self, timeout: float | None = None) -> Chunk:
        """The next chunk (waiting up to ``timeout`` seconds); StopIteration at the end."""
        got = self._next_row(timeout)
        if got is None:
            raise StopIteration
        chunk = self._make_chunk(*got)
        self._yielded += 1
        if chunk.error is not None and self._errors == "raise":
            raise chunk.error
        return chunk

    def collect(self) -> list[Chunk]:
        """All chunks, errors included (as chunks with ``error`` set).

        The chunks view pool buffers while they fill at most half the pool; the rest are
        copies (their buffers given back at once), so a group larger than the pool
        cannot wait forever on buffers its own earlier chunks hold."""
        out = []
        raw = self._engine.raw
        half = self._engine.pool_bytes // 2
        while True:
            got = self._next_row(None)
            if got is None:
                return out
            chunk = self._make_chunk(*got)
            self._yielded += 1
            if chunk._cdata is not None and raw.pool_in_use() > half:
                chunk = chunk.detached()
            out.append(chunk)

    def _make_chunk(self, tag: int, row: tuple[Any, ...]) -> Chunk:
        t = self._task
        assert t is not None
        # a COMPLETION_DTYPE row as a tuple
        _tag, group, buf_id, data, offset, length, file_size, err, _flags = row
        k = int(t.range_op[tag])
        op = self._ops[k]
        i = tag - int(t.op_first[k])
        meta = op.range_metadata(i)
        raw = self._engine.raw
        if err:
            if buf_id:
                raw.release(buf_id)
            exc = make_error(
                err,
                op.path,
                offset,
                length,
                file_size,
                op=_OPNAME[op.kind],
                pool_bytes=self._engine.pool_bytes,
                detail=raw.detail(group, tag),
            )
            return Chunk(op, i, meta, self._metadata, offset, length, file_size, error=exc)
        # an empty local range past the end (the C core reads no bytes for it, so it does
        # not check); the remote backend decides that for its own ranges
        past = length == 0 and offset > max(file_size, 0) and op.kind == "get"
        if past and not is_remote(op.path):
            exc2 = _empty_past_eof(op.path, offset, file_size)
            if exc2 is not None:
                if buf_id:
                    raw.release(buf_id)
                else:
                    t.pop_spilled(tag)
                return Chunk(op, i, meta, self._metadata, offset, 0, file_size, error=exc2)
        if buf_id:
            arr = raw.owned_view(data, length, buf_id)
            return Chunk(
                op, i, meta, self._metadata, offset, length, file_size, array=arr, cdata=True
            )
        arr = t.pop_spilled(tag)
        if arr is None and op.kind == "get":
            arr = np.empty(0, np.uint8)
        return Chunk(op, i, meta, self._metadata, offset, length, file_size, array=arr)

    def _drop_local(self) -> None:
        """Give back the buffers of results taken from the group but not handed out."""
        rows, self._rows = self._rows, None
        if rows is None or self._pos >= len(self._tags):
            return
        rest = rows[self._pos :]
        ids = rest["buf_id"][rest["buf_id"] != 0]
        if ids.size and not self._engine.raw.closed:
            self._engine.raw.release_many(ids)
        t = self._task
        if t is not None:
            for tag in self._tags[self._pos :]:
                t.pop_spilled(tag)

    def cancel(self) -> None:
        """Drop what has not landed, give held buffers back. Idempotent."""
        self._drop_local()
        t = self._task
        if t is not None and not self._finished and not self._cancelled:
            self._cancelled = True
            t.cancel()
            self._engine._forget(t)

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
        t = self._task
        landed = 0 if t is None else t.landed
        cancelled = t is not None and t.cancelled
        return (
            f"<GroupResult metadata={self._metadata!r} ranges={self.nranges} landed={landed} "
            f"handed_out={self._yielded}{' cancelled' if cancelled else ''}>"
        )


class Engine:
    """The user's op-group API: a facade over an IO service (:mod:`lsio_ray.io.service`).
    Usable with no Ray at all.

    ``Engine()`` shares the process's service (:func:`~lsio_ray.io.service.
    default_service`): its engine, pool and IO thread serve every ``Engine()``, the Zarr
    reader and the Store of the process, so :meth:`stats` counts all of them, and
    :meth:`close` cancels this engine's groups only.  ``Engine(**settings)`` -- or
    ``Engine()`` inside a :func:`lsio_ray.config.set` block -- makes a private service
    with those settings, closed with the engine.

    Memory: the pool bound, plus at most one pool's worth of copies made to break an
    ordered-delivery wait cycle (see the module docstring and :meth:`stats`), plus what the
    consumer copies itself.

    Settings default to :mod:`lsio_ray.config` (environment variables, ``config.set``):
    ``backend`` ("auto", "uring", "pread"), ``depth`` (ops in the kernel), ``pool_bytes``
    (the memory bound, e.g. "256M"), ``threads`` (pread workers), ``max_open``,
    ``register_buffers``, ``fixed_files``, ``link_open``.
    """

    def __init__(self, **settings: Any) -> None:
        if settings or config.overridden():
            # A C ring thread keeps io_uring busy while this process's Python threads hold
            # the GIL (without it, a busy consumer starved the ring: 6.6k vs 90k IOPS).
            settings.setdefault("ring_thread", True)
            self._service = IOService(**settings)
            self._own = True
        else:
            self._service = default_service()
            self._own = False
        self._live: dict[int, OrderedGroup] = {}
        self._closing = False

    # -- properties ------------------------------------------------------------------
    @property
    def service(self) -> IOService:
        """The IO service this engine submits to."""
        return self._service

    @property
    def backend(self) -> str:
        """ "uring" or "pread"."""
        return self._service.engine.backend

    @property
    def features(self) -> frozenset[str]:
        """io_uring features probed at start-up (fixed_files, linked_open, ...)."""
        return self._service.engine.features

    @property
    def pool_bytes(self) -> int:
        """The buffer pool bound in bytes."""
        return self._service.pool_bytes

    @property
    def raw(self) -> Engines:
        """The batch-level engine (arrays in, arrays out) under the service: the C engine,
        with the object-storage backend beside it once a URL was read."""
        return self._service.engine

    def stats(self) -> dict[str, int]:
        """The service's counters (:meth:`lsio_ray.io.service.IOService.stats`: the C
        core's, and the ordered-delivery deadlock breaker's ``spilled`` /
        ``spilled_bytes`` / ``spill_held`` / ``spill_peak`` / ``spill_limit`` /
        ``evicted``) and ``groups_live``, this engine's groups not finished."""
        st = self._service.stats()
        st["groups_live"] = len(self._live)
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
        if not group.operations:
            return GroupResult(self, group, None, errors)
        task = OrderedGroup(self._service, Request.of_ops(group.operations), order=order)
        self._live[task.group] = task
        try:
            self._service.start(task)
        except BaseException:
            self._live.pop(task.group, None)
            raise
        return GroupResult(self, group, task, errors)

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

    def _forget(self, task: OrderedGroup) -> None:
        self._live.pop(task.group, None)

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel every group of this engine; a private service is closed too
        (idempotent).

        Chunks already handed out, and arrays taken from them, stay valid: the C engine
        keeps its buffer arena mapped until the last of their buffers comes back."""
        if self._closing:
            return
        self._closing = True
        for task in list(self._live.values()):
            task.cancel()
        self._live.clear()
        if self._own:
            self._service.close()

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
            f"groups_live={len(self._live)}>"
        )


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
