"""The wire form of a piece of an op group: what the coordinator sends an IO actor.

An :class:`~lsio_ray.OpGroup` is split into *pieces*, each served by one node's IO
actor.  A :class:`PieceSpec` holds a piece as a handful of numpy arrays (paths as one
fixed-width ``S`` array, kinds, flags, range counts, offsets, lengths) plus the caller's
per-range metadata, so pickling it costs a few buffers, not an object per range.  The
ranges keep their numbering in the whole group (``range_ids``, ``op_ids``) so a batch
from any node says where each of its chunks stands in the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsio_ray.io import stores
from lsio_ray.io.ops import Operation, OpGroup
from lsio_ray.io.request import KIND_CODES, Request
from lsio_ray.io.url import is_remote

__all__ = ["KIND_CODES", "PieceSpec", "piece_of_ops", "split_runs"]


@dataclass
class PieceSpec(Request):
    """Some operations of one group, in group order, ready for an IO actor: a
    :class:`~lsio_ray.io.request.Request` (paths, kinds, flags, range counts, offsets,
    lengths, write payloads) with ``op_ids``/``range_ids`` (their numbers in the whole
    group), ``metadata`` (per range: None, a numpy array or a list) and the group's
    metadata.
    """

    op_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    range_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    metadata: Any = None
    group_metadata: Any = None
    #: object-store options (lsio_ray.io.stores.configure) for the URLs it names
    store_options: dict[str, dict[str, Any]] | None = None


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
    if ops:
        range_ids = np.concatenate(
            [
                np.arange(s, s + len(op), dtype=np.int64)
                for op, s in zip(ops, range_starts, strict=True)
            ]
        )
    else:
        range_ids = np.zeros(0, np.int64)
    req = Request.of_ops(ops)
    return PieceSpec(
        paths=req.paths,
        kinds=req.kinds,
        flags=req.flags,
        nranges=req.nranges,
        offsets=req.offsets,
        lengths=req.lengths,
        data=req.data,
        op_ids=np.asarray(op_ids, dtype=np.int32),
        range_ids=range_ids,
        metadata=_metadata_slice(ops),
        group_metadata=group_metadata,
        store_options=_store_options(ops),
    )


def _store_options(ops: Sequence[Operation]) -> dict[str, dict[str, Any]] | None:
    urls = [op.path for op in ops if is_remote(op.path)]
    return stores.exported(urls) or None if urls else None


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
