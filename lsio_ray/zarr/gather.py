"""Reading a selection: the boxes or chunks it touches, read through the array's box
reads, and gathered from with numpy (:mod:`lsio_ray.zarr.indexing` parses the keys).

Only the chunks a selection needs are read:

* an orthogonal selection (:func:`read_orthogonal`) is cut, per axis, into *pieces*:
  runs of consecutive touched chunks, each narrowed to the indices it holds (two
  far-apart indices are two pieces, never the span between them).  The boxes are the
  products of pieces; a box whose pieces are all plain ranges is read straight into the
  result, the others into a buffer the result is gathered from, and pieces are cut at
  chunk boundaries so that no such buffer is over :data:`BUDGET` bytes;
* when that makes many small boxes (sparse indices: about one box per touched chunk)
  and the C decoder handles the codecs, the touched chunks are read whole instead, a
  group of equal-shaped chunks per task (:meth:`~lsio_ray.zarr.Array.start_boxes`: one
  task per :data:`BUDGET` bytes of chunks, not one per chunk);
* points (:func:`read_points`: coordinate selections) are grouped by chunk and their
  chunks read that way (one :class:`~lsio_ray.zarr.read.BoxRead` per chunk for the
  other codecs);
* a mask (:func:`read_mask`) is read a slab of chunk rows at a time: a slab whose
  touched chunks fill the box around its True elements is read as that box and masked
  (dense masks: no per-element indices), the others as points.

At most :data:`BUDGET` bytes of buffers (and :data:`MAX_TASKS` reads) are in flight;
the result comes on top.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from lsio_ray.zarr.loader import Task, abandon
from lsio_ray.zarr.scatter import scatterable

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = ["BUDGET", "MAX_TASKS", "SPARSE_BOXES", "SPARSE_CHUNKS", "Axis", "read_mask"]
__all__ += ["read_orthogonal", "read_points"]

BUDGET = 64 << 20
"""Most bytes of read buffers (boxes and chunks to gather from) in flight."""
MAX_TASKS = 32
"""Most reads in flight."""
SPARSE_BOXES = 64
"""An orthogonal selection cut into more boxes than this reads its touched chunks whole,
a group per task (when the C decoder handles the codecs), if its boxes hold fewer than
:data:`SPARSE_CHUNKS` chunks each on average."""
SPARSE_CHUNKS = 4


@dataclass(frozen=True)
class Axis:
    """One axis of an orthogonal selection: ``[start, stop)`` (a plain range) or
    ``sel`` (the indices, in output order); ``drop`` for an integer."""

    n: int
    chunk: int
    start: int = 0
    stop: int = 0
    sel: np.ndarray | None = None
    drop: bool = False

    @property
    def size(self) -> int:
        return max(0, self.stop - self.start) if self.sel is None else len(self.sel)


# -- orthogonal selections ---------------------------------------------------------------
def _pieces(ax: Axis, k: int) -> list[tuple[int, int, Any, Any]]:
    """``(lo, hi, src, dst)`` per piece of ``ax``: the interval ``[lo, hi)`` to read,
    the indices into it (a slice or an array) and their places in the result; a piece
    is a run of consecutive touched chunks, cut every ``k`` chunks from the first."""
    block = k * ax.chunk
    if ax.sel is None:
        cuts = list(range((ax.start // ax.chunk) * ax.chunk + block, ax.stop, block))
        bounds = [ax.start, *cuts, ax.stop]
        return [
            (a, b, slice(None), slice(a - ax.start, b - ax.start))
            for a, b in itertools.pairwise(bounds)
        ]
    order = np.argsort(ax.sel, kind="stable")
    s = ax.sel[order]
    c = s // ax.chunk
    new = np.ones(len(s), bool)
    new[1:] = (c[1:] - c[:-1] > 1) | ((c[1:] - c[0]) // k != (c[:-1] - c[0]) // k)
    starts = np.flatnonzero(new).tolist()
    out = []
    for a, b in zip(starts, [*starts[1:], len(s)], strict=True):
        lo, hi = int(s[a]), int(s[b - 1]) + 1
        src: Any = s[a:b] - lo
        dst: Any = order[a:b]
        if b - a == 1 or ((np.diff(s[a:b]) == 1).all() and (np.diff(dst) == 1).all()):
            src, dst = slice(None), slice(int(dst[0]), int(dst[0]) + b - a)
        out.append((lo, hi, src, dst))
    return out


def _blocks(axes: list[Axis], itemsize: int) -> list[int]:
    """Chunks per piece along each axis so that no box is over :data:`BUDGET` bytes
    (the first axes cut first, down to one chunk)."""
    span = [
        ax.stop - ax.start if ax.sel is None else int(ax.sel.max()) - int(ax.sel.min()) + 1
        for ax in axes
    ]
    k = [-(-s // ax.chunk) + 1 for s, ax in zip(span, axes, strict=True)]

    def extent(i: int) -> int:
        return min(span[i], k[i] * axes[i].chunk)

    while itemsize * math.prod(extent(i) for i in range(len(axes))) > BUDGET:
        i = next((i for i in range(len(axes)) if extent(i) > axes[i].chunk), None)
        if i is None:
            break
        k[i] = max(1, min(k[i], -(-span[i] // axes[i].chunk)) // 2)
    return k


def read_orthogonal(array: Array, axes: list[Axis], out: np.ndarray) -> None:
    """Fill ``out`` (shape: the axes' sizes, dropped axes included) with the outer
    product of the axes' selections."""
    k = _blocks(axes, array.dtype.itemsize)
    pieces = [_pieces(ax, kk) for ax, kk in zip(axes, k, strict=True)]
    count = math.prod(len(p) for p in pieces)
    if count > SPARSE_BOXES and scatterable(array):
        touched = math.prod(len(_touched(ax)) for ax in axes)
        if touched < SPARSE_CHUNKS * count:  # small boxes: one task per box costs most
            _read_orthogonal_chunks(array, axes, out)
            return

    def jobs() -> Iterable[tuple[int, Callable[[], Task], Callable[[Task], None]]]:
        for box in _product(pieces):
            lo = tuple(p[0] for p in box)
            hi = tuple(p[1] for p in box)
            src = tuple(p[2] for p in box)
            dst = tuple(p[3] for p in box)
            if all(isinstance(d, slice) for d in src + dst):
                view = out[dst]  # the box is a block of the result: read into it
                yield 0, partial(array.start_read, lo, hi, view), _done
            else:
                nbytes = array.dtype.itemsize * math.prod(
                    b - a for a, b in zip(lo, hi, strict=True)
                )
                yield nbytes, partial(array.start_read, lo, hi), partial(_put, out, dst, src)

    _run(jobs())


def _product(pieces: list[list[Any]]) -> Iterable[tuple[Any, ...]]:
    """The boxes: one piece per axis, in C order."""
    counts = [len(p) for p in pieces]
    for idx in np.ndindex(*counts):
        yield tuple(p[i] for p, i in zip(pieces, idx, strict=True))


def _done(task: Task) -> None:
    del task


def _put(out: np.ndarray, dst: tuple[Any, ...], src: tuple[Any, ...], task: Task) -> None:
    box = task.out  # type: ignore[attr-defined]
    out[_ix(dst, out.shape)] = box[_ix(src, box.shape)]


def _ix(parts: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[Any, ...]:
    """An index taking the outer product of ``parts`` (slices and 1-d arrays): the parts
    themselves when at most one is an array, else :func:`numpy.ix_` of them all."""
    if sum(isinstance(p, np.ndarray) for p in parts) <= 1:
        return parts
    return np.ix_(
        *(np.arange(n)[p] if isinstance(p, slice) else p for p, n in zip(parts, shape, strict=True))
    )


def _touched(ax: Axis) -> np.ndarray:
    """The chunks ``ax`` touches, in order."""
    if ax.sel is None:
        return np.arange(ax.start // ax.chunk, (ax.stop - 1) // ax.chunk + 1, dtype=np.int64)
    return np.unique(ax.sel // ax.chunk)


def _chunk_parts(ax: Axis) -> tuple[np.ndarray, list[Any], list[Any]]:
    """The chunks ``ax`` touches, and for each the indices into it and their places in
    the result (slices or arrays)."""
    ch = ax.chunk
    if ax.sel is None:
        touched = _touched(ax)
        src, dst = [], []
        for t in touched.tolist():
            a, b = max(ax.start, t * ch), min(ax.stop, (t + 1) * ch)
            src.append(slice(a - t * ch, b - t * ch))
            dst.append(slice(a - ax.start, b - ax.start))
        return touched, src, dst
    order = np.argsort(ax.sel, kind="stable")
    s = ax.sel[order]
    c = s // ch
    touched, first = np.unique(c, return_index=True)
    bounds = [*first.tolist(), len(s)]
    src = [
        s[a:b] - t * ch for a, b, t in zip(bounds[:-1], bounds[1:], touched.tolist(), strict=True)
    ]
    dst = [order[a:b] for a, b in itertools.pairwise(bounds)]
    return touched, src, dst


def _read_orthogonal_chunks(array: Array, axes: list[Axis], out: np.ndarray) -> None:
    """The sparse case: each touched chunk read whole (a group per task), the result
    gathered from it."""
    parts = [_chunk_parts(ax) for ax in axes]
    counts = [len(p[0]) for p in parts]
    grid = np.indices(counts, dtype=np.int64).reshape(len(axes), -1).T
    coords = np.stack([parts[i][0][grid[:, i]] for i in range(len(axes))], axis=1)

    def gather(rows: np.ndarray, los: np.ndarray, boxes: np.ndarray) -> None:
        del los
        for g, row in enumerate(rows.tolist()):
            idx = grid[row].tolist()
            src = tuple(p[1][i] for p, i in zip(parts, idx, strict=True))
            dst = tuple(p[2][i] for p, i in zip(parts, idx, strict=True))
            box = boxes[g]
            out[_ix(dst, out.shape)] = box[_ix(src, box.shape)]

    _read_chunks(array, coords, gather)


# -- points and masks --------------------------------------------------------------------
def read_points(array: Array, points: list[np.ndarray]) -> np.ndarray:
    """``a[points[0][j], points[1][j], ...]`` for each j (checked, non-negative)."""
    n = len(points[0])
    out = np.empty(n, dtype=array.dtype)
    if n == 0:
        return out
    chunk_of = [p // c for p, c in zip(points, array.chunks, strict=True)]
    grid = tuple(-(-s // c) for s, c in zip(array.shape, array.chunks, strict=True))
    lin = np.ravel_multi_index(chunk_of, grid)
    order = np.argsort(lin, kind="stable")
    ulin, first = np.unique(lin[order], return_index=True)
    count = np.diff(np.append(first, n))
    coords = np.stack(np.unravel_index(ulin, grid), axis=1).astype(np.int64)

    def gather(rows: np.ndarray, los: np.ndarray, boxes: np.ndarray) -> None:
        per = count[rows]
        g = np.repeat(np.arange(len(rows)), per)
        pos = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per) + first[rows][g]
        pidx = order[pos]
        local = tuple(p[pidx] - los[g, i] for i, p in enumerate(points))
        out[pidx] = boxes[(g, *local)]

    _read_chunks(array, coords, gather)
    return out


def read_mask(array: Array, m: np.ndarray) -> np.ndarray:
    """The elements where ``m`` (a boolean array of the array's shape) is True, in C
    order; a slab of chunk rows at a time (see the module's notes)."""
    shape, chunks, itemsize = array.shape, array.chunks, array.dtype.itemsize
    out = np.empty(np.count_nonzero(m), dtype=array.dtype)
    if out.size == 0:
        return out
    touched = m  # per chunk: does the mask select anything in it
    for ax, c in enumerate(chunks):
        touched = np.logical_or.reduceat(touched, np.arange(0, shape[ax], c), axis=ax)
    before = np.concatenate([[0], np.cumsum(m.reshape(shape[0], -1).sum(axis=1))])
    rows = max(1, BUDGET // max(1, itemsize * chunks[0] * math.prod(shape[1:])))
    spans: list[tuple[int, int]] = []  # the slabs read as points: (first, end) in ``out``
    points: list[np.ndarray] = []

    def jobs() -> Iterable[tuple[int, Callable[[], Task], Callable[[Task], None]]]:
        for g0 in range(0, touched.shape[0], rows):
            r0, r1 = g0 * chunks[0], min(shape[0], (g0 + rows) * chunks[0])
            p0, p1 = int(before[r0]), int(before[r1])
            if p0 == p1:
                continue
            slab = m[r0:r1]
            lo, hi = [], []
            for ax in range(m.ndim):
                hit = np.flatnonzero(slab.any(axis=tuple(i for i in range(m.ndim) if i != ax)))
                lo.append(int(hit[0]) + (r0 if ax == 0 else 0))
                hi.append(int(hit[-1]) + 1 + (r0 if ax == 0 else 0))
            box = tuple(map(slice, lo, hi))
            cbox = tuple(
                slice(a // c, (b - 1) // c + 1) for a, b, c in zip(lo, hi, chunks, strict=True)
            )
            nbytes = itemsize * math.prod(b - a for a, b in zip(lo, hi, strict=True))
            if nbytes <= BUDGET and touched[cbox].all():
                start = partial(array.start_read, lo, hi)
                yield nbytes, start, partial(_put_masked, out[p0:p1], m[box])
            else:
                spans.append((p0, p1))
                points.append(np.stack(np.nonzero(slab)) + np.array([[r0]] + [[0]] * (m.ndim - 1)))

    _run(jobs())
    if points:
        values = read_points(array, list(np.concatenate(points, axis=1)))
        at = 0
        for p0, p1 in spans:
            out[p0:p1] = values[at : at + p1 - p0]
            at += p1 - p0
    return out


def _put_masked(dst: np.ndarray, m: np.ndarray, task: Task) -> None:
    dst[...] = task.out[m]  # type: ignore[attr-defined]


# -- reading -----------------------------------------------------------------------------
def _read_chunks(
    array: Array,
    coords: np.ndarray,
    gather: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
) -> None:
    """Read the chunks at grid ``coords`` (``(m, ndim)``) whole (cut at the array's
    end) and call ``gather(rows, los, boxes)`` for each group read: ``boxes[i]`` is the
    chunk ``coords[rows[i]]``, whose first element is at ``los[i]``.  Groups of equal
    chunks, :data:`BUDGET` bytes each, through :meth:`Array.start_boxes` where the C
    decoder handles the codecs; else one chunk per read."""
    chunks = np.asarray(array.chunks, dtype=np.int64)
    lo = coords * chunks
    ext = np.minimum(lo + chunks, np.asarray(array.shape, dtype=np.int64)) - lo
    itemsize = array.dtype.itemsize

    def jobs() -> Iterable[tuple[int, Callable[[], Task], Callable[[Task], None]]]:
        if not scatterable(array):
            for j in range(len(coords)):
                rows = np.array([j])
                nbytes = itemsize * int(ext[j].prod())
                start = partial(array.start_read, lo[j], lo[j] + ext[j])
                yield nbytes, start, partial(_gather_one, gather, rows, lo[rows])
            return
        shapes, kind = np.unique(ext, axis=0, return_inverse=True)
        kind = kind.reshape(-1)
        for c, shape in enumerate(shapes.tolist()):
            rows_c = np.flatnonzero(kind == c)
            nbytes = itemsize * math.prod(shape)
            per = max(1, BUDGET // max(1, nbytes))
            for a in range(0, len(rows_c), per):
                rows = rows_c[a : a + per]
                start = partial(_start_group, array, lo[rows], (len(rows), *shape))
                yield nbytes * len(rows), start, partial(_gather_group, gather, rows, lo[rows])

    _run(jobs())


def _start_group(array: Array, los: np.ndarray, shape: tuple[int, ...]) -> Task:
    return array.start_boxes(los, np.empty(shape, dtype=array.dtype))


def _gather_group(
    gather: Callable[..., None], rows: np.ndarray, los: np.ndarray, task: Task
) -> None:
    gather(rows, los, task.out)  # type: ignore[attr-defined]


def _gather_one(gather: Callable[..., None], rows: np.ndarray, los: np.ndarray, task: Task) -> None:
    gather(rows, los, task.out[None])  # type: ignore[attr-defined]


def _run(jobs: Iterable[tuple[int, Callable[[], Task], Callable[[Task], None]]]) -> None:
    """Run ``(nbytes, start, finish)`` jobs: ``start()`` begins a read holding
    ``nbytes`` of buffers, ``finish(task)`` uses it once done, in order; at most
    :data:`BUDGET` bytes (one job at least) and :data:`MAX_TASKS` reads in flight.  On
    an error the reads still in flight are abandoned."""
    window: deque[tuple[Task, int, Callable[[Task], None]]] = deque()
    held = 0

    def finish_first() -> None:
        nonlocal held
        task, nbytes, finish = window[0]
        task.wait()
        window.popleft()
        held -= nbytes
        finish(task)

    try:
        for nbytes, start, finish in jobs:
            while window and (held + nbytes > BUDGET or len(window) >= MAX_TASKS):
                finish_first()
            window.append((start(), nbytes, finish))
            held += nbytes
        while window:
            finish_first()
    except BaseException:
        abandon([t for t, _, _ in window])
        raise
