"""Aligned samples of several Zarr arrays as Ray Data rows: an image with its label, or
several variables of one dataset, cropped (or scanned in windows) at the same places.

>>> ds = lsio_ray.data.read_zarr_crops("ds.zarr", (8, 64, 64), 10_000, arrays=["image", "label"])
>>> ds = lsio_ray.data.read_zarr_crops({"image": "img.zarr", "label": "lbl.zarr"}, (8, 64, 64), 100)
>>> for batch in ds.iter_batches(batch_size=32):        # {"image", "label", "index", "lo"}
...     step(batch["image"], batch["label"])

Which arrays (:func:`datasets`): ``arrays=[names]`` with ``paths`` a group (or a list
of groups: several datasets of the same variables, each sample drawn from one, as with a
list of paths), the names of its arrays (``"sub/mask"`` reaches into nested groups; a
dict ``{column: member}`` renames); or ``paths`` a dict ``{column: array path}`` (or a
list of such dicts).  Each row has one column per array, named as given, holding its
sample, beside ``index`` and ``lo`` (the sample's corner on the sampled axes; with
``include_paths``, ``path``: the group's path, or for a dict its first array's).

The rule of :mod:`lsio_ray.zarr.aligned`: a crop of ``k`` dimensions covers the last
``k`` axes of every array, which must have the same lengths in every array (else
``ValueError`` naming both arrays and their shapes); the axes before them are read
whole, so an image ``(C, Z, Y, X)`` and a label ``(Z, Y, X)`` give columns of ``(C, 8,
64, 64)`` and ``(8, 64, 64)`` samples.  dtypes may differ per array; each column's
sample shape and dtype must be the same in every dataset.

The crops are planned in the driver from the seed alone -- with one dataset the corners
of ``Array.random_crops`` on an array of the grid's shape (:func:`~lsio_ray.data_plan.
crop_plan`: several datasets are drawn as several paths are) -- and split into read
tasks by index ranges.  A read task reads a group of samples at a time, every array's
reads handed to the IO service together
(:meth:`lsio_ray.zarr.AlignedArrays.start`), straight into the rows of its blocks (about
``block_bytes`` of all columns together).  ``per_cell`` (the clustered sampler) and
``decode_block`` (that many samples read as one group: each chunk under them decoded
once) work as for one array; ``partial`` of ``read_zarr_windows`` pads each array with
its own fill value.  Memory per read task: about ``prefetch`` samples in flight, at least
two groups (``2 * decode_block`` or ``2 * per_cell`` samples), each in its block's rows.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

import lsio_ray.zarr as lz
from lsio_ray.data_plan import (
    BlockPool,
    Grid,
    Slicer,
    array_paths,
    arrays_in,
    crop_plan,
    node_of_all,
    restrict,
    task_ranges,
)
from lsio_ray.io import stores, url

__all__ = ["AlignedDatasource", "aligned_crops", "aligned_windows", "datasets", "is_aligned"]


def is_aligned(paths: Any, arrays: Any) -> bool:
    """Whether a reader's ``paths`` and ``arrays`` ask for aligned samples."""
    if arrays is not None or isinstance(paths, Mapping):
        return True
    return isinstance(paths, Sequence) and any(isinstance(p, Mapping) for p in paths)


def _location(loc: Any) -> Any:
    """A path from a path, an array (or ``lsio_ray.open``'s wrapper of one) or a group."""
    loc = getattr(loc, "array", loc) if not isinstance(loc, str) else loc
    return loc.path if isinstance(loc, lz.Array | lz.Group) else loc


def datasets(
    paths: Any,
    arrays: Sequence[str] | Mapping[str, str] | None,
    filesystem: Any,
    func: str,
    storage_options: Mapping[str, Any] | None = None,
) -> list[lz.AlignedArrays]:
    """The datasets a reader's ``paths`` and ``arrays`` name, opened in the driver
    (each dataset's arrays by name; every dataset names the same ones)."""
    one = isinstance(paths, str | os.PathLike | Mapping | lz.Array | lz.Group)
    given = [paths] if one else list(paths)
    if not given:
        raise ValueError(f"{func}() got an empty list of paths")
    out = []
    if arrays is not None:
        if isinstance(arrays, str) or not len(arrays):
            raise ValueError(
                f"{func}(arrays=) takes a list of array names (or a dict column -> name), "
                f"not {arrays!r}"
            )
        if any(isinstance(p, Mapping) for p in given):
            raise ValueError(f"{func}(): give a group with arrays=[names], or a dict, not both")
        for group in array_paths([_location(p) for p in given], filesystem, func, storage_options):
            out.append(lz.aligned(group, arrays))
    else:
        if not all(isinstance(p, Mapping) for p in given):
            raise ValueError(f"{func}(): a list of dicts of arrays, or of paths, not both")
        for d in given:
            names = list(d)
            locs = array_paths([_location(d[n]) for n in names], filesystem, func, storage_options)
            out.append(lz.aligned(dict(zip(names, locs, strict=True))))
    first = out[0]
    for ds in out[1:]:
        if ds.names != first.names:
            raise ValueError(
                f"{func}(): every dataset names the same arrays: {first.names} and {ds.names}"
            )
    return out


def _path(ds: lz.AlignedArrays) -> str:
    """The path a row of dataset ``ds`` reports: its group's, or its first array's."""
    return ds.root if ds.root is not None else next(iter(ds.arrays.values())).path


class _GridOf:
    """A dataset seen by :func:`~lsio_ray.data_plan.crop_plan` as one array of the
    grid's shape."""

    def __init__(self, ds: lz.AlignedArrays, crop: tuple[int, ...]) -> None:
        self.ds, self.shape = ds, ds.grid(len(crop))
        self.path = ", ".join(f"{n} ({a.path})" for n, a in ds.arrays.items())

    def clustered_starts(self, crop: Any, count: int, **kw: Any) -> np.ndarray:
        return self.ds.clustered_starts(crop, count, **kw)


def _check_columns(sets: list[lz.AlignedArrays], crop: tuple[int, ...], func: str) -> None:
    """Each column one sample shape and dtype in every dataset."""
    first = sets[0].sample_shapes(crop)
    for ds in sets[1:]:
        shapes = ds.sample_shapes(crop)
        for n in first:
            a, b = sets[0][n], ds[n]
            if shapes[n] != first[n] or a.dtype != b.dtype:
                raise ValueError(
                    f"{func}(): column {n!r} must have one sample shape and dtype: {a.path} "
                    f"gives {first[n]} {a.dtype}, {b.path} gives {shapes[n]} {b.dtype}"
                )


class AlignedDatasource(Datasource):
    """Aligned samples (one column per array) of one or more datasets as a Ray Data
    datasource: ``starts(a, b)`` gives the corners of samples ``a:b`` on the grid axes,
    ``sources(a, b)`` their dataset (None: all from the first).  ``group``: samples read
    as one group (0: :meth:`lsio_ray.zarr.AlignedArrays.group`); ``pad``: samples may
    run past the grid's end (windows), padded with each array's fill value."""

    def __init__(
        self,
        sets: list[lz.AlignedArrays],
        crop_shape: Sequence[int],
        count: int,
        starts: Callable[[int, int], np.ndarray],
        *,
        sources: Callable[[int, int], np.ndarray] | None = None,
        prefetch: int = 16,
        block_bytes: int,
        node: str | None = None,
        name: str = "ZarrAlignedCrops",
        group: int = 0,
        direct: bool | None = None,
        include_paths: bool = False,
        pad: bool = False,
    ) -> None:
        super().__init__()
        self.crop_shape = tuple(int(c) for c in crop_shape)
        first = sets[0]
        self.names = first.names
        self.paths = [{n: a.path for n, a in ds.arrays.items()} for ds in sets]
        # the driver's store options of the URLs among them, shipped to the read tasks
        remote = [p for d in self.paths for p in d.values() if url.is_remote(p)]
        self.store_options = (stores.exported(remote) or None) if remote else None
        self.roots = [_path(ds) for ds in sets]
        self.shapes = first.sample_shapes(self.crop_shape)
        self.dtypes = {n: a.dtype for n, a in first.arrays.items()}
        self.count, self.starts, self.sources = int(count), starts, sources
        self.prefetch = int(prefetch)
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        self.group = int(group)
        if self.group < 0:
            raise ValueError(f"decode_block and per_cell must not be negative, not {group}")
        self.block_bytes = int(block_bytes)
        self.node, self._name = node, name
        self.direct, self.include_paths, self.pad = direct, bool(include_paths), bool(pad)
        self.span: tuple[int, int] | None = None  # one shard's rows (data_shards)

    @property
    def crop_nbytes(self) -> int:
        """Bytes of one row's samples, all columns."""
        return sum(math.prod(self.shapes[n]) * self.dtypes[n].itemsize for n in self.names)

    @property
    def rows_per_block(self) -> int:
        """Rows per output block (about ``block_bytes``; whole groups when ``group``)."""
        rows = max(1, self.block_bytes // max(1, self.crop_nbytes))
        if self.group:
            rows = max(1, rows // self.group) * self.group
        return rows

    def get_name(self) -> str:
        """The name Ray shows for the read stage."""
        return self._name

    def estimate_inmemory_data_size(self) -> int | None:
        """Decoded bytes of all the samples (of the shard's, :attr:`span`)."""
        a, b = self.span or (0, self.count)
        return (b - a) * self.crop_nbytes

    @property
    def task_unit(self) -> int:
        """Rows a read task (and a shard) takes whole: a group's when ``group``."""
        return self.group

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, **_kw: Any
    ) -> list[ReadTask]:
        """One read task per contiguous index range (whole groups when ``group``)."""
        tasks = []
        for a, b in task_ranges(self.span or (0, self.count), parallelism, self.group):
            ids = arrays_in(self.sources, a, b)
            meta = BlockMetadata(
                num_rows=b - a,
                size_bytes=(b - a) * self.crop_nbytes,
                input_files=[p for k in ids for p in self.paths[k].values()],
                exec_stats=None,
            )
            srcs = None if self.sources is None else restrict(self.sources, a, b)
            body = _ReadRange(self, a, b, restrict(self.starts, a, b), srcs, ids)
            tasks.append(ReadTask(body, meta, per_task_row_limit=per_task_row_limit))
        return tasks


class _ReadRange:
    """A read task's body: samples ``a:b`` of the plan, in blocks."""

    def __init__(
        self,
        src: AlignedDatasource,
        a: int,
        b: int,
        starts: Callable[[int, int], np.ndarray],
        sources: Callable[[int, int], np.ndarray] | None,
        ids: list[int],
    ) -> None:
        self.paths = {k: src.paths[k] for k in ids}
        self.store_options = src.store_options
        self.roots = {k: src.roots[k] for k in ids}
        self.a, self.b, self.starts, self.sources = a, b, starts, sources
        self.crop, self.shapes, self.dtypes = src.crop_shape, src.shapes, src.dtypes
        self.prefetch, self.group, self.rows = src.prefetch, src.group, src.rows_per_block
        self.direct, self.include_paths, self.pad = src.direct, src.include_paths, src.pad

    def _sources(self, a: int, b: int) -> np.ndarray:
        if self.sources is None:
            return np.zeros(b - a, dtype=np.int64)
        return np.asarray(self.sources(a, b), dtype=np.int64)

    def __call__(self) -> Iterator[Any]:
        stores.apply(self.store_options)  # the driver's storage_options, in this worker
        sets = {
            k: lz.aligned({n: lz.open_array(p, direct=self.direct) for n, p in paths.items()})
            for k, paths in self.paths.items()
        }
        g = self.group or min(ds.group(self.crop, self.prefetch) for ds in sets.values())
        prefetch = max(self.prefetch, 2 * g)  # one group decodes while one is copied
        pool = BlockPool()
        # (first, end, corners, datasets, columns) of the blocks not yet yielded
        blocks: collections.deque[tuple[int, int, np.ndarray, np.ndarray, dict]] = (
            collections.deque()
        )
        window: collections.deque[tuple[Any, int, int]] = collections.deque()
        inflight, done = 0, self.a
        try:
            for first in range(self.a, self.b, self.rows):
                end = min(self.b, first + self.rows)
                lo, src = self.starts(first, end), self._sources(first, end)
                cols = {
                    n: pool.take((end - first, *s), self.dtypes[n]) for n, s in self.shapes.items()
                }
                blocks.append((first, end, lo, src, cols))
                reads = list(self._reads(src, g))
                for j, rows in enumerate(reads):
                    ds = sets[int(src[rows[0]])]
                    if rows[-1] - rows[0] + 1 == len(rows):  # a run of rows: views
                        outs = {n: c[rows[0] : rows[-1] + 1] for n, c in cols.items()}
                    else:
                        outs = {n: [c[r] for r in rows.tolist()] for n, c in cols.items()}
                    read = ds.start(lo[rows], self.crop, outs, pad=self.pad)
                    window.append((read, len(rows), end if j == len(reads) - 1 else first))
                    inflight += len(rows)
                    while inflight >= prefetch:
                        read, n, done = window.popleft()
                        read.wait()
                        inflight -= n
                        yield from self._ready(blocks, done)
            while window:
                read, _, done = window.popleft()
                read.wait()
                yield from self._ready(blocks, done)
        finally:
            lz.Array.abandon(t for read, _, _ in window for t in read.tasks)

    @staticmethod
    def _reads(src: np.ndarray, g: int) -> Iterator[np.ndarray]:
        """The rows of a block read together: each dataset's rows, ``g`` at a time."""
        for k in np.unique(src).tolist():
            rows = np.flatnonzero(src == k)
            for i in range(0, len(rows), g):
                yield rows[i : i + g]

    def _ready(self, blocks: collections.deque, done: int) -> Iterator[Any]:
        while blocks and blocks[0][1] <= done:
            first, end, lo, src, cols = blocks.popleft()
            out = dict(cols)
            out["index"] = np.arange(first, end, dtype=np.int64)
            out["lo"] = lo
            if self.include_paths:
                out["path"] = np.array([self.roots[int(k)] for k in src], dtype=object)
            yield BlockAccessor.batch_to_block(out)


def aligned_crops(
    params: Mapping[str, Any], num_blocks: int | None, read: Callable[..., ray.data.Dataset]
) -> ray.data.Dataset:
    """``read_zarr_crops`` with aligned arrays (``params``: its arguments); ``read``
    makes the dataset of the datasource (``lsio_ray.data``'s, as for one array)."""
    func = "read_zarr_crops"
    sets = datasets(
        params["paths"], params["arrays"], params["filesystem"], func, params["storage_options"]
    )
    crop = tuple(int(c) for c in params["crop_shape"])
    _check_columns(sets, crop, func)
    per_cell, block = max(0, int(params["per_cell"])), int(params["decode_block"])
    if per_cell and block:
        raise ValueError("decode_block and per_cell are two samplers: give one of them")
    views = [_GridOf(ds, crop) for ds in sets]
    count = int(params["count"])
    plan, which = crop_plan(views, crop, count, params["seed"], per_cell, params["cell"])
    src = AlignedDatasource(
        sets,
        crop,
        count,
        Slicer(plan),
        sources=None if which is None else Slicer(which),
        prefetch=params["prefetch"],
        block_bytes=params["block_bytes"],
        node=node_of_all(
            [p for s in sets for p in (a.path for a in s.arrays.values())], params["coordinator"]
        ),
        name="ZarrAlignedCrops",
        group=per_cell or block,
        direct=params["direct"],
        include_paths=params["include_paths"],
    )
    return read(src, num_blocks, params)


def aligned_windows(
    params: Mapping[str, Any], num_blocks: int | None, read: Callable[..., ray.data.Dataset]
) -> ray.data.Dataset:
    """``read_zarr_windows`` with aligned arrays (``params``: its arguments); ``read``
    makes the dataset of the datasource (``lsio_ray.data``'s, as for one array)."""
    func = "read_zarr_windows"
    sets = datasets(
        params["paths"], params["arrays"], params["filesystem"], func, params["storage_options"]
    )
    win = tuple(int(w) for w in params["window_shape"])
    _check_columns(sets, win, func)
    stride = params["stride"]
    step = None if stride is None else tuple(int(s) for s in stride)
    grids = []
    for ds in sets:
        try:
            grids.append(ds.window_axes(win, step, params["partial"]))
        except ValueError as exc:
            raise ValueError(f"{_GridOf(ds, win).path}: {exc}") from None
    grid = Grid(grids)
    src = AlignedDatasource(
        sets,
        win,
        grid.count,
        grid,
        sources=grid.sources() if len(sets) > 1 else None,
        prefetch=params["prefetch"],
        block_bytes=params["block_bytes"],
        node=node_of_all(
            [p for s in sets for p in (a.path for a in s.arrays.values())], params["coordinator"]
        ),
        name="ZarrAlignedWindows",
        direct=params["direct"],
        include_paths=params["include_paths"],
        pad=params["partial"] == "pad",
    )
    return read(src, num_blocks, params)
