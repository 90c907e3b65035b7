"""Whole small files read on the calling thread, from the page cache alone (issue 17:
one call cheap).

Through the IO service, a Zarr call on a few chunk files pays two thread hand-overs
(caller -> IO thread -> decode thread) and, under io_uring, a ``statx`` per file that the
kernel always runs in an io-wq worker: about 0.7 ms of a 3.9 ms call on 8 whole chunks
(``scripts/bench-percall-timeline.py --aligned``).  When the files are in the page cache,
the calling thread reads them for less (0.2-0.4 ms for 8).  When they are not, a disk
read on that thread would serialise what the engine does in parallel, so
:func:`read_cached` reads with ``preadv2(RWF_NOWAIT)`` -- bytes from the page cache, or
``EAGAIN`` -- and gives up (returns None) at the first file it cannot read that way.  The
caller then reads them all through the IO service, which also reports, naming the file,
what is wrong with a missing, special, oversized or unreadable one: this path never
raises for a file.

The engine's file checks, here too: each file is opened ``O_NONBLOCK`` (the open of a
FIFO does not wait for a writer) and ``O_NOFOLLOW``, and only a regular file -- so
``fstat`` says of the descriptor, which nothing can swap -- of at most ``limit`` bytes
is read.  One byte more than its size is asked for, so a file that grew since is not
taken short.  Memory: one buffer per calling thread, reused, as large as the largest call
asked for (``len(paths) * (limit + 1)`` bytes, 1 MiB at least; the Zarr caller keeps it
at most 64 MiB), of which only the pages the files filled are in memory.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Sequence

import numpy as np

__all__ = ["read_cached"]

_OPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)  # Linux >= 4.14; without it nothing is read here
_local = threading.local()


def read_cached(paths: Sequence[bytes], limit: int) -> list[np.ndarray] | None:
    """Each file of ``paths`` whole, as a ``uint8`` array, read on this thread from the
    page cache; None as soon as one is not a regular file of 1 to ``limit`` bytes
    held wholly in the page cache, or cannot be opened or read (see the module's
    docstring): then nothing is returned and the caller reads them another way.

    The arrays are views of one buffer that this thread reuses (fresh pages for every
    call cost page faults, 0.3-0.6 ms for 32 files): they are valid until the thread's
    next call, which overwrites them.  The files are packed one after the other in it:
    of its ``len(paths) * (limit + 1)`` bytes only those the files take are touched."""
    if not _NOWAIT:
        return None
    buf = _buffer(len(paths) * (limit + 1))
    out, at = [], 0
    for path in paths:
        try:
            fd = os.open(path, _OPEN)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            size = st.st_size
            if not stat.S_ISREG(st.st_mode) or not 0 < size <= limit:
                return None
            part = buf[at : at + size + 1]  # one byte more: a file that grew is not taken short
            if os.preadv(fd, [part], 0, _NOWAIT) != size:  # short: not all cached; or grew
                return None
        except OSError:  # EAGAIN: not in the page cache; or a read error
            return None
        finally:
            os.close(fd)
        out.append(part[:size])
        at += size + 1
    return out


def _buffer(nbytes: int) -> np.ndarray:
    """This thread's read buffer, grown to at least ``nbytes``."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(max(nbytes, 1 << 20), np.uint8)  # pages are faulted in as used
        _local.buf = buf
    return buf
