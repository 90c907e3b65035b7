"""The Zarr layer's IO driver: one engine, one IO thread, one pool of decode threads.

A :class:`Loader` owns a :class:`~lsio_ray.io._core.RawEngine`.  Work arrives as
:class:`Task` objects (a region to read, files to write).  One IO thread owns every
engine call that needs ordering -- submit, reap, cancel -- and all the IO bookkeeping,
so none of it needs a lock:

* it submits the tasks' file ops in batches (a few numpy arrays per batch, never a
  Python object per chunk), oldest task first, keeping at most ``max_inflight`` ranges
  queued in the engine;
* it reaps completions in batches and hands each batch to its task, which queues the
  decoding on the decode pool: ``threads`` daemon worker threads (default: one per
  core) taking plain tuples from one ``SimpleQueue``.  This is a thread pool without
  ``concurrent.futures``: a future and a work item per chunk measured ~10 us of Python
  per chunk, and executor threads block interpreter exit.  numcodecs releases the GIL
  while it decompresses.  A decode thread gives its
  pool buffer back to the engine the moment the chunk is decoded.

Memory is bounded twice: the engine stops issuing reads when its buffer pool
(``pool_bytes``) is exhausted, and at most ``max_inflight`` ranges wait in its queue.

A task that fails (or is cancelled) has its engine group cancelled, and is retired --
its error reaching the caller -- only once the engine holds nothing of the group's
(``RawEngine.group_pending`` is 0): no write still landing, no temp file, no descriptor,
and no pointer into the task's write buffers.  Until then the task waits in
``_draining`` and the IO thread keeps driving the engine for it.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from lsio_ray.errors import GroupCancelledError
from lsio_ray.io._core import RawEngine

__all__ = ["Loader", "Task", "abandon", "default_loader", "set_default_loader"]

_ENV_THREADS = "LSIO_ZARR_THREADS"
_REAP_BATCH = 32  # completions the IO thread waits for when many reads are in flight
_ENV_INFLIGHT = "LSIO_ZARR_MAX_INFLIGHT"


def _env_int(name: str, default: int, hi: int) -> int:
    from lsio_ray.io.config import env_int

    return env_int(name, default, 1, hi)


class Task:
    """A unit of IO work with its own engine group, run by a :class:`Loader`.

    Subclasses provide file-op batches (:meth:`next_batch`) and consume completions
    (:meth:`on_completions`), both on the IO thread.  Work queued on the decode pool is
    counted with :meth:`hold` / :meth:`release_hold`; the task is done when its IO is
    retired and no such work is left.  The first error wins and cancels the rest.
    """

    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self.group = loader.new_group()
        self.error: BaseException | None = None
        self.remaining = 0  # units of work (chunks) not finished yet
        self.io_pending = 0  # ranges submitted and not completed (IO thread only)
        self._lock = threading.Lock()
        self._holds = 1  # the IO hold, dropped when the IO is retired
        self._io_retired = False
        self._done = threading.Event()

    # -- IO-thread interface -------------------------------------------------------------
    def next_batch(self, budget: int) -> tuple[np.ndarray, np.ndarray, bytes] | None:
        """The next (files, ranges, paths) batch of at most about ``budget`` ranges."""
        return None

    def has_batches(self) -> bool:
        """True while the task has file ops not yet submitted."""
        return False

    def on_completions(self, comps: np.ndarray) -> int:
        """Consume this task's completions; returns how many ranges they resolve."""
        return 0

    def io_finished(self) -> bool:
        """True when no IO is queued, in flight or still to be planned."""
        return self.io_pending == 0 and not self.has_batches()

    def retire_io(self) -> None:
        """Called once by the IO thread when the task's IO is over (or cancelled)."""
        if not self._io_retired:
            self._io_retired = True
            self.release_hold()

    # -- holds and completion ------------------------------------------------------------
    def hold(self, n: int = 1) -> None:
        """Count ``n`` pieces of work queued on the decode pool."""
        with self._lock:
            self._holds += n

    def release_hold(self, finished: int = 0) -> None:
        """One piece of queued work ended, finishing ``finished`` units of the task."""
        with self._lock:
            self.remaining -= finished
            self._holds -= 1
            done = self._holds == 0
        if done:
            self._finish()

    def _finish(self) -> None:
        self._done.set()

    def fail(self, exc: BaseException) -> None:
        """Record the first error and cancel the task's remaining IO."""
        with self._lock:
            if self.error is not None:
                return
            self.error = exc
        self.loader.cancel(self)

    def cancel(self) -> None:
        """Abandon the task: its queued IO is dropped and its result discarded."""
        self.fail(GroupCancelledError(f"task {self.group} cancelled"))

    @property
    def done(self) -> bool:
        """True once the task finished (successfully or not)."""
        return self._done.is_set()

    def settle(self, timeout: float | None = 60.0) -> bool:
        """Wait (without raising) until the task is done; returns whether it is."""
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> None:
        """Block until done; raise the task's error if it failed."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"task {self.group} not done after {timeout} s")
        if self.error is not None:
            raise self.error


def abandon(tasks: Iterable[Task]) -> None:
    """Cancel tasks still in flight, then wait for their decode work to stop: after this
    no pool buffer is held for them and no thread writes into their outputs (which the
    caller may then reuse).  Streams call it when they end early (an error, a close)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        task.settle()


class Loader:
    """An engine, its IO thread and a decode pool, shared by any number of arrays.

    ``backend``, ``pool_bytes`` and ``depth`` go to the engine (defaults from
    :mod:`lsio_ray.config`); ``threads`` is the number of decode threads (default: the
    cores, env ``LSIO_ZARR_THREADS``); ``max_inflight`` bounds the ranges queued in the
    engine (default 4096, env ``LSIO_ZARR_MAX_INFLIGHT``); ``register_buffers`` too
    goes to the engine (default: the config setting).
    """

    def __init__(
        self,
        *,
        backend: str | None = None,
        pool_bytes: int | str | None = None,
        depth: int | None = None,
        threads: int | None = None,
        max_inflight: int | None = None,
        engine: RawEngine | None = None,
        register_buffers: bool | None = None,
    ) -> None:
        self.engine = (
            engine
            if engine is not None
            else RawEngine(
                backend=backend,
                pool_bytes=pool_bytes,
                depth=depth,
                register_buffers=register_buffers,
            )
        )
        self.backend = self.engine.backend
        self.threads = threads or _env_int(_ENV_THREADS, os.cpu_count() or 1, 1024)
        self.max_inflight = max_inflight or _env_int(_ENV_INFLIGHT, 4096, 1 << 20)
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._worker, name=f"lsio-zarr-decode-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for w in self._workers:
            w.start()
        self._groups = itertools.count(1)
        self._cv = threading.Condition()
        self._new: list[Task] = []
        self._cancels: list[Task] = []
        self._closing = False
        self._closed = False
        self._tasks: dict[int, Task] = {}
        self._draining: list[Task] = []  # cancelled, until the engine holds none of their ops
        self._queue: list[tuple[int, Task]] = []  # tasks with batches to submit, by group
        self._queued: set[int] = set()
        self._inflight = 0
        self._local = threading.local()
        self._thread = threading.Thread(target=self._run, name="lsio-zarr-io", daemon=True)
        self._thread.start()

    # -- public --------------------------------------------------------------------------
    def new_group(self) -> int:
        """A fresh engine group id."""
        return next(self._groups)

    def start(self, task: Task) -> Task:
        """Hand a task to the IO thread (returns it)."""
        with self._cv:
            if self._closing:
                raise ValueError("the loader is closed")
            self._new.append(task)
            self._cv.notify()
        self.engine.wake()
        return task

    def cancel(self, task: Task) -> None:
        """Ask the IO thread to drop a task's queued IO."""
        with self._cv:
            if self._closing:
                return
            self._cancels.append(task)
            self._cv.notify()
        self.engine.wake()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` on the decode pool (``fn`` handles its own errors)."""
        self._work.put((fn, args))

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` computed on the decode pool; re-raises the first
        error.  Must not be called from a decode thread."""
        items = list(items)
        results: list[Any] = [None] * len(items)
        errors: list[BaseException] = []
        left = [len(items)]
        lock = threading.Lock()
        done = threading.Event()
        if not items:
            return results

        def run(i: int) -> None:
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # handed to the caller
                errors.append(exc)
            finally:
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

        for i in range(len(items)):
            self._work.put((run, (i,)))
        done.wait()
        if errors:
            raise errors[0]
        return results

    def release(self, buf_id: int) -> None:
        """Give one pool buffer back to the engine (valid until :meth:`close`, which waits
        for the decode threads before it frees the engine)."""
        self.engine.release(buf_id)

    def _worker(self) -> None:
        get = self._work.get
        while True:
            item = get()
            if item is None:
                return
            try:
                item[0](*item[1])
            except BaseException:  # work items report their own errors
                continue

    def scratch(self, nbytes: int) -> np.ndarray:
        """A per-thread scratch buffer of at least ``nbytes`` bytes (reused)."""
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = np.empty(max(nbytes, 1), dtype=np.uint8)
            self._local.buf = buf
        return buf

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """Cancel all tasks, stop the threads and free the engine (idempotent)."""
        with self._cv:
            if self._closed:
                return
            self._closing = True
            self._cv.notify()
        self.engine.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        for _ in self._workers:
            self._work.put(None)
        me = threading.current_thread()
        for w in self._workers:
            if w is not me:
                w.join()
        self.engine.close()  # cancels and drains what is left, in the kernel too
        draining, self._draining = self._draining, []
        for task in draining:
            task.retire_io()
        self._closed = True

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the IO thread -------------------------------------------------------------------
    def _run(self) -> None:
        eng = self.engine
        empty_reaps = 0
        while True:
            with self._cv:
                while (
                    not self._new
                    and not self._cancels
                    and not self._closing
                    and self._inflight == 0
                    and not self._queue
                    and not self._draining
                ):
                    self._cv.wait()
                new, self._new = self._new, []
                cancels, self._cancels = self._cancels, []
                closing = self._closing
            for task in new:
                self._tasks[task.group] = task
                self._after(task)
            for task in cancels:
                self._cancel_now(task)
            if closing:
                for task in list(self._tasks.values()):
                    task.fail(GroupCancelledError("the loader was closed"))
                    self._cancel_now(task)
                return
            self._top_up()
            if self._draining:
                self._drained()
            if self._inflight == 0 and not self._draining:
                continue
            # With many reads in flight, wait (at most 2 ms) for a handful of completions
            # instead of returning with the first: each reap costs this thread ~100 us
            # of Python (dispatch, resolve, job arrays).  Measured (bench-zarr, v3, 2
            # reps x 2): time series +8-13%, crops +3-7%.
            want = max(1, min(_REAP_BATCH, self._inflight // 16))
            comps = eng.reap(1024, want, 2 if want > 1 else 20)
            if comps.size == 0:
                empty_reaps += 1
                if empty_reaps >= 50 and eng.stats()["ranges_pending"] == 0:
                    self._lost_completions()
                continue
            empty_reaps = 0
            self._dispatch(comps)

    def _after(self, task: Task) -> None:
        """Queue a task with batches to submit; retire one whose IO is over.  A failed
        task is left alone: its cancellation (queued by ``fail``) retires it."""
        if task.error is not None:
            return
        if task.has_batches():
            if task.group not in self._queued:
                self._queued.add(task.group)
                heapq.heappush(self._queue, (task.group, task))
        elif task.io_finished() and task.group in self._tasks:
            del self._tasks[task.group]
            task.retire_io()

    def _top_up(self) -> None:
        while self._queue and self._inflight < self.max_inflight:
            group, task = self._queue[0]
            batch = None
            if group in self._tasks and task.error is None:
                try:
                    batch = task.next_batch(self.max_inflight - self._inflight)
                except Exception as exc:  # a planning bug must not kill the IO thread
                    task.fail(exc)
            if batch is None:
                heapq.heappop(self._queue)
                self._queued.discard(group)
                if group in self._tasks:
                    self._after(task)
                continue
            files, ranges, paths = batch
            try:
                self.engine.submit(files, ranges, paths)
            except Exception as exc:
                task.fail(exc)
                continue
            task.io_pending += len(ranges)
            self._inflight += len(ranges)

    def _dispatch(self, comps: np.ndarray) -> None:
        groups = comps["group"]
        if groups.size and (groups == groups[0]).all():
            parts: list[tuple[int, np.ndarray]] = [(int(groups[0]), comps)]
        else:
            parts = [(int(g), comps[groups == g]) for g in np.unique(groups)]
        for group, part in parts:
            task = self._tasks.get(group)
            if task is None:  # a cancelled task's stragglers: just give the buffers back
                self.engine.release_many(part["buf_id"])
                continue
            try:
                resolved = task.on_completions(part)
            except Exception as exc:  # a bug in a task: fail it, keep the loader alive
                task.fail(exc)
                resolved = task.io_pending
            task.io_pending -= resolved
            self._inflight -= resolved
            self._after(task)

    def _cancel_now(self, task: Task) -> None:
        """Cancel a task's engine group; it retires once the engine is done with it
        (``_drained``), so its error never reaches the caller while its ops still run."""
        if self._tasks.pop(task.group, None) is None:
            return
        self.engine.cancel_group(task.group)
        self._inflight -= task.io_pending
        task.io_pending = 0
        self._draining.append(task)

    def _drained(self) -> None:
        """Retire the cancelled tasks the engine holds nothing of any more."""
        eng = self.engine
        left = []
        for task in self._draining:
            if eng.group_pending(task.group):
                left.append(task)
            else:
                task.retire_io()
        self._draining = left

    def _lost_completions(self) -> None:
        """The engine has nothing pending but tasks wait for ranges: fail them."""
        for task in list(self._tasks.values()):
            if task.io_pending:
                task.fail(
                    RuntimeError(
                        f"lsio engine lost {task.io_pending} completions of group {task.group}"
                    )
                )
                self._cancel_now(task)
        self._inflight = sum(t.io_pending for t in self._tasks.values())


_default: Loader | None = None
_default_direct: Loader | None = None
_default_lock = threading.Lock()


def default_loader(direct: bool = False) -> Loader:
    """The process-wide loader (made on first use, closed at exit).

    ``direct=True``: the one arrays opened with ``direct=True`` share.  Its engine
    registers its pool with io_uring (``register_buffers``), so an O_DIRECT read into it
    is a fixed-buffer read: the kernel does not look up and pin the buffer's pages for
    every read (``gup_fast_fallback`` in ``perf``).  Measured here on random crops (A/B, 600
    crops): 9-12% more crops/s than buffered reads, 5-11% more than unregistered O_DIRECT
    reads (BENCHMARKS.md, issue 3).  The cost, once per process:
    the pool (``pool_bytes``, 256 MiB) is made resident and pinned when the engine
    starts, 0.1-0.7 s here.  Where registering is not allowed (``RLIMIT_MEMLOCK``) the
    engine reads without it."""
    global _default, _default_direct
    with _default_lock:
        if direct:
            if _default_direct is None or _default_direct.closed:
                _default_direct = Loader(register_buffers=True)
                atexit.register(_default_direct.close)
            return _default_direct
        if _default is None or _default.closed:
            _default = Loader()
            atexit.register(_default.close)
        return _default


def set_default_loader(loader: Loader | None) -> Loader | None:
    """Replace the process-wide loader of buffered arrays (``direct=False``); returns
    the previous one (not closed)."""
    global _default
    with _default_lock:
        old, _default = _default, loader
        return old
