"""The user-facing array: metadata, numpy-style reads, crops, time series, writes."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from lsio_ray.io import F_DIRECT, config
from lsio_ray.io.stores import configure_url
from lsio_ray.zarr import indexing, sampler, stream
from lsio_ray.zarr.direct import choose_direct, supports_direct
from lsio_ray.zarr.html import array_html
from lsio_ray.zarr.info import array_info
from lsio_ray.zarr.layout import ArrayLayout, load_layout
from lsio_ray.zarr.loader import Loader, Task, abandon, default_loader
from lsio_ray.zarr.plan import Region, normalize
from lsio_ray.zarr.prefetch import Prefetched
from lsio_ray.zarr.quick import read_on_caller
from lsio_ray.zarr.read import BoxRead
from lsio_ray.zarr.scatter import ScatterTask, scatterable
from lsio_ray.zarr.shards import ShardIndexCache
from lsio_ray.zarr.write import write_region

__all__ = ["Array", "open_array"]


def _env_coalesce_gap() -> int:
    """The ``coalesce_gap`` setting (``LSIO_ZARR_COALESCE_GAP``: bytes, -1: never merge;
    0 by default), checked."""
    return int(config.get("coalesce_gap"))


class Array:
    """A Zarr array (v2 or v3, sharded or not) read and written through lsio_ray.

    Indexing (``a[0:8, 100:356, 5:261]``, integers, steps, ``...``, ``None``) returns a
    new ``numpy.ndarray``.  Slices reaching past the array raise ``IndexError``.  Index
    arrays and masks as in zarr-python: ``a.oindex[...]`` (orthogonal), ``a.vindex[...]``
    (coordinates, masks), and ``a[key]`` for the keys zarr-python reads
    (:func:`~lsio_ray.zarr.indexing.getitem`); ``np.asarray(a)`` reads it all.
    """

    def __init__(
        self,
        layout: ArrayLayout,
        loader: Loader | None = None,
        *,
        index_cache_bytes: int | None = None,
        coalesce_gap: int | None = None,
        max_coalesce: int = 4 << 20,
        direct: bool | None = None,
        write_empty_chunks: bool = False,
    ) -> None:
        self.layout = layout
        self.write_empty_chunks = bool(write_empty_chunks)
        """Whether writes store chunks all fill value (zarr-python's array config of
        that name; default False: they are not stored, :mod:`lsio_ray.zarr.encode`)."""
        setting = config.get("direct") if direct is None else bool(direct)
        if setting == "auto":
            self.direct, self.direct_reason = choose_direct(layout)
        else:
            self.direct = bool(setting) and supports_direct(layout.path)
            self.direct_reason = "asked for" if setting else "not asked for"
            if setting and not self.direct:
                self.direct_reason = "asked for, but the file system refuses O_DIRECT"
        """Whether chunks and shards are read with O_DIRECT: ``direct=True`` / ``False``,
        else the ``direct`` setting, whose default ``"auto"`` applies the rule of
        :mod:`lsio_ray.zarr.direct` (large arrays on a local disk's file system);
        ``direct_reason`` says why."""
        self._loader = loader
        self._own_loader = False
        self.index_cache = ShardIndexCache(index_cache_bytes)
        if coalesce_gap is None:
            coalesce_gap = _env_coalesce_gap()
        self.coalesce_gap = coalesce_gap if coalesce_gap >= 0 else -(1 << 62)
        self.max_coalesce = max_coalesce
        self._prefetched: Prefetched | None = None
        self._call_skip = 0  # calls left to send to the IO service (zarr.quick)

    # -- metadata ------------------------------------------------------------------------
    @property
    def _read_flags(self) -> int:
        """The engine's file flags for this array's reads."""
        return F_DIRECT if self.direct else 0

    @property
    def loader(self) -> Loader:
        """The loader (engine, IO thread, decode pool) this array reads through."""
        if self._loader is None or self._loader.closed:
            self._loader = default_loader(self.direct)
        return self._loader

    @property
    def path(self) -> str:
        """The array's directory."""
        return self.layout.path

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return self.layout.shape

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return self.layout.ndim

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the arrays reads return."""
        return self.layout.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        """The chunk shape (the inner chunk of a sharded array)."""
        return self.layout.chunks

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shard shape, or None for an unsharded array."""
        return self.layout.shards

    @property
    def attrs(self) -> dict[str, Any]:
        """The array's user attributes."""
        return self.layout.attrs

    @property
    def fill_value(self) -> Any:
        """The value of elements never written."""
        return self.layout.fill_value[()]

    @property
    def zarr_format(self) -> int:
        """2 or 3."""
        return self.layout.zarr_format

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Decoded size in bytes."""
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return indexing.to_numpy(self, dtype, copy)

    def _repr_html_(self) -> str:
        return array_html(self)

    def __repr__(self) -> str:
        shards = f", shards={self.shards}" if self.shards else ""
        return (
            f"<lsio_ray.zarr.Array {self.path!r} v{self.zarr_format} shape={self.shape} "
            f"dtype={self.dtype} chunks={self.chunks}{shards}>"
        )

    # -- reading -------------------------------------------------------------------------
    def start_read(self, lo: Any, hi: Any, out: np.ndarray | None = None) -> BoxRead:
        """Start reading the box ``[lo, hi)``; returns the task (``task.wait()``, then
        ``task.out`` holds the box).  ``out`` must have the box's shape and dtype."""
        lo = tuple(int(x) for x in lo)
        hi = tuple(int(x) for x in hi)
        self._check_box(lo, hi)
        shape = tuple(h - lo_ for lo_, h in zip(lo, hi, strict=True))
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif out.shape != shape or out.dtype != self.dtype:
            raise ValueError(
                f"out has shape {out.shape} and dtype {out.dtype}, "
                f"expected {shape} and {self.dtype}"
            )
        loader = self.loader
        task = BoxRead(self, loader, out, lo, hi)
        return loader.start(task)  # type: ignore[return-value]

    def _check_box(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> None:
        if len(lo) != self.ndim or len(hi) != self.ndim:
            raise ValueError(f"a box of {len(lo)} dimensions for a {self.ndim}-d array")
        for axis, (a, b, n) in enumerate(zip(lo, hi, self.shape, strict=True)):
            if not 0 <= a <= b <= n:
                raise IndexError(f"box {a}:{b} is out of bounds for axis {axis} with size {n}")

    @property
    def decodes_in_c(self) -> bool:
        """Whether the C decoder handles this array (raw, zstd or blosc chunks, 1 to 8
        dimensions): then :meth:`start_boxes` reads it."""
        return scatterable(self)

    def start_boxes(
        self,
        starts: Any,
        out: np.ndarray | None = None,
        *,
        boxes: Sequence[np.ndarray] | None = None,
    ) -> BoxRead:
        """Start reading equal-shaped boxes as one task: each chunk under several of them
        is read and decoded once.  The box with corner ``starts[i]`` (``starts``: ``(n,
        ndim)``) goes to ``out[i]`` (``out``: ``(n, *box)``), or, given ``boxes``
        instead, into ``boxes[i]`` (n arrays of the box's shape, sharing one dtype and
        strides).  Returns the task: ``task.wait()``, then ``task.boxes`` lists them.
        Only for arrays the C decoder handles (:attr:`decodes_in_c`)."""
        if out is not None and boxes is None:
            n, box = len(out), out.shape[1:]
        elif boxes is not None and out is None:
            n, box = len(boxes), (boxes[0].shape if len(boxes) else ())
        else:
            raise ValueError("give either out or boxes")
        los = np.asarray(starts, dtype=np.int64).reshape(n, self.ndim)
        if n:
            if len(box) != self.ndim:
                raise ValueError(f"a box of {len(box)} dimensions for a {self.ndim}-d array")
            size = np.asarray(box, dtype=np.int64)
            bad = np.flatnonzero(((los < 0) | (los + size > np.asarray(self.shape))).any(axis=1))
            if bad.size:  # the first one named, as start_read would
                lo = los[bad[0]]
                self._check_box(tuple(lo.tolist()), tuple((lo + size).tolist()))
        loader = self.loader
        task = ScatterTask(self, loader, out, los, boxes=boxes)
        return loader.start(task)  # type: ignore[return-value]

    def box_group(self, shape: Iterable[int], prefetch: int) -> int:
        """Boxes of ``shape`` to read per :meth:`start_boxes` task with about
        ``prefetch`` boxes in flight (:func:`~lsio_ray.zarr.stream.group_for`); 1 where
        they are better read one by one with :meth:`start_read` (big boxes, and codecs
        the C decoder does not handle)."""
        return stream.group_for(self, tuple(int(s) for s in shape), prefetch)

    @staticmethod
    def abandon(tasks: Iterable[Task]) -> None:
        """Cancel reads (from :meth:`start_read` or :meth:`start_boxes`) still in flight
        and wait until their decoding stopped: after this nothing writes into their
        outputs, which may be reused.  For a stream of reads that ends early."""
        abandon(tasks)

    def _start_region(self, region: Region) -> BoxRead:
        return self.start_read(region.lo, region.hi)

    @staticmethod
    def _finish_region(region: Region, box: np.ndarray) -> np.ndarray:
        if region.post is None and not region.drop:
            return box
        post = region.post or (slice(None),) * box.ndim
        idx = tuple(0 if ax in region.drop else post[ax] for ax in range(box.ndim))
        out = box[(*idx, Ellipsis)]
        return np.ascontiguousarray(out) if region.post is not None else out

    def __getitem__(self, key: Any) -> np.ndarray:
        return indexing.getitem(self, key)

    @property
    def oindex(self) -> indexing.OIndex:
        """Orthogonal selections: ``a.oindex[[0, 5], :, mask]`` (zarr-python's)."""
        return indexing.OIndex(self)

    @property
    def vindex(self) -> indexing.VIndex:
        """Coordinate and mask selections: ``a.vindex[[0, 5], [1, 2], [3, 3]]``,
        ``a.vindex[mask]`` (zarr-python's)."""
        return indexing.VIndex(self)

    def get_orthogonal_selection(self, selection: Any) -> np.ndarray:
        """``a.oindex[selection]`` (:func:`~lsio_ray.zarr.indexing.orthogonal`)."""
        return indexing.orthogonal(self, selection)

    def get_coordinate_selection(self, selection: Any) -> np.ndarray:
        """``a.vindex[selection]`` for integer arrays
        (:func:`~lsio_ray.zarr.indexing.coordinate`)."""
        return indexing.coordinate(self, selection)

    def get_mask_selection(self, mask: Any) -> np.ndarray:
        """``a.vindex[mask]`` (:func:`~lsio_ray.zarr.indexing.mask`)."""
        return indexing.mask(self, mask)

    def read(self, region: Any = ..., out: np.ndarray | None = None) -> np.ndarray:
        """Read a region (any numpy-style key) and return it, or fill ``out`` with it.

        ``out`` must have the result's shape and the array's dtype; it is returned."""
        reg = normalize(region, self.shape)
        if out is None:
            pre = self._prefetched
            task = pre.take(reg) if pre else None
            if task is None:
                box = np.empty(reg.box_shape, dtype=self.dtype)
                if read_on_caller(self, box, reg.lo, reg.hi):  # small, cached: no hand-over
                    return self._finish_region(reg, box)
                task = self.start_read(reg.lo, reg.hi, box)
            task.wait()
            return self._finish_region(reg, task.out)
        if out.shape != reg.shape or out.dtype != self.dtype:
            raise ValueError(
                f"out has shape {out.shape} and dtype {out.dtype}, "
                f"expected {reg.shape} and {self.dtype}"
            )
        if reg.post is None:
            box = np.expand_dims(out, reg.drop) if reg.drop else out
            if not read_on_caller(self, box, reg.lo, reg.hi):
                self.start_read(reg.lo, reg.hi, box).wait()
            return out
        task = self._start_region(reg)
        task.wait()
        out[...] = self._finish_region(reg, task.out)
        return out

    def prefetch(self, regions: Iterable[Any], *, max_bytes: int | None = None) -> None:
        """Start reading ``regions`` (numpy-style keys, as for ``a[key]``) now, for the
        calls that will ask for them: a later ``a[region]`` or :meth:`read` of exactly
        one of them takes the read under way (:mod:`~lsio_ray.zarr.prefetch`).  For a
        loop of one read per call whose next regions are known (a PyTorch ``Dataset``
        given its sampler's order): the next calls' IO and decoding overlap the
        caller's work on this one.  Bounded: reads not taken are dropped, oldest first,
        past ``max_bytes`` of outputs (default
        :data:`~lsio_ray.zarr.stream.WINDOW_BYTES`) or 64 reads;
        :meth:`cancel_prefetch` drops them all."""
        regs = [normalize(r, self.shape) for r in regions]
        if self._prefetched is None:
            self._prefetched = Prefetched()
        if max_bytes is not None:
            self._prefetched.max_bytes = int(max_bytes)
        self._prefetched.start(self, regs)

    def cancel_prefetch(self) -> None:
        """Cancel the reads :meth:`prefetch` started that no call took yet."""
        if self._prefetched is not None:
            self._prefetched.clear()

    def crops(
        self, regions: Iterable[Any], prefetch: int = 8, *, reuse: bool = False
    ) -> Iterator[np.ndarray]:
        """Yield ``self[region]`` for each region, in order, with ``prefetch`` in flight
        (fewer when they are big: at most
        :data:`~lsio_ray.zarr.stream.WINDOW_BYTES` of outputs, two regions at least).

        ``reuse=True`` recycles a ring of output buffers: each yielded array is
        overwritten once the next one is asked for (copy it to keep it).  A list (or
        other sequence) of plain boxes of one shape is read a group at a time
        (:func:`~lsio_ray.zarr.stream.same_shape_boxes`)."""
        if isinstance(regions, Sequence):
            return self._crops_of(regions, prefetch, reuse)
        regs = (normalize(r, self.shape) for r in regions)
        return stream.ordered(self, regs, prefetch, reuse)

    def _crops_of(self, regions: Sequence[Any], prefetch: int, reuse: bool) -> Iterator[np.ndarray]:
        regs = [normalize(r, self.shape) for r in regions]  # (raises at the first next())
        if regs and all(r.post is None and not r.drop for r in regs):
            shape = regs[0].box_shape
            if all(r.box_shape == shape for r in regs):
                starts = np.array([r.lo for r in regs], dtype=np.int64).reshape(-1, self.ndim)
                yield from stream.same_shape_boxes(self, starts, shape, prefetch, reuse)
                return
        yield from stream.ordered(self, iter(regs), prefetch, reuse)

    def random_crops(
        self,
        shape: Iterable[int],
        count: int,
        *,
        seed: int | None = None,
        prefetch: int = 8,
        reuse: bool = False,
    ) -> Iterator[np.ndarray]:
        """Yield ``count`` crops of ``shape`` at uniformly random offsets (``seed`` makes
        them reproducible), in order, with ``prefetch`` in flight (``reuse`` as for
        :meth:`crops`).  Crops of several arrays at the same places (an image and its
        label): :func:`lsio_ray.zarr.aligned`."""
        crop = tuple(int(c) for c in shape)
        starts = stream.random_box_starts(self.shape, crop, count, seed)
        return stream.same_shape_boxes(self, starts, crop, prefetch, reuse)

    def clustered_crops(
        self,
        shape: Iterable[int],
        count: int,
        *,
        seed: int | None = None,
        per_cell: int = 16,
        cell: Iterable[int] | None = None,
        prefetch: int = 32,
        reuse: bool = False,
    ) -> Iterator[np.ndarray]:
        """Random crops drawn ``per_cell`` at a time from one cell of start corners
        (:func:`~lsio_ray.zarr.stream.clustered_box_starts`), the crops of a cell read as
        one group, so each chunk of the cell's region is decoded once for all of them.

        Every crop's position is still exactly uniform over the array; the trade-off is
        that the ``per_cell`` crops of a cell lie close together (within ``cell + shape -
        1``), so a minibatch of ``B`` crops holds about ``B / per_cell`` independent
        places.  ``cell``: per axis, default the larger of the chunk and the crop (for
        (8, 256, 256) crops of (1, 256, 256) chunks a cell's region is (15, 511, 511):
        at most 60 chunk decodes for 16 crops, against ~36 for each crop drawn alone).
        Memory: a cell's crops are read as one group, and at least two groups are in
        flight (``max(prefetch, 2 * per_cell)`` crops).  ``seed``, ``prefetch`` and
        ``reuse`` as for :meth:`random_crops`."""
        crop = tuple(int(c) for c in shape)
        starts = self.clustered_starts(crop, count, seed=seed, per_cell=per_cell, cell=cell)
        return stream.same_shape_boxes(self, starts, crop, prefetch, reuse, group=per_cell)

    def clustered_starts(
        self,
        shape: Iterable[int],
        count: int,
        *,
        seed: int | None = None,
        per_cell: int = 16,
        cell: Iterable[int] | None = None,
    ) -> np.ndarray:
        """The ``(count, ndim)`` corners :meth:`clustered_crops` reads, in order, for the
        same arguments.  ``cell`` default: per axis the larger of the chunk and the crop,
        so a cell's region (cell + crop - 1) spans at most two chunks per axis where crops
        are smaller than chunks."""
        crop = tuple(int(c) for c in shape)
        if cell is None:
            cell = tuple(max(c, int(k)) for c, k in zip(crop, self.chunks, strict=False))
        return stream.clustered_box_starts(self.shape, crop, count, seed, per_cell, cell)

    def decode_aware_crops(
        self,
        shape: Iterable[int],
        count: int,
        *,
        seed: int | None = None,
        block: int = 512,
        prefetch: int = 16,
        ahead: int = 1,
        reuse: bool = False,
    ) -> Iterator[np.ndarray]:
        """The crops of :meth:`random_crops` (same seed, same offsets: i.i.d. uniform),
        decoding each chunk once per block of ``block`` crops and yielding each block in a
        seeded random order -- past the decoder's limit by decoding less.  Memory:
        ``1 + ahead`` blocks of crops (``ahead`` blocks are decoded while one is
        consumed); ``reuse=True`` yields views valid until the next crop is asked for
        instead of copies.  See :mod:`lsio_ray.zarr.sampler` for the trade-off."""
        return sampler.decode_aware_crops(
            self,
            shape,
            count,
            seed=seed,
            block=block,
            prefetch=prefetch,
            ahead=ahead,
            reuse=reuse,
        )

    def time_series(
        self,
        region: Any = ...,
        *,
        axis: int = 0,
        rows: int = 1,
        prefetch: int = 8,
        reuse: bool = False,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` along ``axis`` in order: each block is ``rows`` rows of
        chunks of the region (cut at chunk boundaries); decoding runs ahead, out of
        order, ``prefetch`` blocks deep but at most
        :data:`~lsio_ray.zarr.stream.WINDOW_BYTES` of them (``reuse`` as for
        :meth:`crops`)."""
        reg = normalize(region, self.shape)
        if reg.post is not None or reg.drop:
            raise ValueError("time_series takes a region of plain slices (no steps, no ints)")
        return stream.time_series(self, reg, axis, rows, prefetch, reuse)

    # -- writing -------------------------------------------------------------------------
    def __setitem__(self, key: Any, value: Any) -> None:
        self.write(key, value)

    def write(self, region: Any, value: Any) -> None:
        """Write ``value`` (broadcast to the region) into a region of plain slices or
        integers.  Each chunk (or shard) is replaced atomically."""
        reg = normalize(region, self.shape)
        self.cancel_prefetch()  # a read started before the write would return old data
        if reg.post is not None:
            raise ValueError("cannot write through a slice with a step")
        data = np.asarray(value)
        try:
            data = np.broadcast_to(data, reg.shape)
        except ValueError:
            raise ValueError(
                f"cannot broadcast a value of shape {data.shape} to the region's shape {reg.shape}"
            ) from None
        if reg.drop:
            data = np.expand_dims(data, reg.drop)
        write_region(self, reg.lo, reg.hi, data)

    def close(self) -> None:
        """Close the loader this array made for itself (``open(..., backend=...)``);
        cancel reads prefetched and not taken."""
        self.cancel_prefetch()
        if self._own_loader and self._loader is not None:
            self._loader.close()

    def __enter__(self) -> Array:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: format, shape, dtype, grids, codecs, stored size."""
        return array_info(self)


def open_array(
    path: str | os.PathLike[str],
    *,
    loader: Loader | None = None,
    backend: str | None = None,
    **options: Any,
) -> Array:
    """Open the Zarr array at ``path`` (a directory holding ``zarr.json`` or ``.zarray``).

    ``loader`` shares an engine and decode pool between arrays (default: the
    process-wide one -- for ``direct=True`` arrays the process-wide direct one, whose
    engine registers its buffers: :func:`~lsio_ray.zarr.loader.default_loader`);
    ``backend="uring"`` or ``"pread"`` gives this array a loader of
    its own with that engine backend.  Other options: ``index_cache_bytes``,
    ``coalesce_gap`` (bytes between inner chunks read as one range; -1 never merges),
    ``max_coalesce``, ``direct``, ``write_empty_chunks`` (zarr-python's array config:
    default False, chunks left all fill value by a write are not stored).

    ``direct=True`` reads chunks and shards with ``O_DIRECT``: the device writes
    straight into the engine's buffers, with no page-cache copy and no page cache
    filled (``scripts/bench-zarr.py``, benchmarks/results/zarr-reads.md: up to ~20%
    faster here, most of all cold, and less CPU even against a warm cache); data read
    again is read from the device again.  By default (``direct=None``: the ``direct``
    setting of :mod:`lsio_ray.config`, env ``LSIO_DIRECT``, whose default is ``"auto"``)
    the array decides (:mod:`lsio_ray.zarr.direct`): ``O_DIRECT`` on a local disk's file
    system when the array's stored bytes exceed the page cache's room (MemAvailable, or
    the cgroup's limit), never on tmpfs, network or FUSE file systems or object storage;
    ``Array.direct`` and ``Array.direct_reason`` say what was chosen and why.
    ``direct=False`` / ``True`` (or the setting) override the rule; where the file
    system refuses ``O_DIRECT`` the array reads through the page cache.  ``path`` may
    be an object-storage or HTTP URL (``s3://bucket/x.zarr``, ``https://host/x.zarr``);
    ``storage_options`` are then the store's options
    (:func:`lsio_ray.io.stores.configure`: endpoint, region, credentials...), else they
    come from the environment."""
    storage_options = options.pop("storage_options", None)
    if storage_options is not None:
        configure_url(path, storage_options)
    layout = load_layout(path)
    own = loader is None and backend is not None
    if own:
        loader = Loader(backend=backend)
    arr = Array(layout, loader, **options)
    arr._own_loader = own
    return arr
