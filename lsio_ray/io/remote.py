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

How the loop runs them (CPU per request is what bounds a fast link: issue 15; each
request's obstore calls and failure paths are :mod:`lsio_ray.io.remote_gets`):

* the loop is uvloop's when uvloop is installed (``remote_loop``, the ``remote`` extra
  brings it), else asyncio's: obstore completes its futures from its own threads through
  ``call_soon_threadsafe``, which uvloop does in C;
* a whole-object read is one obstore future (``get_range_async`` of ``bytes=0-(2**62-1)``,
  whose body's length is the object's size), a byte range one (``get_range_async``; the
  object's size unknown unless the range ran past its end), a suffix read or a read from
  an offset to the end two (the GET's answer, with the object's size, then its body)
  chained by done callbacks, with no task, semaphore or condition per request; only the
  rare paths (a suffix GET the store refuses, a range past the end, writes) are
  coroutines;
* requests wait in two queues (reads, which wait for room in the pool, and the rest) and
  start as others end, at most ``remote_inflight`` at once;
* the completions of one loop turn are published together: one array, one lock round
  trip, one wake of the IO thread.

Ownership: the backend's event-loop thread owns the requests, the queues and the
counters (only it writes them); ``_lock`` guards the completion queue, the pending
counts and the held buffers, which the IO thread and consumer threads (``release``)
touch.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from lsio_ray.io._core import (
    COMPLETION_DTYPE,
    E_PAST_EOF,
    OP_READ,
    OP_WRITE_FILE,
)
from lsio_ray.io.remote_gets import Requests
from lsio_ray.io.remote_parts import Held as _Held
from lsio_ray.io.remote_parts import Request as _Request
from lsio_ray.io.remote_parts import Row, new_loop, plan_reads
from lsio_ray.io.request import address
from lsio_ray.io.stores import configure, current_settings, describe, errno_of

__all__ = ["REMOTE_BIT", "RemoteBackend", "configure", "new_loop"]

#: buffer ids of this backend have this bit set (the C engine's ids never do)
REMOTE_BIT = 1 << 62


class RemoteBackend(Requests):
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
        self._no_whole_range: set[str] = set()  # stores whose whole-range GETs fail
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
        # the loop thread's: requests not started (reads wait for room in the pool)
        self._reads: deque[_Request] = deque()
        self._others: deque[_Request] = deque()
        self._running = 0
        self._starving = 0  # reads wait for room (then a release wakes the loop)
        self._out: list[tuple[_Request, list[Row] | None]] = []
        self._flush_soon = False
        self._pumping = False
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(started,), name="lsio-remote", daemon=True
        )
        self._thread.start()
        started.wait()

    # -- the event loop thread (see the module's docstring) -------------------------------
    def _run_loop(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        started.set()
        self._loop.run_forever()

    def _pump(self) -> None:
        """Start queued requests while fewer than the cap run and, for reads, while the
        held bytes leave room (or nothing is held)."""
        if self._pumping:  # a request that ended at once, inside this loop
            return
        self._pumping = True
        try:
            self._pump_queued()
        finally:
            self._pumping = False

    def _pump_queued(self) -> None:
        while self._running < self.inflight_cap:
            if self._others:
                req = self._others.popleft()
            elif self._reads:
                if self.held_bytes >= self.pool_bytes and self._held:
                    self._starving = 1  # before the second look: a release now wakes us
                    with self._lock:
                        full = self.held_bytes >= self.pool_bytes and bool(self._held)
                    if full:
                        self.counters["remote_starved"] += 1
                        return
                self._starving = 0
                req = self._reads.popleft()
            else:
                return
            self._running += 1
            self.counters["remote_inflight"] += 1
            self._begin(req)

    def _end(self, req: _Request) -> None:
        """A request has emitted its completions: start the next."""
        self._running -= 1
        self.counters["remote_inflight"] -= 1
        if not self._closed:
            self._pump()

    def _begin(self, req: _Request) -> None:
        try:
            if req.group in self._cancelled:
                self._finish(req, None)
            elif req.kind == OP_READ:
                if self._get(req):
                    return  # its callbacks end it
            elif req.kind == OP_WRITE_FILE:
                self._spawn(self._write(req))
                return
            else:
                self._fail(
                    req,
                    -errno.EOPNOTSUPP,
                    "object stores take whole objects: use put_file, not put_ranges",
                )
        except BaseException as exc:  # never lose a request's completions
            self._abort(req, exc)
            return
        self._end(req)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _abort(self, req: _Request, exc: BaseException) -> None:
        """A request's own code raised: report the error on its ranges, then end it."""
        try:
            self._fail_safe(req, exc)
        finally:
            self._end(req)

    def _fail_safe(self, req: _Request, exc: BaseException) -> None:
        try:
            self._fail(req, errno_of(exc), describe(exc))
        except BaseException:
            self._finish(req, None)  # cannot even report it: at least unblock
            raise

    def _land(self, req: _Request, buf: Any, got_start: int, n: int, size: int) -> None:
        if req.group in self._cancelled:
            self._finish(req, None)
            return
        base = address(np.frombuffer(buf, np.uint8)) if n else 0
        out: list[Row] = []
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
                # size -1: not known, and not needed (a byte range the store sent whole)
                if size >= 0 and ((ln >= 0 and off + ln > size) or off > size):
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
        if ids:
            held.refs = len(ids)
            with self._lock:
                for bid in ids:
                    self._held[bid] = held
                self.held_bytes += n
        self.counters["remote_bytes_used"] += used
        self._finish(req, out)

    def _past_end(self, req: _Request, size: int) -> None:
        self._finish(req, [(t, 0, 0, o, ln, size, E_PAST_EOF) for t, o, ln in req.rows])

    def _fail(self, req: _Request, err: int, detail: str) -> None:
        self.counters["remote_errors"] += 1
        for tag, _off, _ln in req.rows:
            self._details[(req.group, tag)] = detail
        self._finish(req, [(t, 0, 0, o, ln, -1, err) for t, o, ln in req.rows])

    def _finish(self, req: _Request, rows: list[Row] | None) -> None:
        """Queue a request's completions (None: it has none to report): they are
        published with the others of this loop turn by :meth:`_flush`."""
        self._out.append((req, rows))
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Publish the completions queued this turn: one array, one lock, one wake."""
        self._flush_soon = False
        out, self._out = self._out, []
        table: list[tuple[int, ...]] = []
        drop: list[int] = []
        for req, rows in out:
            if not rows:
                continue
            g = req.group
            if g in self._cancelled:  # dropped as they land
                drop += [r[1] for r in rows if r[1]]
                continue
            table += [
                (t, g, bid, data, off, ln, size, err, 0)
                for t, bid, data, off, ln, size, err in rows
            ]
        arr = np.array(table, COMPLETION_DTYPE) if table else None
        freed = False
        with self._cv:
            for bid in drop:
                freed |= self._drop(bid)
            pending = self._pending
            for req, _rows in out:
                left = pending.get(req.group, 0) - 1
                if left > 0:
                    pending[req.group] = left
                else:
                    pending.pop(req.group, None)
                self._ranges_pending -= len(req.rows)
            if arr is not None:
                self._ready.append(arr)
                self._nready += arr.size
            self._cv.notify_all()
        self._wake()
        if freed and not self._closed:
            self._pump()

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
                reqs += plan_reads(group, u, rs, self.gap, self.max_request)
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
            (self._reads if req.kind == OP_READ else self._others).append(req)
        self._pump()

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
            self._loop.call_soon_threadsafe(self._pump)

    def release_many(self, buf_ids: np.ndarray) -> None:
        """:meth:`release` for each id (zeros skipped)."""
        freed = False
        with self._lock:
            for bid in np.asarray(buf_ids, np.uint64).tolist():
                if bid:
                    freed |= self._drop(bid)
        if freed and self._starving and not self._closed:
            self._loop.call_soon_threadsafe(self._pump)

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
