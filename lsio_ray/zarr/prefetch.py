"""Reads started ahead of the calls that will ask for them (:meth:`Array.prefetch`).

A loop reading one region per call (``for box in boxes: use(a[box])``, what a PyTorch
``Dataset.__getitem__`` does) waits for each read's IO and decode in turn, and the cores
idle while the caller uses the result.  Told the next regions, the array starts reading
them now; a later ``a[region]`` (or :meth:`~lsio_ray.zarr.Array.read`) of exactly that
region takes the read already under way instead of starting one.

Bounded: at most ``max_bytes`` of outputs (default :data:`~lsio_ray.zarr.stream.WINDOW_BYTES`)
and ``max_reads`` reads wait to be taken; starting more drops the oldest (cancelled,
their outputs discarded).  A region prefetched twice is read once.  Thread safe.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any

from lsio_ray.zarr.loader import abandon
from lsio_ray.zarr.plan import Region
from lsio_ray.zarr.stream import WINDOW_BYTES

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array
    from lsio_ray.zarr.read import BoxRead

__all__ = ["Prefetched"]


class Prefetched:
    """The reads an array started ahead, by box, oldest first."""

    def __init__(self, max_bytes: int = WINDOW_BYTES, max_reads: int = 64) -> None:
        self.max_bytes = int(max_bytes)
        self.max_reads = int(max_reads)
        self._reads: collections.OrderedDict[tuple[Any, Any], BoxRead] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.taken = 0  # reads taken by a call (for tests and benchmarks)
        self.dropped = 0  # reads dropped unused (the bound, or clear())

    def __len__(self) -> int:
        return len(self._reads)

    def start(self, array: Array, regions: list[Region]) -> None:
        """Start reading the boxes of ``regions`` not already started (in order)."""
        for reg in regions:
            key = (reg.lo, reg.hi)
            with self._lock:
                if key in self._reads:
                    continue
            task = array.start_read(reg.lo, reg.hi)
            nbytes = task.out.nbytes
            with self._lock:
                if key in self._reads:  # started by another thread meanwhile
                    old: list[BoxRead] = [task]
                else:
                    self._reads[key] = task
                    self._bytes += nbytes
                    old = self._trim()
            self._drop(old)

    def take(self, reg: Region) -> BoxRead | None:
        """The read started for ``reg``'s box, removed from the set (or None)."""
        with self._lock:
            task = self._reads.pop((reg.lo, reg.hi), None)
            if task is not None:
                self._bytes -= task.out.nbytes
                self.taken += 1
        return task

    def clear(self) -> None:
        """Cancel every read not taken."""
        with self._lock:
            old = list(self._reads.values())
            self._reads.clear()
            self._bytes = 0
        self._drop(old)

    def _trim(self) -> list[BoxRead]:
        old = []
        while len(self._reads) > 1 and (
            len(self._reads) > self.max_reads or self._bytes > self.max_bytes
        ):
            _, task = self._reads.popitem(last=False)
            self._bytes -= task.out.nbytes
            old.append(task)
        return old

    def _drop(self, tasks: list[BoxRead]) -> None:
        if tasks:
            with self._lock:
                self.dropped += len(tasks)
            abandon(tasks)
