"""Batches: what one ObjectRef of a group's stream carries.

A :class:`Batch` is one contiguous ``uint8`` buffer holding many chunks back to back,
an index (a numpy structured array, :data:`INDEX_DTYPE`, one row per range) and the
caller's metadata of each range.  Ray stores it as one object of a few megabytes: an
object costs ~1 ms here whatever its size, so chunks travel in batches, never alone.
``ray.get`` of a batch is zero-copy: ``data`` and ``index`` are read-only views of the
object store, and :meth:`Batch.view` hands out slices of ``data`` (no copy either).

Failed ranges travel in the index (``error`` is the C core's code: ``-errno`` or an
``LSIO_E_*`` value) and are raised as :class:`~lsio_ray.ray.InputError` -- naming the
file, the byte range and the node -- only where the consumer asks for that range.

:class:`BatchBuilder` is the IO actor's side: it copies chunks out of the engine's pool
into the batch buffer, gives the pool buffers back at once, and cuts batches by a rule
that depends only on the ranges' sizes in operation order, so a group read twice is
cut the same way twice (the coordinator resumes a failed stream by batch number).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from lsio_ray.io import address, config, make_error
from lsio_ray.ray.errors import InputError

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "INDEX_DTYPE",
    "MAX_BATCH_RANGES",
    "Batch",
    "BatchBuilder",
    "BatchRef",
]

DEFAULT_BATCH_BYTES = 16 << 20
"""Bytes per batch (env ``LSIO_RAY_BATCH_BYTES``); see ``scripts/bench-ray.py``."""

MAX_BATCH_RANGES = 16384
"""Most ranges one batch holds (bounds the index of batches of empty or failed ranges)."""

INDEX_DTYPE = np.dtype(
    [
        ("range", "<i8"),  # the range's number in its whole group
        ("op", "<i4"),  # the operation's number in its whole group
        ("error", "<i4"),  # 0, -errno or LSIO_E_* (then nbytes is 0)
        ("start", "<i8"),  # where the chunk starts in the batch buffer
        ("nbytes", "<i8"),  # bytes of the chunk in the batch buffer (0 for writes)
        ("offset", "<i8"),  # file offset (resolved) of the range
        ("length", "<i8"),  # bytes read or written; as asked when the range failed
        ("file_size", "<i8"),  # file size when known, else -1
    ]
)

_OPNAME = {0: "read", 1: "write", 2: "write"}


def default_batch_bytes() -> int:
    """The batch size in force: ``LSIO_RAY_BATCH_BYTES`` or :data:`DEFAULT_BATCH_BYTES`."""
    return int(config.get("batch_bytes"))


@dataclass
class Batch:
    """Chunks of one group read (or written) by one node, in operation order.

    ``index[i]`` describes chunk ``i`` (:data:`INDEX_DTYPE`); ``data`` holds the bytes;
    ``metadata`` the caller's metadata per chunk (None, a numpy array or a list);
    ``op_ids``/``paths`` the paths of the operations appearing in the batch; ``kinds``
    their kinds (0 read, 1 write file, 2 write ranges); ``seq`` the batch's number in
    its piece of the group; ``node_id`` the node that did the IO.
    """

    index: np.ndarray
    data: np.ndarray
    metadata: Any
    op_ids: np.ndarray
    paths: np.ndarray
    kinds: np.ndarray
    group_metadata: Any
    node_id: str
    seq: int

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        """Bytes of chunk data in the batch."""
        return int(self.data.nbytes)

    @property
    def ranges(self) -> np.ndarray:
        """The group-wide range number of each chunk."""
        return self.index["range"]

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the chunks that succeeded."""
        return self.index["error"] == 0

    def _op_pos(self, i: int) -> int:
        op = int(self.index["op"][i])
        return int(np.searchsorted(self.op_ids, op))

    def path(self, i: int) -> str:
        """The path of chunk ``i``'s file."""
        return os.fsdecode(self.paths[self._op_pos(i)])

    def metadata_of(self, i: int) -> Any:
        """The caller's metadata of chunk ``i`` (None when none was given)."""
        return None if self.metadata is None else self.metadata[i]

    def error(self, i: int) -> InputError | None:
        """Chunk ``i``'s error as an exception (None when it succeeded)."""
        row = self.index[i]
        err = int(row["error"])
        if err == 0:
            return None
        pos = self._op_pos(i)
        path = os.fsdecode(self.paths[pos])
        cause = make_error(
            err,
            path,
            int(row["offset"]),
            int(row["length"]),
            int(row["file_size"]),
            op=_OPNAME.get(int(self.kinds[pos]), "read"),
        )
        return InputError(path, self.node_id, cause, err)

    def view(self, i: int) -> np.ndarray:
        """Chunk ``i``'s bytes: a read-only uint8 view of the batch (no copy).

        Raises :class:`~lsio_ray.ray.InputError` if the range failed."""
        row = self.index[i]
        if row["error"]:
            raise self.error(i)  # type: ignore[misc]
        s = int(row["start"])
        return self.data[s : s + int(row["nbytes"])]

    def raise_errors(self) -> None:
        """Raise the first failed chunk's error, if any."""
        bad = np.flatnonzero(self.index["error"])
        if bad.size:
            raise self.error(int(bad[0]))  # type: ignore[misc]

    def __iter__(self) -> Iterator[tuple[Any, np.ndarray]]:
        """``(metadata, bytes)`` per chunk, raising a failed chunk's error where it stands."""
        starts = self.index["start"].tolist()
        sizes = self.index["nbytes"].tolist()
        errs = self.index["error"].tolist()
        data = self.data
        for i, (s, n, e) in enumerate(zip(starts, sizes, errs, strict=True)):
            if e:
                raise self.error(i)  # type: ignore[misc]
            yield self.metadata_of(i), data[s : s + n]

    def __repr__(self) -> str:
        bad = int(np.count_nonzero(self.index["error"]))
        return (
            f"<Batch seq={self.seq} node={self.node_id[:8]} chunks={len(self)} "
            f"bytes={self.nbytes} errors={bad}>"
        )


class BatchRef(NamedTuple):
    """One batch of a group's stream: its ObjectRef and the node that holds it.

    Pass ``ref`` to Ray tasks (Ray resolves it to a :class:`Batch`) and schedule them on
    ``node_id`` (a same-node object streams ~7x faster than one across nodes)."""

    ref: Any
    node_id: str
    group: int
    seq: int


class BatchBuilder:
    """Cuts a piece's results, in operation order, into batches (IO actor side).

    :meth:`add` takes completions (numpy rows with ``data``/``length``/``error``/
    ``buf_id``... as the C core fills them) for consecutive piece-local ranges, copies
    their bytes into the current batch buffer and returns the pool buffers to release.
    A batch is closed before a chunk that would overflow it (a chunk larger than a whole
    batch travels alone), or at :data:`MAX_BATCH_RANGES` ranges.
    """

    def __init__(self, batch_bytes: int, make: Any, alloc: Any = None) -> None:
        if batch_bytes <= 0:
            raise ValueError(f"batch_bytes must be positive, not {batch_bytes}")
        self.batch_bytes = int(batch_bytes)
        self._make = make  # (index, data, local range ids) -> Batch
        self._alloc = alloc or (lambda n: np.empty(n, np.uint8))
        self._buf: np.ndarray | None = None
        self._pos = 0
        self._rows: list[np.ndarray] = []
        self._locals: list[np.ndarray] = []
        self._nrows = 0
        self.ready: list[Batch] = []
        self.bytes_copied = 0

    def _close(self) -> None:
        if not self._rows:
            return
        index = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        local = np.concatenate(self._locals) if len(self._locals) > 1 else self._locals[0]
        buf = self._buf if self._buf is not None else np.empty(0, np.uint8)
        data = buf[: self._pos] if self._pos < len(buf) else buf
        self.ready.append(self._make(index, data, local))
        self._buf, self._pos, self._rows, self._locals, self._nrows = None, 0, [], [], 0

    def add(self, local: np.ndarray, comps: np.ndarray, index: np.ndarray) -> None:
        """Add chunks: ``local`` their piece-local numbers, ``comps`` their completions
        (``data`` address, ``nbytes`` in ``index``), ``index`` their prepared
        :data:`INDEX_DTYPE` rows (``start`` is filled in here)."""
        sizes = index["nbytes"]
        n = len(sizes)
        i = 0
        cum = np.cumsum(sizes)
        while i < n:
            room = self.batch_bytes - self._pos
            base = int(cum[i - 1]) if i else 0
            j = int(np.searchsorted(cum, base + room, side="right"))
            j = min(j, i + (MAX_BATCH_RANGES - self._nrows))
            if j <= i:
                if self._nrows:  # this chunk does not fit: close the batch first
                    self._close()
                    continue
                j = i + 1  # a chunk larger than a whole batch travels alone
            self._take(local[i:j], comps[i:j], index[i:j], sizes[i:j])
            i = j
            if self._nrows >= MAX_BATCH_RANGES or self._pos >= self.batch_bytes:
                self._close()

    def _take(
        self, local: np.ndarray, comps: np.ndarray, index: np.ndarray, sizes: np.ndarray
    ) -> None:
        total = int(sizes.sum())
        if self._buf is None and (total or self._pos):
            self._buf = self._alloc(max(self.batch_bytes, total))
        starts = self._pos + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        rows = index.copy()
        rows["start"] = starts
        if total:
            assert self._buf is not None
            base = address(self._buf)
            move = ctypes.memmove
            for dst, src, n in zip(
                starts.tolist(), comps["data"].tolist(), sizes.tolist(), strict=True
            ):
                if n:
                    move(base + dst, src, n)
            self.bytes_copied += total
        self._pos += total
        self._rows.append(rows)
        self._locals.append(local)
        self._nrows += len(rows)

    def flush(self) -> None:
        """Close the batch being filled (at the end of the piece)."""
        self._close()

    def take_ready(self) -> list[Batch]:
        """The batches closed since the last call."""
        out, self.ready = self.ready, []
        return out
