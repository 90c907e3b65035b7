"""One buffer-pool budget per node, shared by the IO services of that node's processes.

Every Ray worker that reads holds an IO service, and every service a pool: without a
bound shared across processes, a 64-core node running 64 reading workers would map
64 pools.  The budget (the ``node_pool_bytes`` setting, ``LSIO_NODE_POOL_BYTES``;
default one sixteenth of the node's memory, within 256 MiB..8 GiB) bounds the sum.

How it is enforced: a *ledger* directory per node (the ``node_budget_dir`` setting,
``LSIO_NODE_BUDGET_DIR``; default ``/dev/shm/lsio-pools-<uid>``, a node-local tmpfs)
holds one small file per live pool, named ``<pid>-<n>`` and holding its bytes.  A
service reserves its pool before its engine maps it: under an exclusive ``flock`` of
the ledger's lock file it drops the entries of processes that are gone (the pid no
longer exists: a killed worker's entry never leaks budget), sums the rest, and is
granted the largest power of two (pools are powers of two) no larger than what it asked
for and what is left -- but never less than :data:`FLOOR_BYTES`, so a worker on a node
whose budget is spent still works, with a small pool (its reads wait on buffers
sooner: back-pressure, not failure).  The entry is removed when the service closes (or
found dead later).  The sum of the node's pools therefore stays within the budget plus
one floor per process that came after the budget was spent; :func:`node_usage` reads
the ledger (tests and ``lsio-ray`` diagnostics count it).

The process's own service (and the Ray IO actors' and in-process piece servers') take
their pools from the budget; a service made with an explicit ``pool_bytes`` is
recorded in the ledger (it counts against the others) but gets what it asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import threading
from collections.abc import Iterator

from lsio_ray.io import config

__all__ = ["FLOOR_BYTES", "Reservation", "node_usage", "reserve"]

FLOOR_BYTES = 64 << 20
"""The smallest pool a service is given when the node's budget is spent."""

_seq = itertools.count(1)
_seq_lock = threading.Lock()


def _pow2_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def _locked(ledger: str) -> Iterator[None]:
    os.makedirs(ledger, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(ledger, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _entries(ledger: str, prune: bool) -> dict[str, int]:
    """The ledger's live entries (name -> bytes); dead processes' entries removed when
    ``prune`` (the caller holds the lock)."""
    out: dict[str, int] = {}
    try:
        names = os.listdir(ledger)
    except FileNotFoundError:
        return out
    for name in names:
        pid_text, sep, _n = name.partition("-")
        if not sep or not pid_text.isdigit():
            continue
        path = os.path.join(ledger, name)
        if not _alive(int(pid_text)):
            if prune:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            continue
        try:
            with open(path, "rb") as f:
                out[name] = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            continue
    return out


def node_usage(ledger: str | None = None) -> dict[str, int]:
    """The node's live pools, entry name (``<pid>-<n>``) -> bytes."""
    return _entries(ledger or config.get("node_budget_dir"), prune=False)


class Reservation:
    """A pool's entry in the node's ledger; :meth:`release` removes it (idempotent)."""

    def __init__(self, ledger: str, name: str, nbytes: int) -> None:
        self.ledger = ledger
        self.name = name
        self.nbytes = nbytes
        self._pid = os.getpid()

    def release(self) -> None:
        """Give the bytes back to the node's budget."""
        if self.name and os.getpid() == self._pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.ledger, self.name))
        self.name = ""

    def __repr__(self) -> str:
        return f"<Reservation {self.name or '(released)'} {self.nbytes >> 20} MiB>"


def reserve(want: int, *, capped: bool = True) -> Reservation:
    """Reserve a pool of at most ``want`` bytes from the node's budget (see the module
    docstring); ``capped=False`` records ``want`` as it is (an explicit setting).  The
    granted size is ``Reservation.nbytes``."""
    ledger = config.get("node_budget_dir")
    total = int(config.get("node_pool_bytes"))
    want = 1 << (max(int(want), 1) - 1).bit_length()  # the engine rounds up likewise
    with _seq_lock:
        name = f"{os.getpid()}-{next(_seq)}"
    with _locked(ledger):
        used = sum(_entries(ledger, prune=True).values())
        grant = want
        if capped:
            grant = min(want, max(_pow2_floor(total - used), min(FLOOR_BYTES, want)))
        tmp = os.path.join(ledger, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(b"%d" % grant)
        os.replace(tmp, os.path.join(ledger, name))
    return Reservation(ledger, name, grant)
