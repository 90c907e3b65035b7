"""The object-storage and HTTP backend of the IO service (``obstore``).

:class:`RemoteBackend` takes the same batches the C engine takes (``FILE_DTYPE`` /
``RANGE_DTYPE`` arrays and a paths blob; here the paths are URLs, see
:mod:`lsio_ray.io.url`) and hands back the same ``COMPLETION_DTYPE`` rows, so every task of
the service -- op groups, ordered delivery, the deadlock breaker -- works on it unchanged.
:class:`lsio_ray.io.engines.Engines` routes each batch's files to the C engine or here.

How a batch becomes requests (the IO planner's part):

* the ranges of one object are sorted and merged into one ranged GET while the gap
  between two is at most ``remote_coalesce_gap`` (default 256 KiB: a request costs tens
  of milliseconds, but with requests in flight at once the extra bytes are what a wide
  gap costs: with 1 MiB, (8,256,256) crops of a sharded array read 3.7x the bytes they
  used, and ran several times slower over a 20 ms link than with 256 KiB, which still
  sends fewer requests than tensorstore -- BENCHMARKS.md, "Zarr over HTTP") and the GET
  stays within ``remote_max_request`` bytes;
* a whole-object read is one GET, a read to the end a GET from an offset, a read of the
  last ``n`` bytes (a shard index) a *suffix* GET (``bytes=-n``);
* at most ``remote_inflight`` requests are in flight per process, and no new GET starts
  while the bytes held (landed, not yet released by their consumers) exceed the
  service's pool: memory stays bounded whatever the load;
* each request is retried by ``object_store`` with exponential backoff on throttling
  (503 SlowDown, 429), other 5xx and timeouts, up to ``remote_retries`` times; when they
  run out, each range of the request completes with an error whose message names the
  URL, the byte range and the store's answer.

The bytes land in the ``Bytes`` buffers obstore returns (Rust-owned memory, no copy into
Python): each completion row points into one of them, with a buffer id that has
:data:`REMOTE_BIT` set.  Releasing the id drops this backend's reference; the memory is
freed when the last range of its request is released and no numpy view of it is alive.

Ownership: the backend's event-loop thread owns the requests; ``_lock`` guards the
completion queue, the held buffers and the counters, which the IO thread and consumer
threads (``release``) touch.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsio_ray.io import url
from lsio_ray.io._core import (
    COMPLETION_DTYPE,
    E_PAST_EOF,
    OP_READ,
    OP_WRITE_FILE,
    view,
)
from lsio_ray.io.request import address
from lsio_ray.io.stores import configure, current_settings, describe, errno_of, store_for

__all__ = ["REMOTE_BIT", "RemoteBackend", "configure", "new_loop"]

#: buffer ids of this backend have this bit set (the C engine's ids never do)
REMOTE_BIT = 1 << 62


def new_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """An event loop for the backend's thread: uvloop's (``"uvloop"``; ``"auto"`` when
    uvloop is installed) or asyncio's own (``"asyncio"``; ``"auto"`` without uvloop).

    uvloop's loop costs less CPU per request: obstore completes each future from its
    own threads through ``call_soon_threadsafe``, and a request takes two of them."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ImportError(
                    "remote_loop='uvloop' needs uvloop: pip install 'lsio_ray[remote]'"
                ) from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@dataclass(slots=True)
class _Request:
    """One GET or PUT: ``rows`` are the ranges it serves, ``(tag, offset, length)`` as asked."""

    group: int
    url: str
    kind: int
    start: int  # first byte (reads with a start); suffix reads: -n
    end: int  # one past the last byte; -1: to the end of the object
    rows: list[tuple[int, int, int]] = field(default_factory=list)
    data: int = 0  # writes: the bytes' address
    nbytes: int = 0  # writes: their length


@dataclass(slots=True)
class _Held:
    buf: Any  # the obstore Bytes
    refs: int
    nbytes: int


class RemoteBackend:
    """Runs batches of object-storage requests on an event loop thread of its own.

    ``pool_bytes`` bounds the bytes held by landed, unreleased results (one request may
    exceed it when nothing else is held); ``wake`` is called when completions are ready
    (the service's reap is waiting in the C engine)."""

    def __init__(
        self, pool_bytes: int, wake: Callable[[], None], settings: dict[str, Any] | None = None
    ) -> None:
        self.pool_bytes = int(pool_bytes)
        self._wake = wake
        self.settings = settings or current_settings()
        self.inflight_cap = int(self.settings["remote_inflight"])
        self.gap = int(self.settings["remote_coalesce_gap"])
        self.max_request = int(self.settings["remote_max_request"])
        self._lock = threading.Lock()
        self._ready: deque[np.ndarray] = deque()
        self._nready = 0
        self._cv = threading.Condition(self._lock)
        self._held: dict[int, _Held] = {}
        self._ids = itertools.count(1)
        self.held_bytes = 0
        self._pending: dict[int, int] = {}  # group -> requests not finished
        self._ranges_pending = 0
        self._cancelled: set[int] = set()
        self._details: dict[tuple[int, int], str] = {}
        self.counters = {
            "remote_requests": 0,
            "remote_bytes_transferred": 0,
            "remote_bytes_used": 0,
            "remote_errors": 0,
            "remote_inflight": 0,
            "remote_starved": 0,
        }
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while they run
        self._loop = new_loop(str(self.settings.get("remote_loop", "auto")))
        self._room: asyncio.Condition | None = None
        self._starving = 0  # requests waiting for room (then a release wakes the loop)
        self._sem: asyncio.Semaphore | None = None
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(started,), name="lsio-remote", daemon=True
        )
        self._thread.start()
        started.wait()

    # -- the event loop thread -----------------------------------------------------------
    def _run_loop(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._room = asyncio.Condition()
        self._sem = asyncio.Semaphore(self.inflight_cap)
        started.set()
        self._loop.run_forever()

    async def _notify_room(self) -> None:
        assert self._room is not None
        async with self._room:
            self._room.notify_all()

    async def _do(self, req: _Request) -> None:
        assert self._sem is not None and self._room is not None
        try:
            async with self._sem:
                if req.kind == OP_READ and self.held_bytes >= self.pool_bytes:
                    async with self._room:
                        self._starving += 1
                        try:
                            while self.held_bytes >= self.pool_bytes and self._held:
                                self.counters["remote_starved"] += 1
                                await self._room.wait()
                        finally:
                            self._starving -= 1
                if req.group in self._cancelled:
                    self._finish(req, None)
                    return
                with self._lock:
                    self.counters["remote_inflight"] += 1
                try:
                    if req.kind == OP_READ:
                        await self._read(req)
                    elif req.kind == OP_WRITE_FILE:
                        await self._write(req)
                    else:
                        self._fail(
                            req,
                            -errno.EOPNOTSUPP,
                            "object stores take whole objects: use put_file, not put_ranges",
                        )
                finally:
                    with self._lock:
                        self.counters["remote_inflight"] -= 1
        except BaseException as exc:  # never lose a request's completions
            try:
                self._fail(req, errno_of(exc), describe(exc))
            except BaseException:
                self._finish(req, None)  # cannot even report it: at least unblock
                raise

    async def _read(self, req: _Request) -> None:
        import obstore
        from obstore.exceptions import NotSupportedError

        store_url, key = url.split(req.url)
        store = store_for(store_url, self.settings)
        if req.end == req.start >= 0:  # only empty ranges: nothing to fetch
            self._emit(req, [(t, 0, 0, o, 0, -1, 0) for t, o, _ln in req.rows])
            return
        if req.start < 0:
            options: dict[str, Any] = {"range": {"suffix": -req.start}}
        elif req.end < 0:
            options = {"range": {"offset": req.start}} if req.start else {}
        else:
            options = {"range": (req.start, req.end)}
        with self._lock:
            self.counters["remote_requests"] += 1
        try:
            try:
                res = await obstore.get_async(store, key, options=options or None)
            except NotSupportedError:
                if req.start >= 0:
                    raise
                # no suffix ranges on this store (Azure): HEAD for the size, then a range
                size = int((await obstore.head_async(store, key))["size"])
                with self._lock:
                    self.counters["remote_requests"] += 1
                start = max(0, size + req.start)
                options = {"range": (start, size)} if start < size else {}
                res = await obstore.get_async(store, key, options=options or None)
            buf = await res.bytes_async()
        except Exception as exc:
            size = await self._size_if_past_end(store, key, req, exc)
            if size is not None:
                self._past_end(req, size)
                return
            self._fail(req, errno_of(exc), describe(exc))
            return
        size = int(res.meta["size"])
        got_start = int(res.range[0])
        n = len(buf)
        with self._lock:
            self.counters["remote_bytes_transferred"] += n
        self._land(req, buf, got_start, n, size)

    async def _size_if_past_end(
        self, store: Any, key: str, req: _Request, exc: Exception
    ) -> int | None:
        """The object's size when a ranged GET failed because the range starts past its
        end (HTTP 416), else None."""
        text = str(exc)
        if req.start <= 0 or ("416" not in text and "Range" not in text and "range" not in text):
            return None
        import obstore

        try:
            meta = await obstore.head_async(store, key)
        except Exception:
            return None
        size = int(meta["size"])
        return size if req.start >= size else None

    async def _write(self, req: _Request) -> None:
        import obstore

        store_url, key = url.split(req.url)
        if not key or key.endswith("/"):
            self._fail(req, -errno.EISDIR, "a URL ending in '/' names a prefix, not an object")
            return
        store = store_for(store_url, self.settings)
        data = memoryview(view(req.data, req.nbytes)) if req.nbytes else b""
        with self._lock:
            self.counters["remote_requests"] += 1
        try:
            await obstore.put_async(store, key, data)
        except Exception as exc:
            self._fail(req, errno_of(exc), describe(exc))
            return
        tag, _off, ln = req.rows[0]
        with self._lock:
            self.counters["remote_bytes_transferred"] += req.nbytes
        self._emit(req, [(tag, 0, 0, 0, ln, req.nbytes, 0)])

    # -- results -------------------------------------------------------------------------
    def _land(self, req: _Request, buf: Any, got_start: int, n: int, size: int) -> None:
        if req.group in self._cancelled:
            self._finish(req, None)
            return
        base = address(np.frombuffer(buf, np.uint8)) if n else 0
        out: list[tuple[int, int, int, int, int, int, int]] = []
        held = _Held(buf, 0, n)
        ids: list[int] = []
        used = 0
        for tag, off, ln in req.rows:
            if off < 0:  # the last -off bytes
                start, want = size + off, -off
                if start < 0:
                    out.append((tag, 0, 0, off, -1, size, E_PAST_EOF))
                    continue
            else:
                start = off
                want = size - off if ln < 0 else ln
                if (ln >= 0 and off + ln > size) or off > size:
                    out.append((tag, 0, 0, off, ln, size, E_PAST_EOF))
                    continue
            rel = start - got_start
            if rel < 0 or rel + want > n:  # the store sent less than it said
                out.append((tag, 0, 0, start, want, size, -errno.EIO))
                self._details[(req.group, tag)] = (
                    f"the server sent bytes {got_start}..{got_start + n} of {size}, "
                    f"not {start}..{start + want} (truncated response)"
                )
                continue
            bid = REMOTE_BIT | next(self._ids)
            ids.append(bid)
            used += want
            out.append((tag, bid, base + rel, start, want, size, 0))
        with self._lock:
            held.refs = len(ids)
            if ids:
                for bid in ids:
                    self._held[bid] = held
                self.held_bytes += n
            self.counters["remote_bytes_used"] += used
        self._emit(req, out)

    def _past_end(self, req: _Request, size: int) -> None:
        self._emit(req, [(t, 0, 0, o, ln, size, E_PAST_EOF) for t, o, ln in req.rows])

    def _fail(self, req: _Request, err: int, detail: str) -> None:
        with self._lock:
            self.counters["remote_errors"] += 1
        for tag, _off, _ln in req.rows:
            self._details[(req.group, tag)] = detail
        self._emit(req, [(t, 0, 0, o, ln, -1, err) for t, o, ln in req.rows])

    def _emit(self, req: _Request, rows: list[tuple[int, int, int, int, int, int, int]]) -> None:
        if req.group in self._cancelled:
            with self._lock:
                for _t, bid, *_ in rows:
                    if bid:
                        self._drop(bid)
            self._finish(req, None)
            return
        arr = np.zeros(len(rows), COMPLETION_DTYPE)
        if rows:
            tag, bid, data, off, ln, size, err = zip(*rows, strict=True)
            arr["tag"] = np.array(tag, np.uint64)  # tags may use bit 63 (the Zarr index's)
            arr["group"] = req.group
            arr["buf_id"] = np.array(bid, np.uint64)
            arr["data"] = np.array(data, np.uint64)
            arr["offset"] = off
            arr["length"] = ln
            arr["file_size"] = size
            arr["error"] = err
        self._finish(req, arr)

    def _finish(self, req: _Request, arr: np.ndarray | None) -> None:
        with self._cv:
            left = self._pending.get(req.group, 0) - 1
            if left > 0:
                self._pending[req.group] = left
            else:
                self._pending.pop(req.group, None)
            self._ranges_pending -= len(req.rows)
            if arr is not None and arr.size:
                self._ready.append(arr)
                self._nready += arr.size
            self._cv.notify_all()
        self._wake()

    # -- the IO thread's side ------------------------------------------------------------
    def submit(self, files: np.ndarray, ranges: np.ndarray, paths: bytes) -> None:
        """Plan and start a batch (URLs in ``paths``); returns at once."""
        if self._closed:
            raise ValueError("the remote backend is closed")
        reqs: list[_Request] = []
        first = 0
        for f in files.tolist():
            group, path_off, kind, _flags, nr = f
            end = paths.index(b"\0", path_off)
            u = paths[path_off:end].decode()
            rs = ranges[first : first + nr]
            first += nr
            if kind == OP_READ:
                reqs += self._plan_reads(group, u, rs)
            else:
                for off, ln, tag, data in rs.tolist():
                    req = _Request(group, u, kind, off, off + ln, [(tag, off, ln)], data, ln)
                    reqs.append(req)
        with self._cv:
            for req in reqs:
                self._pending[req.group] = self._pending.get(req.group, 0) + 1
                self._ranges_pending += len(req.rows)
        if reqs:  # one wake-up of the loop per batch, not per request
            self._loop.call_soon_threadsafe(self._start_all, reqs)

    def _start_all(self, reqs: list[_Request]) -> None:
        for req in reqs:
            task = self._loop.create_task(self._do(req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _plan_reads(self, group: int, u: str, rs: np.ndarray) -> list[_Request]:
        """One object's ranges as requests: exact ranges merged across small gaps."""
        out: list[_Request] = []
        exact: list[tuple[int, int, int]] = []
        for off, ln, tag, _data in rs.tolist():
            if off < 0:
                out.append(_Request(group, u, OP_READ, off, -1, [(tag, off, ln)]))
            elif ln < 0:
                out.append(_Request(group, u, OP_READ, off, -1, [(tag, off, ln)]))
            else:
                exact.append((off, ln, tag))
        exact.sort()
        cur: _Request | None = None
        for off, ln, tag in exact:
            end = off + ln
            if (
                cur is not None
                and off - cur.end <= self.gap
                and max(cur.end, end) - cur.start <= self.max_request
            ):
                cur.end = max(cur.end, end)
                cur.rows.append((tag, off, ln))
                continue
            cur = _Request(group, u, OP_READ, off, end, [(tag, off, ln)])
            out.append(cur)
        return out

    def take(self, max_n: int) -> np.ndarray:
        """Completions ready now (at most about ``max_n``; never blocks)."""
        with self._lock:
            if not self._ready:
                return np.empty(0, COMPLETION_DTYPE)
            parts = []
            n = 0
            while self._ready and n < max_n:
                a = self._ready.popleft()
                parts.append(a)
                n += a.size
            self._nready -= n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def ready(self) -> bool:
        """Whether completions wait to be taken."""
        return self._nready > 0

    def wait(self, timeout_s: float) -> None:
        """Block until completions are ready, :meth:`notify`, or ``timeout_s``."""
        with self._cv:
            if not self._ready and not self._closed:
                self._cv.wait(timeout_s)

    def notify(self) -> None:
        """Wake a :meth:`wait`."""
        with self._cv:
            self._cv.notify_all()

    def release(self, buf_id: int) -> None:
        """Drop one range's reference to its request's bytes."""
        with self._lock:
            freed = self._drop(buf_id)
        if freed and self._starving and not self._closed:
            asyncio.run_coroutine_threadsafe(self._notify_room(), self._loop)

    def release_many(self, buf_ids: np.ndarray) -> None:
        """:meth:`release` for each id (zeros skipped)."""
        freed = False
        with self._lock:
            for bid in np.asarray(buf_ids, np.uint64).tolist():
                if bid:
                    freed |= self._drop(bid)
        if freed and self._starving and not self._closed:
            asyncio.run_coroutine_threadsafe(self._notify_room(), self._loop)

    def _drop(self, buf_id: int) -> bool:
        h = self._held.pop(buf_id, None)
        if h is None:
            raise ValueError(f"release: unknown buffer id {buf_id:#x}")
        h.refs -= 1
        if h.refs == 0:
            self.held_bytes -= h.nbytes
            h.buf = None
            return True
        return False

    def buffer(self, buf_id: int) -> Any:
        """The obstore ``Bytes`` behind a buffer id (to keep it alive in a view)."""
        with self._lock:
            return self._held[buf_id].buf

    def cancel_group(self, group: int) -> int:
        """Results of ``group`` not yet landed are dropped as they land."""
        with self._lock:
            self._cancelled.add(group)
            return self._pending.get(group, 0)

    def group_pending(self, group: int) -> int:
        """Requests of ``group`` not finished (cancelled ones included)."""
        with self._lock:
            n = self._pending.get(group, 0)
            if n == 0:
                self._cancelled.discard(group)
            return n

    def detail(self, group: int, tag: int) -> str | None:
        """What the store answered for a failed range (once)."""
        with self._lock:
            return self._details.pop((group, tag), None)

    def stats(self) -> dict[str, int]:
        """Requests made, bytes transferred and used, errors, in flight, held bytes."""
        with self._lock:
            st = dict(self.counters)
            st["remote_held_bytes"] = self.held_bytes
            st["remote_ranges_pending"] = self._ranges_pending
            st["remote_files_pending"] = sum(self._pending.values())
            st["remote_completions_ready"] = self._nready
        return st

    def close(self) -> None:
        """Stop: requests in flight are abandoned, held bytes dropped (idempotent)."""
        if self._closed:
            return
        self._closed = True

        async def _stop() -> None:
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        try:
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=10)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        with self._cv:
            self._held.clear()
            self.held_bytes = 0
            self._ready.clear()
            self._cv.notify_all()
