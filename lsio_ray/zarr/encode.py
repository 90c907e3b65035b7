"""Encoding stored units: a chunk, or a shard (its inner chunks and index).

The one encoder of everything lsio_ray writes as Zarr: the array writer
(:mod:`lsio_ray.zarr.write`: ``lz.save``, ``lz.create``, ``a[...] = x``) and the
re-chunk job (:mod:`lsio_ray.ray.rechunk`).  A *unit* is what is stored as one file: a
chunk, or a shard when the array is sharded; :func:`encode_unit` takes one unit of
the array's file shape, the part past the array's end holding the fill value.

**Empty chunks** (``write_empty_chunks``, zarr-python's array config of that name,
``zarr.create_array(..., config={"write_empty_chunks": ...})``, default False):

* False: a chunk whose every element equals the fill value is not stored -- a missing
  chunk reads as the fill value.  Unsharded, such a unit is not stored at all
  (:func:`encode_unit` returns None, and the writer removes a file stored there
  before); sharded, such an inner chunk gets an empty index entry, and a shard with no
  inner chunk left is not stored at all.
* True: every unit is stored, and every inner chunk of a shard that lies in the array.

Either way, inner chunks wholly past the array's end are never stored (nor are they
by zarr-python).  "Equals the fill value" is decided as zarr-python decides it
(``NDBuffer.all_equal``): NaN equals NaN (and NaT equals NaT); with a floating-point
fill value of zero the bits are compared, so a chunk of ``-0.0`` is stored under a
fill value of ``0.0`` and reads back with its sign.  Inner chunks follow each other in
C order of the shard's chunk grid (zarr-python writes Morton order; the index says
where each lies, so either reads the other's shards).  Encoding is deterministic: the
same unit gives the same bytes, which resumed re-chunk runs rely on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lsio_ray.zarr.layout import ArrayLayout
from lsio_ray.zarr.shards import EMPTY

__all__ = ["MapFn", "encode_unit", "is_fill"]

MapFn = Callable[[Callable[[int], Any], list[int]], list[Any]]
"""``map(fn, items)``: ``[fn(i) for i in items]``, run by whom the caller chooses (the
writer passes its loader's decode pool)."""


def _serial_map(fn: Callable[[int], Any], items: list[int]) -> list[Any]:
    return [fn(i) for i in items]


def _equal(a: np.ndarray, fill: np.ndarray) -> bool:
    kind = a.dtype.kind
    if kind == "f" and fill == 0 and a.dtype.itemsize in (2, 4, 8):
        # zarr-python compares bit patterns against a zero fill: -0.0 is not 0.0
        u = np.dtype(f"u{a.dtype.itemsize}")
        return bool((a.view(u) == np.asarray(fill, a.dtype).view(u)).all())
    if kind in "fcmM":
        return bool(np.array_equal(a, np.broadcast_to(fill, a.shape), equal_nan=True))
    return bool((a == fill).all())


def is_fill(a: np.ndarray, fill: np.ndarray) -> bool:
    """Whether every element of ``a`` equals the fill value ``fill`` (a 0-d array of
    ``a``'s dtype), as zarr-python decides whether a chunk is empty (see the module
    docstring).  The first element settles it for almost every chunk of real data."""
    # a one-element view: reshape(-1) would copy a non-contiguous chunk, e.g. an inner
    # chunk cut out of a shard
    if a.size and not _equal(a[(slice(0, 1),) * a.ndim], fill):
        return False
    return _equal(a, fill)


def _c_order(a: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into a 1-d one
    return a if a.flags.c_contiguous else a.copy(order="C")


def encode_unit(
    layout: ArrayLayout,
    unit: np.ndarray,
    origin: Sequence[int] | np.ndarray,
    *,
    write_empty_chunks: bool = False,
    map: MapFn | None = None,
) -> np.ndarray | None:
    """The stored bytes (uint8) of one unit of ``layout`` -- a chunk, or a shard with
    its index -- or None when nothing is to be stored (``write_empty_chunks=False`` and
    the unit all fill value, see the module docstring).

    ``unit``: the unit's whole array (``layout.file_shape``; past the array's end, the
    fill value); ``origin``: its first element's array coordinates.  ``map`` runs the
    encodes of a shard's inner chunks (default: one after the other, here).  The bytes
    may share memory with ``unit`` (a chunk stored raw)."""
    fill = layout.fill_value
    if not write_empty_chunks and is_fill(unit, fill):
        return None
    if layout.shards is None:
        return layout.codec.encode(_c_order(unit))
    return _encode_shard(layout, unit, np.asarray(origin, np.int64), write_empty_chunks, map)


def _encode_shard(
    layout: ArrayLayout,
    shard: np.ndarray,
    origin: np.ndarray,
    write_empty_chunks: bool,
    map: MapFn | None,
) -> np.ndarray | None:
    idx = layout.index
    assert idx is not None
    fill = layout.fill_value
    inner = np.asarray(layout.chunks, dtype=np.int64)
    cps = layout.chunks_per_shard
    n = math.prod(cps)
    local = (
        np.stack(np.unravel_index(np.arange(n), cps), axis=1).astype(np.int64)
        if cps
        else np.zeros((1, 0), np.int64)
    )
    # inner chunks wholly past the array's end are never stored
    inside = np.all(origin + local * inner < np.asarray(layout.shape, np.int64), axis=1)

    def enc(k: int) -> np.ndarray | None:
        lo = local[k] * inner
        box = tuple(slice(int(a), int(a + c)) for a, c in zip(lo, inner, strict=True))
        chunk = shard[box]
        if not write_empty_chunks and is_fill(chunk, fill):
            return None
        return layout.codec.encode(_c_order(chunk))

    todo = np.flatnonzero(inside).tolist()
    encoded = (map or _serial_map)(enc, todo)
    table = np.full((n, 2), EMPTY, dtype=np.uint64)
    parts: list[np.ndarray] = []
    pos = idx.nbytes if idx.location == "start" else 0
    for k, e in zip(todo, encoded, strict=True):
        if e is None:
            continue
        table[k] = (pos, e.nbytes)
        parts.append(e)
        pos += e.nbytes
    if not parts:
        return None  # no inner chunk to store: neither is the shard (as zarr-python)
    index = idx.encode(table)
    body = [index, *parts] if idx.location == "start" else [*parts, index]
    return np.concatenate(body)
