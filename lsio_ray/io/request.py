"""Operations as arrays: the form in which op groups reach the C core.

A :class:`Request` holds some operations as a handful of numpy arrays -- paths as one
fixed-width ``S`` array, kinds, flags and range counts per operation, offsets and lengths
per range, write payloads per range -- so no Python object per range is made, pickling
one (the Ray layer sends them to the IO actors) costs a few buffers, and any run of
operations becomes the C core's ``lsio_file``/``lsio_range`` arrays with a few numpy
calls (:meth:`Request.c_arrays`).  Range tags are request-local range numbers.

This module and :mod:`lsio_ray.io._core` are the only code that turns arrays into raw
addresses for the C side (the write payloads' pointers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lsio_ray.io._core import (
    F_CREATE,
    F_DIRECT,
    F_FSYNC,
    FILE_DTYPE,
    OP_READ,
    OP_WRITE_FILE,
    OP_WRITE_RANGES,
    RANGE_DTYPE,
)
from lsio_ray.io.ops import Operation

__all__ = ["KIND_CODES", "Request", "address", "op_flags"]

KIND_CODES: dict[str, int] = {
    "get": OP_READ,
    "put_file": OP_WRITE_FILE,
    "put_ranges": OP_WRITE_RANGES,
}
"""The C core's request kind of each :class:`~lsio_ray.io.ops.Operation` kind."""


def address(arr: np.ndarray) -> int:
    """The address of a C-contiguous array's first byte (0 for an empty array).

    The caller keeps ``arr`` alive for as long as the C side may use the address."""
    if not arr.flags.c_contiguous:
        raise ValueError("the C core needs C-contiguous arrays")
    return int(arr.ctypes.data) if arr.nbytes else 0


def op_flags(op: Operation) -> int:
    """The C core's flag bits of one operation."""
    return (
        (F_DIRECT if op.direct else 0)
        | (F_FSYNC if op.fsync else 0)
        | (F_CREATE if op.create else 0)
    )


@dataclass
class Request:
    """Operations in order, as arrays.

    ``paths`` (``S`` array, one per op), ``kinds``/``flags``/``nranges`` (per op, the C
    core's codes), ``offsets``/``lengths`` (per range, the C core's convention: length
    -1 = to the end, negative offset = from the end), ``data`` (write payloads per
    range, uint8 arrays, ``None`` for reads; empty when every op reads).
    """

    paths: np.ndarray
    kinds: np.ndarray
    flags: np.ndarray
    nranges: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    data: list[np.ndarray | None] = field(default_factory=list)

    @classmethod
    def of_ops(cls, ops: Sequence[Operation]) -> Request:
        """The arrays of ``ops``."""
        return cls(**_arrays_of(ops))

    @property
    def nops(self) -> int:
        """Operations in the request."""
        return len(self.kinds)

    @property
    def total(self) -> int:
        """Ranges in the request (one result each)."""
        return len(self.offsets)

    def path(self, i: int) -> str:
        """The path of op ``i``."""
        return os.fsdecode(self.paths[i])

    def path_list(self) -> list[str]:
        """Every op's path."""
        return [os.fsdecode(p) for p in self.paths.tolist()]

    def op_first(self) -> np.ndarray:
        """The request-local number of each op's first range (and the total at the end)."""
        first = getattr(self, "_first", None)
        if first is None or len(first) != self.nops + 1:
            first = np.zeros(self.nops + 1, np.int64)
            np.cumsum(self.nranges, out=first[1:])
            self._first = first
        return first

    def range_ops(self) -> np.ndarray:
        """The op number of each range."""
        return np.repeat(np.arange(self.nops, dtype=np.int64), self.nranges.astype(np.int64))

    def known_bytes(self) -> int:
        """Bytes the request reads or writes, counting only ranges of known length."""
        ln = self.lengths
        return int(ln[ln > 0].sum())

    def c_arrays(self, group: int, op_lo: int, op_hi: int) -> tuple[np.ndarray, np.ndarray, bytes]:
        """The C core's arrays for ops ``[op_lo, op_hi)`` of engine group ``group``: files,
        ranges (tagged with their request-local numbers) and the paths blob.  Write
        payloads are passed by address: keep the request alive until their completions
        are reaped."""
        first = self.op_first()
        r0, r1 = int(first[op_lo]), int(first[op_hi])
        n = op_hi - op_lo
        sub = self.paths[op_lo:op_hi]
        width = sub.dtype.itemsize + 1
        blob = sub.astype(f"S{width}").tobytes()
        if n and n * width >= 1 << 32:
            raise ValueError("a request's paths must total less than 4 GiB; split the group")
        files = np.zeros(n, FILE_DTYPE)
        files["group"] = group
        files["path_off"] = np.arange(n, dtype=np.uint32) * width
        files["kind"] = self.kinds[op_lo:op_hi]
        files["flags"] = self.flags[op_lo:op_hi]
        files["nranges"] = self.nranges[op_lo:op_hi]
        ranges = np.zeros(r1 - r0, RANGE_DTYPE)
        ranges["offset"] = self.offsets[r0:r1]
        ranges["length"] = self.lengths[r0:r1]
        ranges["tag"] = np.arange(r0, r1, dtype=np.uint64)
        if self.data:
            for k in range(r0, r1):
                d = self.data[k]
                if d is not None and d.nbytes:
                    ranges["data"][k - r0] = address(d)
        return files, ranges, blob

    def reread_arrays(
        self, group: int, tags: np.ndarray, offsets: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, bytes]:
        """The C core's arrays to read ranges ``tags`` again, each as a one-range read at
        the resolved ``offsets``/``lengths`` it had (a dropped result read again)."""
        ops = self.range_ops()[tags]
        sub = self.paths[ops]
        width = sub.dtype.itemsize + 1
        blob = sub.astype(f"S{width}").tobytes()
        files = np.zeros(len(tags), FILE_DTYPE)
        files["group"] = group
        files["path_off"] = np.arange(len(tags), dtype=np.uint32) * width
        files["kind"] = OP_READ
        files["flags"] = self.flags[ops] & F_DIRECT
        files["nranges"] = 1
        ranges = np.zeros(len(tags), RANGE_DTYPE)
        ranges["offset"] = offsets
        ranges["length"] = lengths
        ranges["tag"] = tags
        return files, ranges, blob


def _arrays_of(ops: Sequence[Operation]) -> dict[str, object]:
    nr = np.array([len(op) for op in ops], dtype=np.uint32)
    if ops:
        paths = np.array([os.fsencode(op.path) for op in ops], dtype="S")
        offsets = np.concatenate([op.offsets for op in ops]).astype(np.int64)
        lengths = np.concatenate([op.lengths for op in ops]).astype(np.int64)
    else:
        paths = np.zeros(0, "S1")
        offsets = lengths = np.zeros(0, np.int64)
    kinds = np.array([KIND_CODES[op.kind] for op in ops], dtype=np.uint32)
    flags = np.array([op_flags(op) for op in ops], dtype=np.uint32)
    data: list[np.ndarray | None] = []
    if any(op.kind != "get" for op in ops):
        for op in ops:
            if op.kind == "get":
                data.extend([None] * len(op))
            else:
                data.extend(np.frombuffer(mv, dtype=np.uint8) for mv in op.data)
    return {
        "paths": paths,
        "kinds": kinds,
        "flags": flags,
        "nranges": nr,
        "offsets": offsets,
        "lengths": lengths,
        "data": data,
    }
