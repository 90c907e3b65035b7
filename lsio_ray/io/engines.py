"""The IO service's engine: the C engine for local files and, from the first URL on, the
object-storage backend, behind the one interface the service and its tasks use.

:class:`Engines` has the :class:`~lsio_ray.io._core.RawEngine` methods the service calls
(``submit``, ``reap``, ``release``, ``release_many``, ``decode``, ``decode_end``,
``owned_view``, ``cancel_group``, ``group_pending``, ``wake``, ``stats``, ``close``).
Until a batch names a URL it *is* the C engine: its hot methods are the C engine's bound
methods themselves (no Python layer per call; a batch is checked for ``://`` with one
``bytes`` search).  The first URL starts :class:`~lsio_ray.io.remote.RemoteBackend` and
swaps in methods that route by buffer id (:data:`~lsio_ray.io.remote.REMOTE_BIT`) and by
file (a URL or a path).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from lsio_ray.io._core import RawEngine, decode_chunks, view
from lsio_ray.io.remote import REMOTE_BIT, RemoteBackend, current_settings
from lsio_ray.io.request import address
from lsio_ray.io.url import REMOTE_SCHEMES, scheme_of

__all__ = ["Engines"]

_STAT_SUMS = ("files_pending", "ranges_pending", "completions_ready", "inflight", "starved")


class Engines:
    """The C engine ``raw`` and, once needed, a remote backend sharing its pool bound."""

    def __init__(self, raw: RawEngine) -> None:
        self.raw = raw
        self.remote: RemoteBackend | None = None
        self._remote_settings = current_settings()  # read on the maker's thread
        self._counter_lock = threading.Lock()
        self._in_raw_reap = False  # shared decode counters of remote buffers
        self.backend = raw.backend
        self.features = raw.features
        self.pool_bytes = raw.pool_bytes
        self.release = raw.release
        self.release_many = raw.release_many
        self.decode = raw.decode
        self.decode_end = raw.decode_end
        self.owned_view = raw.owned_view
        self.reap = raw.reap
        self.stats = raw.stats
        self.cancel_group = raw.cancel_group
        self.group_pending = raw.group_pending

    def __getattr__(self, name: str) -> Any:  # the rest of the C engine's surface
        return getattr(self.raw, name)

    @property
    def closed(self) -> bool:
        """True once closed."""
        return bool(self.raw.closed)

    # -- submit --------------------------------------------------------------------------
    def submit(self, files: np.ndarray, ranges: np.ndarray, paths: bytes) -> None:
        """Queue a batch: local files on the C engine, URLs on the remote backend."""
        if b"://" not in paths:
            self.raw.submit(files, ranges, paths)
            return
        remote = self._remote_mask(files, paths)
        if not remote.any():
            self.raw.submit(files, ranges, paths)
            return
        backend = self._start_remote()
        nr = files["nranges"].astype(np.int64)
        per_range = np.repeat(remote, nr)
        if remote.all():
            backend.submit(files, ranges, paths)
            return
        backend.submit(files[remote], ranges[per_range], paths)
        self.raw.submit(files[~remote], ranges[~per_range], paths)

    @staticmethod
    def _remote_mask(files: np.ndarray, paths: bytes) -> np.ndarray:
        out = np.zeros(len(files), bool)
        for i, off in enumerate(files["path_off"].tolist()):
            if b"://" in paths[off : off + 24]:  # a scheme is short
                end = paths.index(b"\0", off)
                s = scheme_of(paths[off:end].decode(errors="replace"))
                out[i] = s in REMOTE_SCHEMES
        return out

    def _start_remote(self) -> RemoteBackend:
        if self.remote is None:
            self.remote = RemoteBackend(self.pool_bytes, self._remote_landed, self._remote_settings)
            self.release = self._release
            self.release_many = self._release_many
            self.decode = self._decode
            self.decode_end = self._decode_end
            self.owned_view = self._owned_view
            self.reap = self._reap
            self.stats = self._stats
            self.cancel_group = self._cancel_group
            self.group_pending = self._group_pending
        return self.remote

    # -- routed methods (after the first URL) --------------------------------------------
    def _release(self, buf_id: int) -> None:
        if buf_id & REMOTE_BIT:
            assert self.remote is not None
            self.remote.release(buf_id)
        else:
            self.raw.release(buf_id)

    def _release_many(self, buf_ids: np.ndarray) -> None:
        ids = np.asarray(buf_ids, np.uint64)
        rem = (ids & np.uint64(REMOTE_BIT)) != 0
        if rem.any():
            assert self.remote is not None
            self.remote.release_many(ids[rem])
            ids = ids[~rem]
        if ids.size:
            self.raw.release_many(ids)

    def _split_jobs(self, jobs: np.ndarray) -> np.ndarray:
        return (jobs["buf_id"] & np.uint64(REMOTE_BIT)) != 0

    def _decode(self, spec: Any, jobs: np.ndarray) -> int:
        rem = self._split_jobs(jobs)
        if not rem.any():
            return self.raw.decode(spec, jobs)
        if rem.all() and jobs.flags.c_contiguous:  # all remote: decode them in place
            ends = jobs[["buf_id", "refcnt"]].copy()
            jobs["buf_id"] = 0
            try:
                return decode_chunks(spec, jobs)
            finally:
                self._end_remote(ends)
        sub = np.ascontiguousarray(jobs[rem])
        ends = sub[["buf_id", "refcnt"]].copy()
        sub["buf_id"] = 0
        try:
            failed = decode_chunks(spec, sub)
        finally:
            self._end_remote(ends)
        jobs["status"][rem] = sub["status"]
        jobs["detail"][rem] = sub["detail"]
        if rem.all():
            return failed
        local = np.ascontiguousarray(jobs[~rem])
        failed += self.raw.decode(spec, local)
        jobs["status"][~rem] = local["status"]
        jobs["detail"][~rem] = local["detail"]
        return failed

    def _end_remote(self, jobs: np.ndarray) -> None:
        """End decode jobs on remote bytes as the C decoder ends its own (decode.c
        ``end_job``): a job with a ``refcnt`` counter releases its buffer only when it
        brings the counter to zero; one without releases it."""
        assert self.remote is not None
        done: list[int] = []
        with self._counter_lock:
            for bid, rc in zip(jobs["buf_id"].tolist(), jobs["refcnt"].tolist(), strict=True):
                if not bid:
                    continue
                if rc:
                    cnt = view(rc, 4).view(np.int32)
                    cnt[0] -= 1
                    if cnt[0] != 0:
                        continue
                done.append(bid)
        if done:  # one lock round trip for the batch
            self.remote.release_many(np.array(done, np.uint64))

    def _decode_end(self, jobs: np.ndarray) -> None:
        rem = self._split_jobs(jobs)
        if rem.any():
            self._end_remote(jobs[rem])
        if (~rem).any():
            self.raw.decode_end(np.ascontiguousarray(jobs[~rem]))

    def _owned_view(self, ptr: int, length: int, buf_id: int) -> np.ndarray:
        if not buf_id & REMOTE_BIT:
            return self.raw.owned_view(ptr, length, buf_id)
        assert self.remote is not None
        keep = self.remote.buffer(buf_id)
        arr = view(ptr, length).copy() if keep is None else _pinned(keep, ptr, length)
        self.remote.release(buf_id)
        return arr

    def _reap(self, max_n: int = 4096, min_n: int = 1, timeout_ms: int = -1) -> np.ndarray:
        assert self.remote is not None
        got = self.remote.take(max_n)
        if got.size >= min_n:
            return got
        if self.raw.busy():
            self._in_raw_reap = True  # a remote completion must wake the C engine's wait
            try:
                if self.remote.ready():  # landed between the take and now
                    timeout_ms = 0
                more = self.raw.reap(max_n - got.size, max(1, min_n - got.size), timeout_ms)
            finally:
                self._in_raw_reap = False
        else:
            self.remote.wait(timeout_ms / 1000 if timeout_ms >= 0 else 1.0)
            more = self.remote.take(max_n - got.size)
        if got.size == 0:
            return more
        return np.concatenate([got, more]) if more.size else got

    def _wake_all(self) -> None:
        self.raw.wake()
        if self.remote is not None:
            self.remote.notify()

    def _remote_landed(self) -> None:
        """A remote completion is ready: wake the IO thread where it waits (the C
        engine's reap only when it is in one: a wake costs a syscall)."""
        if self._in_raw_reap:
            self.raw.wake()

    def wake(self) -> None:
        """Make a thread blocked in :meth:`reap` return."""
        self._wake_all()

    def _stats(self) -> dict[str, int]:
        st = self.raw.stats()
        assert self.remote is not None
        rs = self.remote.stats()
        st.update(rs)
        st["files_pending"] += rs["remote_files_pending"]
        st["ranges_pending"] += rs["remote_ranges_pending"]
        st["completions_ready"] += rs["remote_completions_ready"]
        st["inflight"] += rs["remote_inflight"]
        st["starved"] += rs["remote_starved"]
        return st

    def _cancel_group(self, group: int) -> int:
        assert self.remote is not None
        return int(self.raw.cancel_group(group)) + self.remote.cancel_group(group)

    def _group_pending(self, group: int) -> int:
        assert self.remote is not None
        return int(self.raw.group_pending(group)) + self.remote.group_pending(group)

    def detail(self, group: int, tag: int) -> str | None:
        """The object store's answer for a failed range (None for local files)."""
        return None if self.remote is None else self.remote.detail(group, tag)

    def close(self) -> None:
        """Stop the remote backend, then free the C engine."""
        if self.remote is not None:
            self.remote.close()
        self.raw.close()


def _pinned(buf: Any, ptr: int, length: int) -> np.ndarray:
    """A view of ``length`` bytes at ``ptr`` inside obstore ``buf`` that keeps it alive."""
    whole = np.frombuffer(buf, np.uint8)
    start = ptr - address(whole) if whole.size else 0
    return whole[start : start + length]
