"""Ordered delivery: one op group's results handed to one consumer in operation order
(or as they land), with the one deadlock breaker.

An :class:`OrderedGroup` is a :class:`~lsio_ray.io.task.Task` of the process's
:class:`~lsio_ray.io.service.IOService`: the IO thread submits its operations (all at
once, or only so far ahead of the consumer: ``ahead_ranges``/``ahead_bytes``), files its
completions in numpy arrays (no Python object per result), and the consumer takes runs
of landed results with :meth:`OrderedGroup.take`.  The local :class:`lsio_ray.Engine`
makes a :class:`~lsio_ray.Chunk` of each; the Ray IO actor copies them into batches.

Ordered delivery could deadlock a bounded pool: later results held while an earlier one
waits for a buffer.  :func:`break_wait_cycle` (run by the IO thread when a reap comes
back empty) breaks that cycle: when a consumer waits, the engine is starved and nothing
is in flight, it moves results that landed but were not taken yet out of the pool --
those the consumers will reach last first, and only as many bytes as the waiting read
needs.  Each is *copied* while the copies held stay within the service's ``spill_limit``
(one pool: memory stays within twice the pool bound); beyond that it is *dropped*
(``evicted``) and read again only when the consumer reaches it, so memory never grows
further, a dropped result never competes for buffers with the reads needed before it,
and each pass lets the waited-for read start.  A result read again is read at the
offset and length it had resolved to; if its file changed or vanished meanwhile, that
one result reports the new bytes or error.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lsio_ray.errors import GroupCancelledError
from lsio_ray.io._core import C_FILE_ERROR, COMPLETION_DTYPE, view
from lsio_ray.io.request import Request, address
from lsio_ray.io.task import Task

if TYPE_CHECKING:
    from lsio_ray.io.service import IOService

__all__ = ["Order", "OrderedGroup", "break_wait_cycle"]

Order = Literal["operation", "completion"]

# Ranges per submission slice: an ordered group may queue this many whatever the
# service's max_inflight says (the Zarr tasks' cap): with 4,096 a group of 65,536 random
# 4 KiB reads ran 12% slower than submitting it whole (scripts/ab-checkouts.py
# engine-ranges), with 16,384 within noise of it.
_SLICE_RANGES = 16384


class OrderedGroup(Task):
    """One request's results for one consumer, in ``order``.

    ``ahead_ranges``/``ahead_bytes`` (operation order): submit only so far ahead of
    what the consumer has taken (None: no bound but the service's ``max_inflight``).
    ``keep``: objects kept alive until the group ends (the write payloads' owners).
    Completions are filed under the group's condition; :meth:`take` hands the consumer
    runs of them, each result's pool buffer then the consumer's to release.
    """

    breaks_cycles = True

    def __init__(
        self,
        service: IOService,
        request: Request,
        *,
        order: Order = "operation",
        ahead_ranges: int | None = None,
        ahead_bytes: int | None = None,
        keep: Any = None,
    ) -> None:
        super().__init__(service)
        self.request = request
        self.order = order
        self.keep = keep
        n = request.total
        self.total = n
        self.remaining = n
        self.op_first = request.op_first()
        self.range_op = request.range_ops()
        self.rows = np.zeros(n, COMPLETION_DTYPE)
        self.have = np.zeros(n, bool)  # landed (or stood for by its op's file error)
        self.skip = np.zeros(n, bool)  # stood for by its op's file error: no own result
        self.known = np.zeros(n + 1, np.int64)
        np.cumsum(np.maximum(request.lengths, 0), out=self.known[1:])
        self.op_known = self.known[self.op_first]
        self.cursor = 0  # operation order: the next result to hand out
        self.fifo: list[np.ndarray] = []  # completion order: tags landed, not taken
        self.landed = 0  # results landed (a file error counts for the ranges it stands for)
        self.taken = 0  # results handed out
        self.next_op = 0  # the next op to submit
        self.ahead_ranges = ahead_ranges
        self.ahead_bytes = ahead_bytes
        self.blocked = False  # submission waits for the consumer (ahead bounds)
        self.cond = threading.Condition()
        self.waiting = 0  # consumers blocked in take
        self.cancelled = False
        self.consumer_done = False
        # the deadlock breaker's state: copies (tag -> array, counted in the service's
        # spill_held), results dropped from the pool (tag -> resolved offset, length) and
        # those queued / submitted to be read again
        self.spilled: dict[int, np.ndarray] = {}
        self.parked: dict[int, tuple[int, int]] = {}
        self.reread_queue: list[int] = []
        self.rereading: set[int] = set()

    # -- the IO thread -------------------------------------------------------------------
    def has_batches(self) -> bool:
        return not self.cancelled and (self.next_op < self.request.nops or bool(self.reread_queue))

    def next_batch(self, budget: int) -> tuple[np.ndarray, np.ndarray, bytes] | None:
        with self.cond:
            if self.cancelled:
                return None
            if self.reread_queue:
                tags = np.array(self.reread_queue, np.uint64)
                self.reread_queue = []
                spans = [self.parked.pop(int(t)) for t in tags]
                offs = np.array([sp[0] for sp in spans], np.int64)
                lens = np.array([sp[1] for sp in spans], np.int64)
                self.rereading.update(int(t) for t in tags)
                return self.request.reread_arrays(self.group, tags, offs, lens)
            lo = self.next_op
            nops = self.request.nops
            if lo >= nops:
                return None
            r0 = int(self.op_first[lo])
            limit_r = max(budget, _SLICE_RANGES)
            limit_b = None
            if self.ahead_ranges is not None:
                limit_r = min(limit_r, self.cursor + self.ahead_ranges - r0)
            if self.ahead_bytes is not None:
                limit_b = int(self.known[self.cursor]) + self.ahead_bytes - int(self.known[r0])
                if limit_b <= 0:
                    limit_r = 0
            if limit_r <= 0:
                self.blocked = True
                return None
            hi = int(np.searchsorted(self.op_first, r0 + limit_r, "right")) - 1
            if limit_b is not None:
                hb = int(np.searchsorted(self.op_known, int(self.known[r0]) + limit_b, "right"))
                hi = min(hi, hb - 1)
            hi = max(lo + 1, min(hi, nops))
            self.next_op = hi
        return self.request.c_arrays(self.group, lo, hi)

    def on_completions(self, comps: np.ndarray) -> int:
        release: np.ndarray | None = None
        with self.cond:
            if self.cancelled:
                release = comps["buf_id"]
                resolved = self.io_pending
            else:
                resolved = self._file(comps)
                self.cond.notify_all()
        if release is not None:
            self.service.engine.release_many(release)
        return resolved

    def _file(self, comps: np.ndarray) -> int:
        tags = comps["tag"].astype(np.int64)
        fe = (comps["flags"] & C_FILE_ERROR) != 0
        special = fe.any() or bool(self.rereading)
        if not special:
            self.rows[tags] = comps
            self.have[tags] = True
            self.landed += len(tags)
            if self.order == "completion":
                self.fifo.append(tags)
            return len(tags)
        resolved = 0
        for k, tag in enumerate(tags.tolist()):
            if tag in self.rereading:
                # a dropped result read again stands for itself alone, even when its
                # file failed this time (the op's other ranges landed before)
                self.rereading.discard(tag)
                n = 1
                stood = np.array([tag])
            elif fe[k]:
                end = int(self.op_first[self.range_op[tag] + 1])
                stood = np.flatnonzero(~self.have[tag:end]) + tag
                self.skip[stood[stood != tag]] = True
                n = len(stood)
                if self.order == "completion":
                    self.taken += n - 1  # they come as the one error result
            else:
                n = 1
                stood = np.array([tag])
            self.rows[stood] = comps[k]
            self.have[stood] = True
            self.landed += n
            resolved += n
            if self.order == "completion":
                self.fifo.append(np.array([tag]))
        return resolved

    def io_finished(self) -> bool:
        return self.io_pending == 0 and (self.consumer_done or self.cancelled)

    # -- the consumer --------------------------------------------------------------------
    def take(self, timeout: float | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """The next run of landed results: their request-local tags (in order) and their
        completion rows (a copy: each row's pool buffer is now the caller's to release;
        a row moved out of the pool has ``buf_id`` 0 and its copy comes from
        :meth:`pop_spilled`); None when every result has been handed out.  Results a
        file error stands for (``skip``) come in the run; a consumer wanting one result
        per failed file leaves them out.  Raises the service's failure, on cancellation
        :class:`~lsio_ray.errors.GroupCancelledError`, ``TimeoutError`` after
        ``timeout`` seconds without a result."""
        with self.cond:
            while True:
                if self.error is not None:
                    raise self.error
                if self.cancelled:
                    raise GroupCancelledError(f"group {self.group} was cancelled")
                tags = self._ready()
                if tags is not None:
                    rows = self.rows[tags]
                    self.rows["buf_id"][tags] = 0
                    self.taken += len(tags)
                    more = self.blocked
                    self.blocked = False
                    if self.taken >= self.total:
                        self.consumer_done = True
                        more = True
                    break
                if self.taken >= self.total:
                    self.consumer_done = True
                    if self.blocked or self.io_pending == 0:
                        self.service.resume(self)
                    return None
                if self.parked:
                    self._unpark()
                self.waiting += 1
                try:
                    got = self.cond.wait(timeout)
                finally:
                    self.waiting -= 1
                if not got:
                    raise TimeoutError(f"group {self.group}: no result within {timeout} s")
        if more:
            self.service.resume(self)
        return tags, rows

    def _ready(self) -> np.ndarray | None:
        if self.order == "completion":
            if not self.fifo:
                return None
            tags = np.concatenate(self.fifo) if len(self.fifo) > 1 else self.fifo[0]
            self.fifo = []
            return tags
        a = self.cursor
        if a >= self.total or not self.have[a]:
            return None
        # the first gap after a, looked for in growing windows (not the whole rest:
        # that would make a long group quadratic in its takes)
        b, w = a, 1024
        while b < self.total:
            win = self.have[b : b + w]
            gap = int(np.argmin(win))
            if not win[gap]:
                b += gap
                break
            b += len(win)
            w *= 4
        self.cursor = b
        return np.arange(a, b, dtype=np.int64)

    def pop_spilled(self, tag: int) -> np.ndarray | None:
        """The copy of a result the deadlock breaker moved out of the pool (None if it was
        not moved); the copy is the caller's from now on."""
        with self.cond:
            arr = self.spilled.pop(tag, None)
        if arr is not None:
            self.service.spill_freed(arr.nbytes)
        return arr

    def head_need(self) -> int:
        """Bytes the result the consumer waits for will need, when the request says so
        (an explicit range of the next operation-order result), else 0."""
        if self.order != "operation" or self.cursor >= self.total:
            return 0
        req = self.request
        off, ln = int(req.offsets[self.cursor]), int(req.lengths[self.cursor])
        return max(ln, 0) if off >= 0 else 0

    def _unpark(self) -> None:
        """Queue dropped results to be read again, now that the consumer waits for them:
        in operation order, when the one it waits for is parked, that one and the parked
        ones after it; in completion order, any; up to half a pool of bytes (at least
        one).  Called with ``cond`` held.  Parked results are not queued earlier: queued,
        they would take buffers ahead of the results the consumer needs first and be
        dropped again."""
        if self.order == "operation":
            if self.cursor not in self.parked:
                return
            tags = sorted(t for t in self.parked if t >= self.cursor)
        else:
            tags = sorted(self.parked)
        budget = self.service.pool_bytes // 2
        todo: list[int] = []
        nbytes = 0
        queued = set(self.reread_queue)
        for t in tags:
            if t in queued:
                continue
            ln = self.parked[t][1]
            if todo and nbytes + ln > budget:
                break
            todo.append(t)
            nbytes += ln
        if todo:
            self.reread_queue.extend(todo)
            self.service.resume(self)

    # -- the deadlock breaker ------------------------------------------------------------
    def in_pool(self) -> np.ndarray:
        """Tags of results landed, not taken, holding a pool buffer (a snapshot)."""
        with self.cond:
            if self.cancelled:
                return np.zeros(0, np.int64)
            if self.order == "operation":
                lo = self.cursor
                cand = np.flatnonzero(self.have[lo:] & (self.rows["buf_id"][lo:] != 0)) + lo
                return cand
            if not self.fifo:
                return np.zeros(0, np.int64)
            tags = np.concatenate(self.fifo)
            return tags[self.rows["buf_id"][tags] != 0]

    def take_out(self, tag: int, copy: bool) -> int:
        """Move one landed result out of the pool (IO thread): copy its bytes (``copy``)
        or drop it to be read again.  Returns the buffer id to release, 0 when the
        consumer took it meanwhile."""
        with self.cond:
            row = self.rows[tag]
            buf = int(row["buf_id"])
            if self.cancelled or not buf or not self.have[tag]:
                return 0
            if self.order == "operation" and tag < self.cursor:
                return 0
            if self.order == "completion":
                hit = False
                for k, arr in enumerate(self.fifo):
                    if (arr == tag).any():
                        if not copy:
                            self.fifo[k] = arr[arr != tag]
                        hit = True
                        break
                if not hit:
                    return 0
            n = int(row["length"])
            if copy:
                arr = view(int(row["data"]), n).copy()
                self.spilled[tag] = arr
                self.rows["data"][tag] = address(arr)
            else:
                self.have[tag] = False
                self.landed -= 1
                self.parked[tag] = (int(row["offset"]), n)
            self.rows["buf_id"][tag] = 0
            return buf

    def cancel_held(self) -> None:
        """Mark cancelled and give back every buffer and copy held (any thread)."""
        with self.cond:
            if self.cancelled:
                return
            self.cancelled = True
            held = self.rows["buf_id"][self.have & (self.rows["buf_id"] != 0)]
            self.rows["buf_id"][:] = 0
            copies = sum(a.nbytes for a in self.spilled.values())
            self.spilled.clear()
            self.parked.clear()
            self.reread_queue = []
            self.fifo = []
            self.keep = None
            self.cond.notify_all()
        self.service.spill_freed(copies)
        if held.size and not self.service.engine.closed:
            self.service.engine.release_many(held)

    def fail(self, exc: BaseException) -> None:
        """Record the first error, cancel the group's IO and give held buffers back: the
        consumer's next :meth:`take` raises the error."""
        super().fail(exc)
        self.cancel_held()


def break_wait_cycle(service: IOService, st: dict[str, int]) -> bool:
    """Break the one wait cycle a bounded pool can have (see the module docstring): a
    consumer blocked on a result that cannot be read because landed-but-untaken results
    hold every buffer.  Only then are results moved out of the pool; a consumer that
    simply holds what it took is back-pressure, and nothing is moved for it.

    Moved first are the results the consumers will reach last (groups nobody waits on,
    latest first; then the latest results of the waited-on groups), and only until the
    bytes freed cover the waited-for read (its length when the request gives it, else
    the largest landed result; at least one result): a later pass, a few milliseconds
    on, moves more if the read still cannot start.  Runs on the IO thread with the
    engine's ``stats()``; returns True when something was moved."""
    # Stuck: reads stalled on the pool since the last look (the starved count moved), or
    # no op issued at all since the last look (one reap timeout ago) -- with nothing in
    # flight and work pending either way.  The second, level test matters: a stall seen
    # while no consumer waited leaves the count still afterwards, since the C scheduler
    # retries only on a release.
    idle = st["ops_submitted"] == service._last_ops
    service._last_ops = st["ops_submitted"]
    if st["inflight"] or not st["files_pending"]:
        return False
    if st["starved"] == service._last_starved and not idle:
        return False
    service._last_starved = st["starved"]
    groups: list[OrderedGroup] = sorted(service._ordered.values(), key=lambda g: g.group)
    waiting = [g for g in groups if g.waiting]
    if not waiting:
        return False
    cands: list[tuple[bool, int, int, OrderedGroup]] = []
    for g in groups:
        for t in g.in_pool().tolist():
            cands.append((not g.waiting, g.group, t, g))
    if not cands:
        return False
    cands.sort(key=lambda c: (c[0], c[1], c[2]), reverse=True)
    need = max(g.head_need() for g in waiting) or max(int(c[3].rows["length"][c[2]]) for c in cands)
    ids: list[int] = []
    freed = 0
    for _, _, tag, g in cands:
        if ids and freed >= need:
            break
        n = int(g.rows["length"][tag])
        copy = service.spill_reserve(n)
        buf = g.take_out(tag, copy)
        if not buf:
            if copy:
                service.spill_freed(n)
            continue
        with service._spill_lock:
            if copy:
                service.spilled += 1
                service.spilled_bytes += n
            else:
                service.evicted += 1
        ids.append(buf)
        freed += max(n, 1)
    if ids:
        service.engine.release_many(np.array(ids, np.uint64))
    return bool(ids)
