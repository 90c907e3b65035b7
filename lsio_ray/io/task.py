"""A unit of IO work run by an :class:`~lsio_ray.io.service.IOService`."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from lsio_ray.errors import GroupCancelledError

if TYPE_CHECKING:
    from lsio_ray.io.service import IOService

__all__ = ["Task", "abandon"]


class Task:
    """A unit of IO work with its own engine group, run by an :class:`IOService`.

    Subclasses provide file-op batches (:meth:`next_batch`) and consume completions
    (:meth:`on_completions`), both on the IO thread.  Work queued on the decode pool is
    counted with :meth:`hold` / :meth:`release_hold`; the task is done when its IO is
    retired and no such work is left.  The first error wins and cancels the rest.
    """

    breaks_cycles = False  # an ordered task: the deadlock breaker looks at it

    def __init__(self, service: IOService) -> None:
        self.service = service
        self.group = service.new_group()
        self.error: BaseException | None = None
        self.remaining = 0  # units of work (chunks) not finished yet
        self.io_pending = 0  # ranges submitted and not completed (IO thread only)
        self._lock = threading.Lock()
        self._holds = 1  # the IO hold, dropped when the IO is retired
        self._io_retired = False
        self._done = threading.Event()

    # -- IO-thread interface -------------------------------------------------------------
    @property
    def loader(self) -> IOService:
        """The service running the task (the Zarr layer's name for it)."""
        return self.service

    def next_batch(self, budget: int) -> tuple[np.ndarray, np.ndarray, bytes] | None:
        """The next (files, ranges, paths) batch of at most about ``budget`` ranges, or
        None when nothing may be submitted now (the task calls :meth:`IOService.resume`
        when that changes)."""
        return None

    def has_batches(self) -> bool:
        """True while the task has file ops not yet submitted (now or later)."""
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
        self.service.cancel(self)

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
