"""Advanced indexing of an :class:`~lsio_ray.zarr.Array`, with zarr-python's names and
semantics: orthogonal selections (``a.oindex[...]``, :func:`orthogonal`: per axis an
integer, a slice, a 1-d integer array or a 1-d boolean mask, combined as an outer
product), coordinate selections (``a.vindex[...]``, :func:`coordinate`: integer arrays
broadcast together, one per axis), mask selections (``a.vindex[mask]``, :func:`mask`: a
boolean array of the array's shape), and the choice :func:`getitem` makes for ``a[key]``.
The keys are parsed here; :mod:`lsio_ray.zarr.gather` reads the chunks they touch.

Where zarr-python refuses a key numpy reads (``a[[1, 2], ...]``, ``a[mask_1d]`` on an
n-d array, ``np.newaxis``, ``[]``, negative slice steps in ``oindex``), it is read as
numpy does.  Several index arrays mixed with slices in ``a[key]`` (read differently by
numpy and zarr-python) are refused: ``a.oindex`` or ``a.vindex`` says which is meant.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lsio_ray.zarr.gather import Axis, read_mask, read_orthogonal, read_points

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = ["OIndex", "ShapeMismatchError", "VIndex", "coordinate", "getitem", "mask"]
__all__ += ["orthogonal", "to_numpy"]


class ShapeMismatchError(IndexError, ValueError):
    """Index arrays that do not broadcast together (numpy raises ``IndexError`` and
    zarr-python ``ValueError``: this is both)."""


@dataclass(frozen=True)
class OIndex:
    """``a.oindex[selection]``: :func:`orthogonal` (zarr-python's ``Array.oindex``)."""

    array: Array

    def __getitem__(self, selection: Any) -> np.ndarray:
        return orthogonal(self.array, selection)


@dataclass(frozen=True)
class VIndex:
    """``a.vindex[selection]``: :func:`coordinate` for a tuple of integer arrays,
    :func:`mask` for one boolean array of the array's shape (zarr-python's
    ``Array.vindex``)."""

    array: Array

    def __getitem__(self, selection: Any) -> np.ndarray:
        key = _as_tuple(selection)
        if len(key) == 1:
            m = _convert(key[0])
            if isinstance(m, np.ndarray) and m.dtype == bool:
                return mask(self.array, m)
        return coordinate(self.array, selection)


# -- keys --------------------------------------------------------------------------------
def _as_tuple(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def _convert(k: Any) -> Any:
    """A key item with lists and array-likes as integer or boolean numpy arrays (a 0-d
    integer array as an int), integer-likes as ints; other items unchanged."""
    if k is None or k is Ellipsis or isinstance(k, (slice, bool, np.bool_)):
        return k
    if isinstance(k, (list, np.ndarray)) or (
        not hasattr(type(k), "__index__") and hasattr(k, "__array__")
    ):
        arr = np.asarray(k)
        if arr.size == 0 and arr.dtype.kind not in "biu":
            arr = arr.astype(np.intp)  # ``[]``: no index, as numpy reads it
        if arr.dtype.kind == "b":
            return arr
        if arr.dtype.kind not in "iu":
            raise IndexError(
                f"arrays used as indices must be of integer or boolean type, not {arr.dtype}"
            )
        return int(arr) if arr.ndim == 0 else arr
    if hasattr(type(k), "__index__"):
        return operator.index(k)
    return k


def _is_int(k: Any) -> bool:
    return isinstance(k, int) and not isinstance(k, bool)


def _is_int_array(k: Any) -> bool:
    return isinstance(k, np.ndarray) and k.dtype.kind in "iu"


def _newaxis(key: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """``key`` without its ``None``s, and the index that puts them back into a result
    read without them (None if there were none)."""
    if not any(k is None for k in key):
        return key, None
    post: list[Any] = []
    for k in key:
        if k is None:
            post.append(np.newaxis)
        elif k is Ellipsis:
            post.append(Ellipsis)
        elif not _is_int(k):
            post.append(slice(None))
    return tuple(k for k in key if k is not None), tuple(post)


def _expand(key: tuple[Any, ...], ndim: int) -> tuple[Any, ...]:
    """``key`` with its ``...`` (or the missing trailing axes) as full slices."""
    n_ell = sum(k is Ellipsis for k in key)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = len(key) - n_ell
    if used > ndim:
        raise IndexError(
            f"too many indices for array: array is {ndim}-dimensional, but {used} were indexed"
        )
    fill = (slice(None),) * (ndim - used)
    if n_ell:
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        return key[:i] + fill + key[i + 1 :]
    return key + fill


def _wrap(idx: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Integer indices along an axis of length ``n``, checked and made non-negative, as
    a new int64 array (the caller's is never changed)."""
    if idx.size:
        lo, hi = idx.min(), idx.max()
        if idx.dtype.kind == "i" and lo < -n:
            raise IndexError(f"index {int(lo)} is out of bounds for axis {axis} with size {n}")
        if hi >= n:
            raise IndexError(f"index {int(hi)} is out of bounds for axis {axis} with size {n}")
    out = idx.astype(np.int64)
    if idx.dtype.kind == "i":
        out[out < 0] += n
    return out


def _bool_length(m: np.ndarray, n: int, axis: int) -> None:
    if len(m) != n:
        raise IndexError(
            f"boolean index did not match indexed array along axis {axis}; size of axis "
            f"is {n} but size of corresponding boolean axis is {len(m)}"
        )


# -- a[key] ------------------------------------------------------------------------------
def getitem(array: Array, key: Any) -> np.ndarray:
    """``a[key]`` as zarr-python reads it: integers, slices, ``...`` and ``None`` as
    numpy does (:meth:`~lsio_ray.zarr.Array.read`); one boolean array of the array's
    shape, or integers and integer arrays on every axis, as :func:`mask` /
    :func:`coordinate`; one index array (a 1-d boolean mask on the first axis
    included), or one per axis with some boolean, as :func:`orthogonal`.  Several index
    arrays mixed with slices are refused (numpy and zarr-python read them differently)."""
    items = tuple(_convert(k) for k in _as_tuple(key))
    arrays = [k for k in items if isinstance(k, np.ndarray)]
    if not arrays:
        stripped, post = _newaxis(items)
        out = array.read(stripped)
        return out if post is None else out[post]
    ndim = array.ndim
    if len(items) == 1 and arrays[0].dtype == bool:
        m = arrays[0]
        if m.ndim == ndim:
            return mask(array, m)
        if m.ndim == 1:
            return orthogonal(array, items)
        raise IndexError(
            f"a {m.ndim}-d boolean index for a {ndim}-d array: give a mask of the array's "
            "shape (a.vindex[mask]) or 1-d masks per axis (a.oindex[...])"
        )
    if len(items) == ndim and all(_is_int(k) or _is_int_array(k) for k in items):
        return coordinate(array, items)
    if len(arrays) == 1 or (len(items) == ndim and len(arrays) == ndim):
        return orthogonal(array, items)
    raise IndexError(
        "several index arrays mixed with other indices are read differently by numpy and "
        "zarr-python: use a.oindex[...] (one index per axis, combined as an outer product) "
        "or a.vindex[...] (integer arrays broadcast together, one per axis)"
    )


def to_numpy(array: Array, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
    """``np.asarray(a)`` (``Array.__array__``, numpy 2's signature): the whole array,
    in a new numpy array."""
    if copy is False:
        raise ValueError(
            f"{array.path}: np.asarray(..., copy=False) cannot be honoured: reading the "
            "array always makes a new numpy array"
        )
    out = array.read(...)
    return out if dtype is None else out.astype(dtype, copy=False)


# -- orthogonal selections ---------------------------------------------------------------
def _axis(k: Any, n: int, chunk: int, axis: int) -> Axis:
    if _is_int(k):
        if not -n <= k < n:
            raise IndexError(f"index {k} is out of bounds for axis {axis} with size {n}")
        return Axis(n, chunk, k % n, k % n + 1, drop=True)
    if isinstance(k, slice):
        start, stop, step = k.indices(n)
        if step == 1:
            return Axis(n, chunk, start, max(start, stop))
        return Axis(n, chunk, sel=np.arange(start, stop, step, dtype=np.int64))
    if isinstance(k, np.ndarray):
        if k.dtype == bool:
            if k.ndim != 1:
                raise IndexError("boolean arrays in an orthogonal selection must be 1-d")
            _bool_length(k, n, axis)
            sel = np.flatnonzero(k).astype(np.int64)
        else:
            if k.ndim != 1:
                raise IndexError("integer arrays in an orthogonal selection must be 1-d")
            sel = _wrap(k, n, axis)
        if len(sel) and sel[-1] - sel[0] == len(sel) - 1 and (np.diff(sel) == 1).all():
            return Axis(n, chunk, int(sel[0]), int(sel[-1]) + 1)
        return Axis(n, chunk, sel=sel)
    if k is None:
        raise IndexError("np.newaxis (None) is not an orthogonal selection item")
    raise IndexError(
        f"unsupported index {k!r} for axis {axis} in an orthogonal selection: use integers, "
        "slices, 1-d integer arrays or 1-d boolean arrays"
    )


def orthogonal(array: Array, selection: Any) -> np.ndarray:
    """zarr-python's ``get_orthogonal_selection``: per axis an integer (the axis is
    dropped), a slice (any step), a 1-d integer array (negative, unsorted and repeated
    indices allowed) or a 1-d boolean mask of the axis's length, ``...`` for the axes
    not given; the result holds their outer product (``numpy.ix_``).  ``None`` inserts
    an axis of length 1, as in numpy."""
    items = tuple(_convert(k) for k in _as_tuple(selection))
    items, post = _newaxis(items)
    items = _expand(items, array.ndim)
    if not items:  # a 0-d array
        out = array.read(...)
        return out if post is None else out[post]
    axes = [
        _axis(k, n, c, ax)
        for ax, (k, n, c) in enumerate(zip(items, array.shape, array.chunks, strict=True))
    ]
    out = np.empty(tuple(ax.size for ax in axes), dtype=array.dtype)
    if out.size:
        read_orthogonal(array, axes, out)
    out = out.reshape(tuple(ax.size for ax in axes if not ax.drop))
    return out if post is None else out[post]


# -- coordinate and mask selections ------------------------------------------------------
def coordinate(array: Array, selection: Any) -> np.ndarray:
    """zarr-python's ``get_coordinate_selection``: one integer or integer array per
    axis, broadcast together (negative, unsorted and repeated coordinates allowed); the
    result has their broadcast shape (``(1,)`` for integers alone) and holds
    ``a[i0[j], i1[j], ...]`` for each position ``j``."""
    items = tuple(_convert(k) for k in _as_tuple(selection))
    if (
        array.ndim == 0
        or len(items) != array.ndim
        or not all(_is_int(k) or _is_int_array(k) for k in items)
    ):
        raise IndexError(
            f"invalid coordinate selection for a {array.ndim}-d array: expected one integer "
            f"array (or integer) per axis, got {selection!r}"
        )
    wrapped = [
        _wrap(np.asarray(k), n, ax)
        for ax, (k, n) in enumerate(zip(items, array.shape, strict=True))
    ]
    try:
        b = np.broadcast_arrays(*wrapped)
    except ValueError:
        shapes = " ".join(str(w.shape) for w in wrapped)
        raise ShapeMismatchError(
            f"shape mismatch: indexing arrays could not be broadcast together with shapes {shapes}"
        ) from None
    shape = b[0].shape or (1,)
    if array.ndim == 1:  # the same as an orthogonal selection, which reads runs as boxes
        return orthogonal(array, b[0].reshape(-1)).reshape(shape)
    return read_points(array, [x.reshape(-1) for x in b]).reshape(shape)


def mask(array: Array, selection: Any) -> np.ndarray:
    """zarr-python's ``get_mask_selection``: the elements where a boolean array of the
    array's shape is True, in C order (``a[mask]`` in numpy)."""
    key = _as_tuple(selection)
    m = _convert(key[0]) if len(key) == 1 else None
    if not isinstance(m, np.ndarray) or m.dtype != bool:
        raise IndexError(
            f"invalid mask selection: expected one boolean array of shape {array.shape}, "
            f"got {selection!r}"
        )
    if m.ndim != array.ndim:
        raise IndexError(f"a {m.ndim}-d boolean mask for a {array.ndim}-d array")
    for axis, (k, n) in enumerate(zip(m.shape, array.shape, strict=True)):
        if k != n:
            raise IndexError(
                f"boolean index did not match indexed array along axis {axis}; size of "
                f"axis is {n} but size of corresponding boolean axis is {k}"
            )
    if array.ndim == 0:
        return array.read(...)[m]
    return read_mask(array, m)
