"""The user's vocabulary: byte ranges with metadata, operations, op groups.

>>> from lsio_ray import ByteRange, OpGroup, get_ranges, put_file
>>> g = OpGroup([get_ranges("foo.0.0"), get_ranges("foo.0.1", [ByteRange(0, 100, "head")])],
...             metadata="foo_0")

A byte range is one of: the whole file (``ByteRange()``), ``start:end``
(``ByteRange(start, end)``), from an offset to the end (``ByteRange(start)``), or the last
``n`` bytes (``ByteRange.last(n)``, i.e. ``start=-n``).  Each carries the caller's metadata
(e.g. chunk coordinates), handed back with its result.

Ranges and the end of the file: a range must end at or before the end of its file.  A
range starting exactly at the end reads 0 bytes (``5:5`` or ``5:`` of a 5-byte file,
``0:0`` or the whole of an empty file); a range starting past the end fails with
:class:`~lsio_ray.RangePastEOFError`, even when it is 0 bytes long (``10:10`` of a 5-byte
file); ``last(n)`` fails on a file shorter than ``n`` bytes.  The error names the path,
the range as asked (``10..10``, ``6.. (to the end)``, ``last 10 bytes``) and the file
length, and fails that range alone.

For hundreds of thousands of ranges, pass numpy arrays instead of objects:
``get_ranges(path, starts=..., ends=..., metadata=...)`` builds no Python object per range.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lsio_ray.io.url import resolve

__all__ = ["ByteRange", "OpGroup", "Operation", "get_ranges", "put_file", "put_ranges"]

Kind = Literal["get", "put_file", "put_ranges"]


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``[start, end)`` of a file, with the caller's metadata.

    ``end=None`` means "to the end of the file"; a negative ``start`` with ``end=None``
    means "the last ``-start`` bytes".  The range must lie within the file when read
    (``start == end == file length`` is an empty read; see the module docstring).
    """

    start: int = 0
    end: int | None = None
    metadata: Any = None

    def __post_init__(self) -> None:
        if self.start < 0 and self.end is not None:
            raise ValueError(
                f"ByteRange({self.start}, {self.end}): a negative start (last n bytes) "
                "cannot have an end"
            )
        if self.end is not None and self.end < self.start:
            raise ValueError(f"ByteRange({self.start}, {self.end}): end is before start")

    @classmethod
    def whole(cls, metadata: Any = None) -> ByteRange:
        """The whole file."""
        return cls(0, None, metadata)

    @classmethod
    def span(cls, start: int, end: int, metadata: Any = None) -> ByteRange:
        """Bytes ``start:end``."""
        return cls(start, end, metadata)

    @classmethod
    def from_offset(cls, start: int, metadata: Any = None) -> ByteRange:
        """From ``start`` to the end of the file (empty when ``start`` is the file length;
        a start past the end fails when read)."""
        if start < 0:
            raise ValueError(f"from_offset({start}): offset must be >= 0 (use last(n))")
        return cls(start, None, metadata)

    @classmethod
    def last(cls, n: int, metadata: Any = None) -> ByteRange:
        """The last ``n`` bytes of the file (a file shorter than ``n`` bytes fails when read,
        with an error naming ``last n bytes`` and the file length)."""
        if n <= 0:
            raise ValueError(f"last({n}): n must be positive")
        return cls(-n, None, metadata)

    def to_c(self) -> tuple[int, int]:
        """(offset, length) as the C core takes them: length -1 means to the end."""
        if self.end is None:
            return self.start, -1
        return self.start, self.end - self.start

    def __str__(self) -> str:
        if self.start < 0:
            return f"last {-self.start} bytes"
        return f"{self.start}:{'' if self.end is None else self.end}"


RangeLike = ByteRange | slice | tuple[int, int | None]


def _as_range(r: RangeLike) -> ByteRange:
    if isinstance(r, ByteRange):
        return r
    if isinstance(r, slice):
        if r.step not in (None, 1):
            raise ValueError(f"byte range {r}: a step is not supported")
        return ByteRange(r.start or 0, r.stop)
    if isinstance(r, tuple) and len(r) == 2:
        return ByteRange(int(r[0]), None if r[1] is None else int(r[1]))
    raise TypeError(f"not a byte range: {r!r} (use ByteRange, a slice or (start, end))")


@dataclass(slots=True)
class Operation:
    """One file's worth of work: get ranges, put a whole file, or put ranges.

    Build with :func:`get_ranges`, :func:`put_file` or :func:`put_ranges`.  Ranges are
    stored as two int64 arrays (``offsets``, ``lengths``; length -1 = to the end) plus an
    optional metadata sequence, so a million ranges cost two arrays, not a million objects.
    """

    kind: Kind
    path: str
    offsets: np.ndarray
    lengths: np.ndarray
    metadata: Sequence[Any] | None = None
    data: list[Any] = field(default_factory=list)
    direct: bool = False
    fsync: bool = False
    create: bool = False

    def __len__(self) -> int:
        return len(self.offsets)

    def range_metadata(self, i: int) -> Any:
        """Metadata of range ``i`` (None when none was given)."""
        return None if self.metadata is None else self.metadata[i]

    def describe_range(self, i: int) -> str:
        """``start:end`` of range ``i`` as asked, for messages."""
        off, ln = int(self.offsets[i]), int(self.lengths[i])
        if off < 0:
            return f"last {-off} bytes"
        return f"{off}:{'' if ln < 0 else off + ln}"


def get_ranges(
    path: str | Any,
    ranges: Iterable[RangeLike] | None = None,
    *,
    starts: Any = None,
    ends: Any = None,
    metadata: Sequence[Any] | None = None,
    direct: bool = False,
) -> Operation:
    """Read byte ranges of one file (the whole file when no range is given).

    Either ``ranges`` (ByteRange objects, slices or ``(start, end)`` tuples; an ``end`` of
    None reads to the end of the file), or numpy-friendly ``starts``/``ends`` arrays
    (``ends`` may be omitted: each range then runs to the end; an end of -1 too).
    ``metadata``: one item per range (overrides ByteRange.metadata).  ``direct``: O_DIRECT.
    """
    path = _path(path)
    if starts is not None:
        if ranges is not None:
            raise ValueError("give ranges or starts/ends, not both")
        off = np.asarray(starts, dtype=np.int64).ravel()
        if ends is None:
            ln = np.full(off.shape, -1, np.int64)
        else:
            end = np.asarray(ends, dtype=np.int64).ravel()
            if end.shape != off.shape:
                raise ValueError(f"{path}: {len(off)} starts but {len(end)} ends")
            ln = np.where(end < 0, -1, end - off)
            bad = np.flatnonzero((end >= 0) & ((end < off) | (off < 0)))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"{path}: byte range {off[i]}:{end[i]} is not a valid range")
        meta = metadata
    else:
        objs = [ByteRange()] if ranges is None else [_as_range(r) for r in ranges]
        pairs = np.array([r.to_c() for r in objs], dtype=np.int64).reshape(-1, 2)
        off, ln = pairs[:, 0].copy(), pairs[:, 1].copy()
        meta = (
            metadata
            if metadata is not None
            else ([r.metadata for r in objs] if any(r.metadata is not None for r in objs) else None)
        )
    if meta is not None and len(meta) != len(off):
        raise ValueError(f"{path}: {len(off)} ranges but {len(meta)} metadata items")
    return Operation("get", path, off, ln, meta, direct=direct)


def _buffer(data: Any, path: str) -> memoryview:
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError(
            f"{path}: data must support the buffer protocol, not {type(data)}"
        ) from None
    if not mv.c_contiguous:
        raise ValueError(f"{path}: data must be C-contiguous")
    return mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv


def put_file(path: str | Any, data: Any, *, fsync: bool = False, metadata: Any = None) -> Operation:
    """Write a whole file atomically: a temp file beside it, written, optionally
    fsync'ed, then renamed over ``path``.  A reader never sees a half-written file.

    ``data`` (bytes, numpy array, memoryview...) must not change until the result arrives.
    """
    path = _path(path)
    mv = _buffer(data, path)
    return Operation(
        "put_file",
        path,
        np.zeros(1, np.int64),
        np.array([mv.nbytes], np.int64),
        None if metadata is None else [metadata],
        data=[mv],
        fsync=fsync,
    )


def put_ranges(
    path: str | Any,
    pieces: Iterable[tuple[int, Any]],
    *,
    fsync: bool = False,
    create: bool = False,
    metadata: Sequence[Any] | None = None,
) -> Operation:
    """Write ``(offset, data)`` pieces into an existing file (``create=True``: make it if
    missing).  Each piece reports its own result; data must not change until it arrives."""
    path = _path(path)
    offs, lens, bufs = [], [], []
    for off, data in pieces:
        if off < 0:
            raise ValueError(f"{path}: write offset {off} is negative")
        mv = _buffer(data, path)
        offs.append(off)
        lens.append(mv.nbytes)
        bufs.append(mv)
    if metadata is not None and len(metadata) != len(offs):
        raise ValueError(f"{path}: {len(offs)} pieces but {len(metadata)} metadata items")
    return Operation(
        "put_ranges",
        path,
        np.array(offs, np.int64),
        np.array(lens, np.int64),
        metadata,
        data=bufs,
        fsync=fsync,
        create=create,
    )


@dataclass(slots=True)
class OpGroup:
    """Operations whose results are delivered together, with metadata for the group
    (e.g. the output file of a merge).  Groups are delivered in submission order."""

    operations: list[Operation]
    metadata: Any = None

    def __post_init__(self) -> None:
        self.operations = list(self.operations)
        for op in self.operations:
            if not isinstance(op, Operation):
                raise TypeError(
                    f"OpGroup takes Operations (get_ranges, put_file, put_ranges), not {op!r}"
                )

    @property
    def nranges(self) -> int:
        """Ranges in the group (one result each)."""
        return sum(len(op) for op in self.operations)


def _path(path: Any) -> str:
    """A local path made absolute, or a checked URL (:func:`lsio_ray.io.url.resolve`)."""
    return resolve(path)
