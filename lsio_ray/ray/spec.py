"""The wire form of a piece of an op group: what the coordinator sends an IO actor.

An :class:`~lsio_ray.OpGroup` is split into *pieces*, each served by one node's IO
actor.  A :class:`PieceSpec` holds a piece as a handful of numpy arrays (paths as one
fixed-width ``S`` array, kinds, flags, range counts, offsets, lengths) plus the caller's
per-range metadata, so pickling it costs a few buffers, not an object per range.  The
ranges keep their numbering in the whole group (``range_ids``, ``op_ids``) so a batch
from any node says where each of its chunks stands in the group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
from lsio_ray.io.ops import Operation, OpGroup

__all__ = ["KIND_CODES", "PieceSpec", "piece_of_ops", "split_runs"]

KIND_CODES: dict[str, int] = {
    "get": OP_READ,
    "put_file": OP_WRITE_FILE,
    "put_ranges": OP_WRITE_RANGES,
}


@dataclass
class PieceSpec:
    """Some operations of one group, in group order, ready for an IO actor.

    ``paths`` (``S`` array, one per op), ``kinds``/``flags``/``nranges`` (per op),
    ``offsets``/``lengths`` (per range, the C core's convention: length -1 = to the
    end, negative offset = from the end), ``op_ids``/``range_ids`` (their numbers in
    the whole group), ``metadata`` (per range: None, a numpy array or a list),
    ``data`` (write payloads per range, uint8 arrays; empty for reads).
    """

    paths: np.ndarray
    kinds: np.ndarray
    flags: np.ndarray
    nranges: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    op_ids: np.ndarray
    range_ids: np.ndarray
    metadata: Any = None
    data: list[np.ndarray | None] = field(default_factory=list)
    group_metadata: Any = None

    @property
    def nops(self) -> int:
        """Operations in the piece."""
        return len(self.kinds)

    @property
    def total(self) -> int:
        """Ranges in the piece (one result each)."""
        return len(self.offsets)

    def path(self, i: int) -> str:
        """The path of op ``i`` of the piece."""
        return os.fsdecode(self.paths[i])

    def path_list(self) -> list[str]:
        """Every op's path."""
        return [os.fsdecode(p) for p in self.paths.tolist()]

    def op_first(self) -> np.ndarray:
        """The piece-local number of each op's first range (and the total at the end)."""
        first = getattr(self, "_first", None)
        if first is None or len(first) != self.nops + 1:
            first = np.zeros(self.nops + 1, np.int64)
            np.cumsum(self.nranges, out=first[1:])
            self._first = first
        return first

    def known_bytes(self) -> int:
        """Bytes the piece reads or writes, counting only ranges of known length."""
        ln = self.lengths
        return int(ln[ln > 0].sum())

    def c_arrays(
        self, group: int, op_lo: int, op_hi: int
    ) -> tuple[np.ndarray, np.ndarray, bytes, int]:
        """The C core's arrays for ops ``[op_lo, op_hi)``: files, ranges, paths blob, and
        the piece-local number of the first range (range tags are piece-local numbers)."""
        first = self.op_first()
        r0, r1 = int(first[op_lo]), int(first[op_hi])
        n = op_hi - op_lo
        sub = self.paths[op_lo:op_hi]
        width = sub.dtype.itemsize + 1
        blob = sub.astype(f"S{width}").tobytes()
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
                    ranges["data"][k - r0] = d.ctypes.data
        return files, ranges, blob, r0


def _flags(op: Operation) -> int:
    return (
        (F_DIRECT if op.direct else 0)
        | (F_FSYNC if op.fsync else 0)
        | (F_CREATE if op.create else 0)
    )


def _metadata_slice(ops: Sequence[Operation]) -> Any:
    metas = [op.metadata for op in ops]
    if all(m is None for m in metas):
        return None
    if all(isinstance(m, np.ndarray) for m in metas):
        return np.concatenate(metas) if len(metas) > 1 else metas[0]
    out: list[Any] = []
    for op, m in zip(ops, metas, strict=True):
        out.extend([None] * len(op) if m is None else list(m))
    return out


def piece_of_ops(
    ops: Sequence[Operation],
    op_ids: Sequence[int],
    range_starts: Sequence[int],
    group_metadata: Any = None,
) -> PieceSpec:
    """A :class:`PieceSpec` of ``ops``, op ``ops[i]`` being number ``op_ids[i]`` of its
    group and its first range number ``range_starts[i]``."""
    nr = np.array([len(op) for op in ops], dtype=np.uint32)
    paths = np.array([os.fsencode(op.path) for op in ops], dtype="S") if ops else np.zeros(0, "S1")
    kinds = np.array([KIND_CODES[op.kind] for op in ops], dtype=np.uint32)
    flags = np.array([_flags(op) for op in ops], dtype=np.uint32)
    if ops:
        offsets = np.concatenate([op.offsets for op in ops]).astype(np.int64)
        lengths = np.concatenate([op.lengths for op in ops]).astype(np.int64)
        range_ids = np.concatenate(
            [
                np.arange(s, s + len(op), dtype=np.int64)
                for op, s in zip(ops, range_starts, strict=True)
            ]
        )
    else:
        offsets = lengths = range_ids = np.zeros(0, np.int64)
    data: list[np.ndarray | None] = []
    if any(op.kind != "get" for op in ops):
        for op in ops:
            if op.kind == "get":
                data.extend([None] * len(op))
            else:
                data.extend(np.frombuffer(mv, dtype=np.uint8) for mv in op.data)
    return PieceSpec(
        paths=paths,
        kinds=kinds,
        flags=flags,
        nranges=nr,
        offsets=offsets,
        lengths=lengths,
        op_ids=np.asarray(op_ids, dtype=np.int32),
        range_ids=range_ids,
        metadata=_metadata_slice(ops),
        data=data,
        group_metadata=group_metadata,
    )


def split_runs(
    group: OpGroup, nodes: Sequence[str], *, by: str = "run"
) -> list[tuple[str, PieceSpec]]:
    """Split a group into pieces by node: ``nodes[i]`` serves op ``i``.

    ``by="run"``: one piece per maximal run of consecutive ops on the same node, in
    group order (so the pieces, concatenated, keep operation order).  ``by="node"``: one
    piece per node, ordered by each node's first op (fewer actor calls; operation order
    holds within each piece only).
    """
    ops = group.operations
    if len(nodes) != len(ops):
        raise ValueError(f"{len(ops)} operations but {len(nodes)} node assignments")
    starts = np.zeros(len(ops) + 1, np.int64)
    np.cumsum([len(op) for op in ops], out=starts[1:])
    runs: list[tuple[str, list[int]]] = []
    if by == "run":
        for i, node in enumerate(nodes):
            if runs and runs[-1][0] == node:
                runs[-1][1].append(i)
            else:
                runs.append((node, [i]))
    elif by == "node":
        index: dict[str, int] = {}
        for i, node in enumerate(nodes):
            if node not in index:
                index[node] = len(runs)
                runs.append((node, []))
            runs[index[node]][1].append(i)
    else:
        raise ValueError(f"by must be 'run' or 'node', not {by!r}")
    return [
        (
            node,
            piece_of_ops([ops[i] for i in idx], idx, [int(starts[i]) for i in idx], group.metadata),
        )
        for node, idx in runs
    ]
