"""Aligned samples of several arrays: crops (or windows) of every array at one place.

Training data pairs an image with its label or mask, or takes several variables of one
dataset.  :func:`aligned` gathers such arrays by name -- a group and the names of its
arrays, a list of arrays (or their paths), or a dict ``name -> array`` -- and their
samples are read together:

>>> import lsio_ray.zarr as lz
>>> pair = lz.aligned("ds.zarr", ["image", "label"])       # a group and variable names
>>> for s in pair.random_crops((8, 64, 64), 1000, seed=0):  # dicts, one key per array
...     step(s["image"], s["label"])                          # s["lo"]: where, s["index"]
>>> for s in pair.windows((8, 64, 64), partial="pad"): ...    # a full scan

**The alignment rule.**  A crop (or window) shape of ``k`` dimensions covers the
**last** ``k`` axes of every array, as numpy's broadcasting aligns shapes: these *grid*
axes must have the same length in every array (else ``ValueError`` naming both arrays
and their shapes).  The axes before them are read whole, and may differ from array to
array: an image ``(C, Z, Y, X)`` beside a label ``(Z, Y, X)`` gives samples ``(C, 8,
64, 64)`` and ``(8, 64, 64)`` for a crop ``(8, 64, 64)``.  (Channels last, ``(Z, Y, X,
C)``, do not fit the rule: store them first.)  dtypes, chunks, codecs, Zarr formats
and fill values may all differ.  A sample's location ``lo`` is its corner on the grid
axes: array ``a`` is read at ``a[..., lo[0]:lo[0]+k0, lo[1]:lo[1]+k1, ...]``.

**Together.**  The reads of a group of samples, every array's, are planned first and
handed to the IO service in one go (:meth:`~lsio_ray.io.service.IOService.start_all`),
so their first batches go out in the same submission pass; a chunk under several
samples of a group is read and decoded once (:class:`~lsio_ray.zarr.scatter.ScatterTask`
for the C decoder's codecs, box by box for the others).

Random crops are placed from the seed alone, as :meth:`Array.random_crops` places them
on an array of the grid's shape (:func:`~lsio_ray.zarr.stream.random_box_starts`):
the label crops of an image + label pair are ``label.random_crops(shape, count,
seed=seed)``.  The Ray Data readers take the same arrays (``read_zarr_crops(...,
arrays=[...])``, :mod:`lsio_ray.data_aligned`).
"""

from __future__ import annotations

import collections
import itertools
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lsio_ray.zarr.array import Array, open_array
from lsio_ray.zarr.group import Group, open_group
from lsio_ray.zarr.loader import Task, abandon
from lsio_ray.zarr.read import BoxRead
from lsio_ray.zarr.scatter import ScatterTask, scatterable
from lsio_ray.zarr.stream import (
    GROUP_BYTES,
    clustered_box_starts,
    random_box_starts,
    window_starts,
)

__all__ = ["RESERVED", "AlignedArrays", "SampleRead", "aligned"]

#: names a sample (and a Ray Data row) uses for its location: no array may take them
RESERVED = ("index", "lo", "path")

Location = str | os.PathLike[str] | Array


def _name_of(loc: Location) -> str:
    """An array's name from its location: the last part of its path, ``.zarr`` off."""
    loc = _unwrap(loc)
    path = loc.path if isinstance(loc, Array) else os.fspath(loc)
    base = posixpath.basename(path.rstrip("/"))
    return base[: -len(".zarr")] if base.endswith(".zarr") and len(base) > 5 else base


def _unwrap(node: Any) -> Any:
    """The :class:`Array` inside a wrapper holding one as ``.array`` (``lsio_ray.open``'s
    notebook arrays), else ``node``."""
    inner = getattr(node, "array", None)
    return inner if isinstance(inner, Array) else node


def _check_names(names: Iterable[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: an array name must be a non-empty string, not {name!r}")
        if name in RESERVED:
            raise ValueError(
                f"{where}: an array named {name!r} would clash with the sample's {name!r} "
                "entry: give it another name (a dict name -> array)"
            )
        if name in seen:
            raise ValueError(f"{where}: two arrays named {name!r}: give names (a dict)")
        seen.add(name)


def aligned(
    arrays: Group | Location | Sequence[Location] | Mapping[str, Location],
    names: Sequence[str] | Mapping[str, str] | None = None,
    **options: Any,
) -> AlignedArrays:
    """Arrays read at the same places (:class:`AlignedArrays`), by name.

    ``arrays``: a :class:`~lsio_ray.zarr.Group` (or the path of one) with ``names``,
    the names of its arrays (``"sub/mask"`` reaches into nested groups; a dict
    ``{new_name: member}`` renames); a list of arrays, paths or URLs (named by
    ``names``, else by the last part of each path without ``.zarr``); or a dict
    ``name -> array, path or URL``.  ``options`` (``direct``, ``coalesce_gap``...) open
    the arrays given by path, as :func:`~lsio_ray.zarr.open_array` takes them."""
    if isinstance(names, str):
        raise ValueError(f"aligned(): names is a list of names, not the string {names!r}")
    if isinstance(arrays, Group) or (isinstance(arrays, str | os.PathLike) and names):
        if not names:
            raise ValueError("aligned(group): name the group's arrays to read (names=[...])")
        group = arrays if isinstance(arrays, Group) else open_group(arrays, **options)
        pairs = names.items() if isinstance(names, Mapping) else [(n, n) for n in names]
        found = {}
        for name, member in pairs:
            node = _unwrap(group[member])
            if not isinstance(node, Array):
                raise ValueError(f"{group.path}: member {member!r} is a group, not an array")
            found[name] = node
        return AlignedArrays(found, root=group.path)
    if isinstance(_unwrap(arrays), str | os.PathLike | Array):
        raise ValueError(
            f"aligned() takes several arrays: a group with names=[...], a list or a dict of "
            f"arrays, not {arrays!r} alone"
        )
    if isinstance(arrays, Mapping):
        if names is not None:
            raise ValueError("aligned(dict): the dict's keys name the arrays; give no names")
        given = dict(arrays)
    else:
        locs = list(arrays)
        if names is None:
            names = [_name_of(loc) for loc in locs]
        if isinstance(names, Mapping) or len(names) != len(locs):
            raise ValueError(f"aligned(): {len(locs)} arrays but names {names!r}")
        _check_names(names, "aligned()")
        given = dict(zip(names, locs, strict=True))
    opened = {}
    for name, loc in given.items():
        loc = _unwrap(loc)
        opened[name] = loc if isinstance(loc, Array) else open_array(loc, **options)
    return AlignedArrays(opened)


class SampleRead:
    """The reads of a group of samples, every array's, started together: :meth:`wait`
    until all are done (the outputs then hold the samples)."""

    def __init__(self, tasks: list[Task], outs: Mapping[str, Any]) -> None:
        self.tasks = tasks
        self.outs = outs

    def wait(self) -> None:
        """Block until every array's reads are done; raise the first error."""
        for task in self.tasks:
            task.wait()


class AlignedArrays:
    """Several arrays (``name -> Array``, at least one) read at the same places of their
    shared grid axes (see the module doc for the rule).  ``obj[name]`` is an array;
    :meth:`random_crops`, :meth:`windows` and :meth:`samples` yield one dict per sample:
    each array's crop under its name, ``index`` (the sample's number) and ``lo`` (its
    corner on the grid axes).  ``root``: the group they come from, if one."""

    def __init__(self, arrays: Mapping[str, Array], *, root: str | None = None) -> None:
        self.arrays: dict[str, Array] = dict(arrays)
        self.root = root
        """The group the arrays were taken from (None: arrays given one by one)."""
        if not self.arrays:
            raise ValueError("AlignedArrays needs at least one array")
        _check_names(self.arrays, "AlignedArrays")

    @property
    def names(self) -> tuple[str, ...]:
        """The arrays' names, in order."""
        return tuple(self.arrays)

    def __getitem__(self, name: str) -> Array:
        return self.arrays[name]

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: shape={a.shape} dtype={a.dtype}" for n, a in self.arrays.items())
        return f"<lsio_ray.zarr.AlignedArrays {inner}>"

    # -- the grid ------------------------------------------------------------------------
    def grid(self, ndim: int) -> tuple[int, ...]:
        """The shape of the last ``ndim`` axes, the same in every array (``ValueError``
        naming the two arrays and their shapes where it is not)."""
        ndim = int(ndim)
        if ndim < 1:
            raise ValueError(f"a sample needs at least one dimension, not {ndim}")
        first_name, first = next(iter(self.arrays.items()))
        grid: tuple[int, ...] | None = None
        for name, arr in self.arrays.items():
            if arr.ndim < ndim:
                raise ValueError(
                    f"array {name!r} ({arr.path}) has shape {arr.shape}: fewer dimensions "
                    f"than the sample's {ndim} (a sample covers the last {ndim} axes of "
                    "every array)"
                )
            tail = arr.shape[arr.ndim - ndim :]
            if grid is None:
                grid = tail
            elif tail != grid:
                raise ValueError(
                    f"aligned arrays must agree on the last {ndim} axes (the sampled "
                    f"ones): {first_name!r} ({first.path}) has shape {first.shape}, "
                    f"{name!r} ({arr.path}) has shape {arr.shape}"
                )
        assert grid is not None
        return grid

    def sample_shapes(self, shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Each array's sample shape for a crop of ``shape``: its leading axes whole, then
        ``shape`` (checks the grid)."""
        shape = tuple(int(s) for s in shape)
        self.grid(len(shape))
        return {n: (*a.shape[: a.ndim - len(shape)], *shape) for n, a in self.arrays.items()}

    def random_starts(self, shape: Sequence[int], count: int, seed: int | None) -> np.ndarray:
        """The ``(count, k)`` corners of :meth:`random_crops` (``random_box_starts`` on
        the grid)."""
        shape = tuple(int(s) for s in shape)
        return random_box_starts(self.grid(len(shape)), shape, count, seed)

    def clustered_starts(
        self,
        shape: Sequence[int],
        count: int,
        *,
        seed: Any = None,
        per_cell: int = 16,
        cell: Iterable[int] | None = None,
    ) -> np.ndarray:
        """Corners drawn ``per_cell`` at a time from one cell (as
        :meth:`Array.clustered_starts`; ``cell`` default: per axis the larger of the
        crop and the first array's chunk on that axis)."""
        shape = tuple(int(s) for s in shape)
        grid = self.grid(len(shape))
        if cell is None:
            first = next(iter(self.arrays.values()))
            chunks = first.chunks[first.ndim - len(shape) :]
            cell = tuple(max(c, int(k)) for c, k in zip(shape, chunks, strict=True))
        return clustered_box_starts(grid, shape, count, seed, per_cell, tuple(cell))

    def window_axes(
        self, shape: Sequence[int], stride: Sequence[int] | None = None, partial: str = "pad"
    ) -> tuple[np.ndarray, ...]:
        """Per grid axis, the window starts of a full scan
        (:func:`~lsio_ray.zarr.stream.window_starts` on the grid)."""
        shape = tuple(int(s) for s in shape)
        return window_starts(self.grid(len(shape)), shape, stride, partial)

    def group(self, shape: Sequence[int], prefetch: int) -> int:
        """Samples per read group for about ``prefetch`` in flight: the smallest
        :meth:`Array.box_group` of the arrays that read boxes in groups (1 if none)."""
        shapes = self.sample_shapes(shape)
        groups = [a.box_group(shapes[n], prefetch) for n, a in self.arrays.items()]
        grouped = [g for g in groups if g > 1]
        return min(grouped) if grouped else 1

    # -- reading -------------------------------------------------------------------------
    def start(
        self,
        starts: Any,
        shape: Sequence[int],
        outs: Mapping[str, np.ndarray | Sequence[np.ndarray]],
        *,
        pad: bool = False,
    ) -> SampleRead:
        """Start reading the samples with corners ``starts`` (``(n, k)``, on the grid) of
        ``shape`` into ``outs[name]`` (``(n, *sample_shape)`` of the array's dtype, or a list
        of ``n`` such samples sharing their strides), all
        arrays' reads handed to the IO service together.  ``pad``: a sample may run past
        the grid's end (not before its start); the part outside is the array's fill
        value.  Returns the :class:`SampleRead` (``wait()``)."""
        shape = tuple(int(s) for s in shape)
        shapes = self.sample_shapes(shape)
        grid = np.asarray(self.grid(len(shape)), dtype=np.int64)
        los = np.asarray(starts, dtype=np.int64).reshape(-1, len(shape))
        n = len(los)
        size = np.asarray(shape, dtype=np.int64)
        for name, arr in self.arrays.items():
            want, out = (n, *shapes[name]), outs[name]
            if isinstance(out, np.ndarray):
                ok = out.shape == want and out.dtype == arr.dtype
                got = f"shape {out.shape} and dtype {out.dtype}"
            else:
                ok = len(out) == n and all(
                    r.shape == want[1:] and r.dtype == arr.dtype for r in out
                )
                got = f"{len(out)} samples of shapes and dtypes " + ", ".join(
                    sorted({f"{r.shape} {r.dtype}" for r in out})
                )
            if not ok:
                raise ValueError(f"{name!r}: out has {got}, expected {want} and {arr.dtype}")
        over = los + size > grid
        bad = (los < 0) | (los >= grid) if pad else (los < 0) | over
        if bad.any():
            k = int(np.flatnonzero(bad.any(axis=1))[0])
            raise IndexError(
                f"sample at {tuple(los[k].tolist())} of shape {shape} is out of bounds for "
                f"the grid {tuple(grid.tolist())}"
            )
        edge = over.any(axis=1) if pad else np.zeros(n, bool)
        whole, edges = np.flatnonzero(~edge), np.flatnonzero(edge)
        tasks: list[Task] = []  # planned, not started: dropped as they are on an error
        for name, arr in self.arrays.items():
            tasks += self._tasks(arr, los, shape, outs[name], whole, edges, grid)
        by_loader: dict[int, tuple[Any, list[Task]]] = {}
        for task in tasks:
            by_loader.setdefault(id(task.loader), (task.loader, []))[1].append(task)
        started: list[Task] = []
        try:
            for loader, group in by_loader.values():
                started += loader.start_all(group)
        except BaseException:
            abandon(started)
            raise
        return SampleRead(tasks, outs)

    @staticmethod
    def _tasks(
        arr: Array,
        los: np.ndarray,
        shape: tuple[int, ...],
        out: np.ndarray | Sequence[np.ndarray],
        whole: np.ndarray,
        edges: np.ndarray,
        grid: np.ndarray,
    ) -> list[Task]:
        """One array's reads of the samples (not started): the whole ones as one group
        (C decoder) or box by box, each edge one padded on its own."""
        lead = arr.ndim - len(shape)
        zeros = np.zeros((len(los), lead), dtype=np.int64)
        full = np.concatenate([zeros, los], axis=1)
        box = np.asarray(out[0].shape, dtype=np.int64)
        loader = arr.loader
        tasks: list[Task] = []
        # a group where the C decoder applies and the boxes are small enough to gain
        # from it (stream.GROUP_BYTES: big boxes decode straight into their output)
        if len(whole) > 1 and scatterable(arr) and GROUP_BYTES // max(1, out[0].nbytes) > 1:
            if len(whole) == len(los) and isinstance(out, np.ndarray):
                tasks.append(ScatterTask(arr, loader, out, full))
            else:
                boxes = [out[r] for r in whole.tolist()]
                tasks.append(ScatterTask(arr, loader, None, full[whole], boxes=boxes))
        else:
            for r in whole.tolist():
                lo = tuple(full[r].tolist())
                hi = tuple((full[r] + box).tolist())
                tasks.append(BoxRead(arr, loader, out[r], lo, hi))
        for r in edges.tolist():
            stop = np.minimum(los[r] + np.asarray(shape), grid) - los[r]
            row = out[r]
            row[...] = arr.fill_value
            corner = row[(Ellipsis, *(slice(0, int(s)) for s in stop))]
            hi = np.concatenate([np.asarray(arr.shape[:lead], np.int64), los[r] + stop])
            tasks.append(BoxRead(arr, loader, corner, tuple(full[r].tolist()), tuple(hi.tolist())))
        return tasks

    def samples(
        self,
        corners: Callable[[int, int], np.ndarray],
        count: int,
        shape: Sequence[int],
        *,
        prefetch: int = 8,
        reuse: bool = False,
        pad: bool = False,
        group: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield samples ``0 .. count-1`` in order, ``corners(a, b)`` giving the corners
        of samples ``a:b``: dicts of each array's crop by name, ``index`` and ``lo``.

        About ``prefetch`` samples are in flight (at least two groups of ``group``
        samples, default :meth:`group`).  ``reuse=True`` recycles the output buffers: a
        yielded sample's arrays are valid until the next sample is asked for (copy what
        must be kept); otherwise each group gets fresh buffers."""
        shape = tuple(int(s) for s in shape)
        if int(prefetch) < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        shapes = self.sample_shapes(shape)
        g = self.group(shape, prefetch) if group is None else int(group)
        if g < 1:
            raise ValueError(f"group must be at least 1, not {group}")
        depth = max(2, -(-int(prefetch) // g))  # groups in flight
        window: collections.deque[tuple[int, np.ndarray, SampleRead]] = collections.deque()
        free: list[dict[str, np.ndarray]] = []
        firsts = iter(range(0, int(count), g))

        def push() -> None:
            a = next(firsts, None)
            if a is None:
                return
            los = np.asarray(corners(a, min(int(count), a + g)), dtype=np.int64)
            if reuse and free:
                outs = {n: buf[: len(los)] for n, buf in free.pop().items()}
            else:
                outs = {
                    n: np.empty((len(los), *shapes[n]), dtype=arr.dtype)
                    for n, arr in self.arrays.items()
                }
            window.append((a, los, self.start(los, shape, outs, pad=pad)))

        try:
            for _ in range(depth):
                push()
            while window:
                a, los, read = window[0]
                read.wait()
                for r in range(len(los)):
                    sample: dict[str, Any] = {n: out[r] for n, out in read.outs.items()}
                    sample["index"] = a + r
                    sample["lo"] = los[r]
                    yield sample
                window.popleft()
                if reuse and len(los) == g:
                    free.append(dict(read.outs))
                push()
        finally:
            abandon(itertools.chain.from_iterable(read.tasks for _, _, read in window))

    def random_crops(
        self,
        shape: Iterable[int],
        count: int,
        *,
        seed: int | None = None,
        prefetch: int = 8,
        reuse: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Yield ``count`` samples at uniformly random places of the grid (``seed`` makes
        them reproducible: the corners of ``Array.random_crops`` on an array of the
        grid's shape), in order (``prefetch``, ``reuse`` as for :meth:`samples`)."""
        crop = tuple(int(c) for c in shape)
        starts = self.random_starts(crop, count, seed)
        return self.samples(
            lambda a, b: starts[a:b], len(starts), crop, prefetch=prefetch, reuse=reuse
        )

    def windows(
        self,
        shape: Iterable[int],
        *,
        stride: Iterable[int] | None = None,
        partial: str = "pad",
        prefetch: int = 8,
        reuse: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """A full scan: samples at the window corners of the grid (multiples of
        ``stride``, default the window) in C order.  ``partial`` for the windows at the
        grid's far end: ``"pad"`` (default) reads them padded with each array's fill
        value, ``"drop"`` leaves them out, ``"error"`` refuses
        (:func:`~lsio_ray.zarr.stream.window_starts`)."""
        win = tuple(int(w) for w in shape)
        step = None if stride is None else tuple(int(s) for s in stride)
        axes = self.window_axes(win, step, partial)
        dims = [len(x) for x in axes]

        def corners(a: int, b: int) -> np.ndarray:
            idx = np.unravel_index(np.arange(a, b, dtype=np.int64), dims)
            return np.stack([ax[i] for ax, i in zip(axes, idx, strict=True)], axis=1)

        count = int(np.prod(dims, dtype=np.int64))
        return self.samples(
            corners, count, win, prefetch=prefetch, reuse=reuse, pad=partial == "pad"
        )
