"""IO planning: which chunks a region touches and where each one's bytes go.

Everything here is vectorised over chunks (numpy arrays with one row per chunk), so a
region touching thousands of chunks is planned in a few numpy calls.

A *region* is a box ``[lo, hi)`` in array coordinates.  :func:`normalize` turns a
numpy-style key (integers, slices with any step, ``...``) into such a box plus the
indexing to apply to the box afterwards (steps, dropped integer axes).  Unlike numpy,
a slice reaching past the array is an ``IndexError``, not silently clipped: a crop that
comes back smaller than asked is a bug in a data loader.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsio_ray.io import plan_box

__all__ = ["Region", "Selection", "coalesce", "normalize", "region_of_box", "select_chunks"]


@dataclass(frozen=True)
class Region:
    """A box ``[lo, hi)`` plus what to do with it to get the caller's result.

    ``drop`` lists the axes indexed by an integer (removed from the result); ``post``
    is the indexing applied to the box when a slice had a step other than 1 (else None).
    """

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    drop: tuple[int, ...] = ()
    post: tuple[slice, ...] | None = None

    @property
    def box_shape(self) -> tuple[int, ...]:
        """The shape of the box that is read."""
        return tuple(h - lo for lo, h in zip(self.lo, self.hi, strict=True))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the caller's result."""
        shape = list(self.box_shape)
        if self.post is not None:
            shape = [len(range(n)[s]) for n, s in zip(shape, self.post, strict=True)]
        return tuple(n for i, n in enumerate(shape) if i not in self.drop)

    @property
    def size(self) -> int:
        """Number of elements in the box."""
        return int(np.prod(self.box_shape, dtype=np.int64))


def region_of_box(lo: Any, hi: Any) -> Region:
    """A region that is just the box (no dropped axes, no steps)."""
    return Region(tuple(int(x) for x in lo), tuple(int(x) for x in hi))


def _bound(value: int | None, n: int, axis: int, what: str) -> None:
    if value is not None and not -n <= value <= n:
        raise IndexError(f"slice {what} {value} is out of bounds for axis {axis} with size {n}")


def normalize(key: Any, shape: tuple[int, ...]) -> Region:
    """Turn a numpy-style key into a :class:`Region` of an array of ``shape``.

    Accepts integers, slices (any non-zero step) and one ``Ellipsis``; raises
    ``IndexError`` for out-of-bounds integers or slice bounds, too many indices and
    unsupported index types (arrays, lists, ``None``)."""
    if not isinstance(key, tuple):
        key = (key,)
    n_ell = sum(k is Ellipsis for k in key)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ell:
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        fill = len(shape) - (len(key) - 1)
        if fill < 0:
            raise IndexError(f"too many indices for array: array is {len(shape)}-dimensional")
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > len(shape):
        raise IndexError(
            f"too many indices for array: array is {len(shape)}-dimensional, "
            f"but {len(key)} were indexed"
        )
    key = key + (slice(None),) * (len(shape) - len(key))
    lo: list[int] = []
    hi: list[int] = []
    drop: list[int] = []
    post: list[slice] = []
    stepped = False
    for axis, (k, n) in enumerate(zip(key, shape, strict=True)):
        if isinstance(k, slice):
            for what, v in (("start", k.start), ("stop", k.stop)):
                _bound(None if v is None else operator.index(v), n, axis, what)
            start, stop, step = k.indices(n)
            rng = range(start, stop, step)
            if step == 1:
                lo.append(start)
                hi.append(max(start, stop))
                post.append(slice(None))
            elif len(rng) == 0:
                lo.append(0)
                hi.append(0)
                post.append(slice(None))
            else:
                first, last = rng[0], rng[-1]
                a, b = min(first, last), max(first, last)
                lo.append(a)
                hi.append(b + 1)
                post.append(slice(first - a, None, step))
                stepped = True
            continue
        if k is None or isinstance(k, (list, np.ndarray)) or isinstance(k, (bool, np.bool_)):
            raise IndexError(
                f"unsupported index {k!r} for axis {axis}: use integers, slices and '...'"
            )
        try:
            i = operator.index(k)
        except TypeError:
            raise IndexError(
                f"unsupported index {k!r} for axis {axis}: use integers, slices and '...'"
            ) from None
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
        i %= n
        lo.append(i)
        hi.append(i + 1)
        drop.append(axis)
        post.append(slice(None))
    return Region(tuple(lo), tuple(hi), tuple(drop), tuple(post) if stepped else None)


@dataclass
class Selection:
    """The chunks a box touches, one row per chunk (C order over the chunk grid).

    ``coords`` are chunk grid coordinates; ``src_lo/src_hi`` the part of each chunk that
    is wanted (chunk coordinates); ``dst_lo/dst_hi`` where it goes (box coordinates);
    ``full`` marks chunks wholly inside the box (not clipped by the box or the array).
    """

    coords: np.ndarray
    src_lo: np.ndarray
    src_hi: np.ndarray
    dst_lo: np.ndarray
    dst_hi: np.ndarray
    full: np.ndarray

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def select_chunks(
    lo: Any,
    hi: Any,
    chunks: tuple[int, ...],
    jobs: np.ndarray | None = None,
    dst_strides: tuple[int, ...] = (),
    chunk_strides: tuple[int, ...] = (),
    dst_origin: int = 0,
    direct: bool = False,
) -> Selection:
    """The chunks of size ``chunks`` that the box ``[lo, hi)`` touches (planned in C:
    :func:`lsio_ray.io.plan_box`).  Given ``jobs`` (one ``DECODE_JOB_DTYPE`` row per
    chunk: :func:`chunk_count` of them), each chunk's decode job is planned into it in
    the same C call, from the other arguments (as :func:`~lsio_ray.io.plan_box` says)."""
    lo_t = tuple(int(x) for x in np.asarray(lo).reshape(-1))
    hi_t = tuple(int(x) for x in np.asarray(hi).reshape(-1))
    ndim = len(lo_t)
    if ndim == 0:
        z = np.zeros((1, 0), np.int64)
        return Selection(z, z, z, z, z, np.ones(1, bool))
    ch = tuple(int(c) for c in chunks)
    n = chunk_count(lo_t, hi_t, ch)
    if n == 0:
        z = np.zeros((0, ndim), np.int64)
        return Selection(z, z, z, z, z, np.zeros(0, bool))
    sel, full = plan_box(lo_t, hi_t, ch, n, jobs, dst_strides, chunk_strides, dst_origin, direct)
    return Selection(sel[0], sel[1], sel[2], sel[3], sel[4], full)


def chunk_count(lo: tuple[int, ...], hi: tuple[int, ...], chunks: tuple[int, ...]) -> int:
    """How many chunks of size ``chunks`` the box ``[lo, hi)`` touches (0 if empty)."""
    n = 1
    for a, b, c in zip(lo, hi, chunks, strict=True):
        if b <= a:
            return 0
        n *= (b - 1) // c + 1 - a // c
    return n


def coalesce(
    file_id: np.ndarray,
    offset: np.ndarray,
    nbytes: np.ndarray,
    *,
    max_gap: int,
    max_bytes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge byte ranges of the same file that are adjacent (gap <= ``max_gap``).

    Inputs are per chunk; returns ``(order, range_of, range_start, range_end)``: the
    chunks sorted by file and offset, the range each sorted chunk falls in, and each
    range's byte bounds.  Ranges are also cut at multiples of ``max_bytes`` so that no
    range grows much past it.
    """
    n = int(offset.size)
    if n == 0:
        e = np.zeros(0, np.int64)
        return e, e, e, e
    order = np.lexsort((offset, file_id))
    f = file_id[order].astype(np.int64)
    off = offset[order].astype(np.int64)
    end = off + nbytes[order].astype(np.int64)
    # make offsets increase across files so one running maximum serves all of them
    span = int(end.max()) + max_gap + 1
    key_end = np.maximum.accumulate(f * span + end)
    new = np.ones(n, bool)
    new[1:] = (
        (f[1:] != f[:-1])
        | (f[1:] * span + off[1:] > key_end[:-1] + max_gap)
        | (off[1:] // max(max_bytes, 1) != off[:-1] // max(max_bytes, 1))
    )
    range_of = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    r_start = off[starts]
    r_end = np.maximum.reduceat(end, starts)
    return order, range_of, r_start, r_end
