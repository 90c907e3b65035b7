"""The remote backend's planning and parts (:mod:`lsio_ray.io.remote`): a batch's ranges
as requests, the requests' records, and the event loop the backend runs them on."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsio_ray.io._core import OP_READ

__all__ = ["Held", "Request", "Row", "new_loop", "plan_reads"]

#: a completion as the backend builds it: tag, buffer id, data address, offset, length,
#: object size, error
Row = tuple[int, int, int, int, int, int, int]


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
class Request:
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
class Held:
    """Bytes a request landed, and how many of its ranges still refer to them."""

    buf: Any  # the obstore Bytes
    refs: int
    nbytes: int


def plan_reads(group: int, u: str, rs: np.ndarray, gap: int, max_request: int) -> list[Request]:
    """One object's ranges (``RANGE_DTYPE`` rows ``rs``) as requests: exact ranges merged
    while the gap between two is at most ``gap`` and the GET stays within
    ``max_request`` bytes; suffix reads and reads to the end one request each."""
    out: list[Request] = []
    exact: list[tuple[int, int, int]] = []
    for off, ln, tag, _data in rs.tolist():
        if off < 0:
            out.append(Request(group, u, OP_READ, off, -1, [(tag, off, ln)]))
        elif ln < 0:
            out.append(Request(group, u, OP_READ, off, -1, [(tag, off, ln)]))
        else:
            exact.append((off, ln, tag))
    exact.sort()
    cur: Request | None = None
    for off, ln, tag in exact:
        end = off + ln
        if (
            cur is not None
            and off - cur.end <= gap
            and max(cur.end, end) - cur.start <= max_request
        ):
            cur.end = max(cur.end, end)
            cur.rows.append((tag, off, ln))
            continue
        cur = Request(group, u, OP_READ, off, end, [(tag, off, ln)])
        out.append(cur)
    return out
