"""Ray Data datasources over Zarr arrays (v2 and v3, sharded or not).

>>> import lsio_ray.data
>>> ds = lsio_ray.data.read_zarr_crops("train.zarr", (8, 64, 64), count=100_000, seed=0)
>>> for batch in ds.iter_batches(batch_size=256):      # {"crop", "index", "lo"}
...     step(batch["crop"])
>>> scan = lsio_ray.data.read_zarr_windows("train.zarr", (8, 256, 256))   # a full scan

Every row is one crop: ``crop`` (a numpy array of the crop's shape), ``index`` (its
number in the plan) and ``lo`` (the coordinates of its first element; the crop covers
``lo[d] : lo[d] + crop_shape[d]`` on each axis).

The crops are planned in the driver from the seed alone -- the same boxes, in the same
order, as ``lsio_ray.zarr.open(path).random_crops(crop_shape, count, seed=seed)`` -- and
split into read tasks by index ranges, so the same seed gives the same crops whatever
the number of read tasks or nodes.  Each read task opens the array with
:func:`lsio_ray.zarr.open` and reads its share through the engine with ``prefetch``
crops in flight (across block boundaries), each crop straight into its row of a block,
emitting blocks of about ``block_bytes`` (Ray costs ~1 ms per object: blocks of
megabytes, not one crop each).  The dataset's own ``DataContext`` gets a
``target_max_block_size`` of one block, so Ray Data passes these blocks on as they are
instead of merging them into 128 MiB ones (a copy of every crop, and a later first row).

``decode_block=N`` (crops only) decodes each read task's crops N at a time with the
decode-aware sampler (:meth:`lsio_ray.zarr.Array.start_boxes`): every chunk the N
crops touch is read and decoded once.  The rows are exactly the same -- same crops, same
order, same ``index`` -- so there is no statistical trade-off; the cost is memory (N
crops per read task) and the latency of a group before its first row.

``per_cell=K`` (crops only) draws the crops K at a time from one cell of start corners
(:meth:`lsio_ray.zarr.Array.clustered_crops`): every crop's position is still exactly
uniform over the array, but the K crops of a cell lie close together, and the cell's
chunks are decoded once for all K -- several times the crop rate, at the price of
minibatches holding about ``B / K`` independent places instead of ``B``.  Read tasks
and blocks are cut at cell boundaries, so no cell is split between two reads.

Placement: when a :class:`~lsio_ray.ray.Coordinator` is given and its locality (declared
roots or discovery) says one node holds the array, every read task is pinned to that
node (the files cannot be read anywhere else); otherwise Ray's default scheduling is
used (shared storage).  Ray Data has no per-read-task placement, so an array spread over
several nodes' local disks is not supported by these readers.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

import lsio_ray.zarr as lz
from lsio_ray.io.url import local_path
from lsio_ray.zarr import random_box_starts

if TYPE_CHECKING:
    import ray.data

    from lsio_ray.ray.coordinator import Coordinator

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "ZarrBoxesDatasource",
    "random_box_starts",
    "read_zarr_crops",
    "read_zarr_windows",
    "window_starts",
]

DEFAULT_BLOCK_BYTES = 32 << 20


def window_starts(
    shape: Sequence[int], window_shape: Sequence[int], stride: Sequence[int] | None = None
) -> tuple[np.ndarray, ...]:
    """Per axis, the start offsets of the windows of a full scan (whole windows only)."""
    shape = tuple(int(s) for s in shape)
    win = tuple(int(w) for w in window_shape)
    step = win if stride is None else tuple(int(s) for s in stride)
    if not len(win) == len(step) == len(shape):
        raise ValueError(
            f"window {win} and stride {step} must have the array's {len(shape)} dimensions"
        )
    if any(w <= 0 or w > s for w, s in zip(win, shape, strict=True)):
        raise ValueError(f"window shape {win} does not fit in the array's shape {shape}")
    if any(s <= 0 for s in step):
        raise ValueError(f"stride {step} must be positive")
    return tuple(
        np.arange(0, n - w + 1, s, dtype=np.int64) for n, w, s in zip(shape, win, step, strict=True)
    )


class ZarrBoxesDatasource(Datasource):
    """Crops of one Zarr array as a Ray Data datasource.

    ``starts(a, b)`` returns the ``(b - a, ndim)`` start corners of boxes ``a`` to ``b``
    of the plan (``count`` boxes in all); each box has shape ``crop_shape``.  Read tasks
    take contiguous index ranges of the plan.  ``node``: pin read tasks to this node id.
    ``direct``: open the array with ``direct=`` (O_DIRECT reads; None: the workers'
    setting).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        crop_shape: Sequence[int],
        count: int,
        starts: Callable[[int, int], np.ndarray],
        *,
        dtype: np.dtype,
        prefetch: int = 16,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        node: str | None = None,
        name: str = "ZarrCrops",
        decode_block: int = 0,
        per_cell: int = 0,
        direct: bool | None = None,
    ) -> None:
        super().__init__()
        self.direct = direct
        self.decode_block = int(decode_block)
        if self.decode_block < 0:
            raise ValueError(f"decode_block must not be negative, not {decode_block}")
        self.per_cell = int(per_cell)
        if self.per_cell < 0:
            raise ValueError(f"per_cell must not be negative, not {per_cell}")
        if self.per_cell and self.decode_block:
            raise ValueError("decode_block and per_cell are two samplers: give one of them")
        self.path = local_path(path, "a Zarr array read by Ray Data")
        self.crop_shape = tuple(int(c) for c in crop_shape)
        self.count = int(count)
        self.starts = starts
        self.dtype = np.dtype(dtype)
        self.prefetch = int(prefetch)
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        self.block_bytes = int(block_bytes)
        self.node = node
        self._name = name

    @property
    def crop_nbytes(self) -> int:
        """Bytes of one decoded crop."""
        return int(np.prod(self.crop_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def rows_per_block(self) -> int:
        """Crops per output block (about ``block_bytes`` each; whole cells with
        ``per_cell``)."""
        rows = max(1, self.block_bytes // max(1, self.crop_nbytes))
        if self.per_cell:
            rows = max(1, rows // self.per_cell) * self.per_cell
        return rows

    def get_name(self) -> str:
        """The name Ray shows for the read stage."""
        return self._name

    def estimate_inmemory_data_size(self) -> int | None:
        """Decoded bytes of all the crops."""
        return self.count * self.crop_nbytes

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, **_kw: Any
    ) -> list[ReadTask]:
        """One read task per contiguous index range of the plan (at most ``parallelism``)."""
        n = max(1, min(int(parallelism), self.count)) if self.count else 0
        edges = np.linspace(0, self.count, n + 1).round().astype(np.int64) if n else []
        if self.per_cell and n:  # whole cells per read task
            edges = edges // self.per_cell * self.per_cell
            edges[-1] = self.count
            edges = np.unique(edges)
        tasks = []
        for a, b in itertools.pairwise(edges):
            a, b = int(a), int(b)
            meta = BlockMetadata(
                num_rows=b - a,
                size_bytes=(b - a) * self.crop_nbytes,
                input_files=None,
                exec_stats=None,
            )
            tasks.append(
                ReadTask(
                    _ReadRange(self, a, b, _restrict(self.starts, a, b)),
                    meta,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


class _ReadRange:
    """A read task's body: boxes ``a:b`` of the plan, in blocks."""

    def __init__(
        self,
        src: ZarrBoxesDatasource,
        a: int,
        b: int,
        starts: Callable[[int, int], np.ndarray],
    ) -> None:
        self.path, self.crop, self.a, self.b = src.path, src.crop_shape, a, b
        self.starts = starts
        self.prefetch = src.prefetch
        self.rows = src.rows_per_block
        self.decode_block = src.decode_block
        self.per_cell = src.per_cell
        self.direct = src.direct

    def __call__(self) -> Iterator[Any]:
        arr = lz.open_array(self.path, direct=self.direct)
        if self.decode_block > 1 and arr.decodes_in_c:
            yield from self._decode_aware(arr)
            return
        size = np.asarray(self.crop, dtype=np.int64)
        pool = _BlockPool()
        # The window of `prefetch` crops in flight runs on across block boundaries: a block
        # is yielded (and copied into the object store by Ray) while the next one's crops
        # are being read and decoded (draining the window at every block stalled the
        # decode threads at each boundary).
        blocks: collections.deque[tuple[int, int, np.ndarray, np.ndarray]] = collections.deque()
        window: collections.deque[Any] = collections.deque()
        ends: collections.deque[int] = collections.deque()  # crop index of each read
        done = self.a  # crops [a, done) are decoded

        def ready() -> Iterator[Any]:
            while blocks and blocks[0][1] <= done:
                lo_idx, hi_idx, lo, out = blocks.popleft()
                yield BlockAccessor.batch_to_block(
                    {"crop": out, "index": np.arange(lo_idx, hi_idx, dtype=np.int64), "lo": lo}
                )

        # crops are read a group at a time (one Array.start_boxes task, straight into the
        # block's rows) where the C decoder applies: one plan and one set of decode calls
        # per group instead of per crop (as Array.crops does)
        group = arr.box_group(self.crop, self.prefetch)
        prefetch = self.prefetch
        if self.per_cell and group > 1:  # a cell is a group: its chunks decoded once
            group = self.per_cell
            prefetch = max(prefetch, 2 * group)  # one cell decodes while one is copied
        try:
            for lo_idx in range(self.a, self.b, self.rows):
                hi_idx = min(self.b, lo_idx + self.rows)
                lo = self.starts(lo_idx, hi_idx)
                out = pool.take((hi_idx - lo_idx, *self.crop), arr.dtype)
                blocks.append((lo_idx, hi_idx, lo, out))
                for k in range(0, len(lo), group):
                    los = lo[k : k + group]
                    if group > 1:
                        rows = [out[k + j] for j in range(len(los))]
                        window.append(arr.start_boxes(los, boxes=rows))
                    else:  # each crop straight into its row of the block
                        window.append(arr.start_read(los[0], los[0] + size, out[k]))
                    ends.append(lo_idx + k + len(los))
                    if len(window) * group >= prefetch:
                        window.popleft().wait()
                        done = ends.popleft()
                        yield from ready()
            while window:
                window.popleft().wait()
                done = ends.popleft()
                yield from ready()
        finally:
            arr.abandon(window)

    def _decode_aware(self, arr: Any) -> Iterator[Any]:
        """The same rows, decoded ``decode_block`` crops at a time: each chunk those
        crops touch is read and decoded once (:meth:`lsio_ray.zarr.Array.start_boxes`)."""
        buf = np.empty((min(self.decode_block, self.b - self.a), *self.crop), dtype=arr.dtype)
        pool = _BlockPool()
        for first in range(self.a, self.b, self.decode_block):
            last = min(self.b, first + self.decode_block)
            lo = self.starts(first, last)
            arr.start_boxes(lo, buf[: last - first]).wait()
            for a in range(first, last, self.rows):
                b = min(last, a + self.rows)
                crops = pool.take((b - a, *self.crop), arr.dtype)
                np.copyto(crops, buf[a - first : b - first])  # buf is reused
                yield BlockAccessor.batch_to_block(
                    {
                        "crop": crops,
                        "index": np.arange(a, b, dtype=np.int64),
                        "lo": lo[a - first : b - first],
                    }
                )


class _BlockPool:
    """Block buffers for a read task, reused once nothing else refers to them.

    A fresh block of tens of MiB costs a page fault per 4 KiB page (~4% of a read task's
    CPU).  Ray copies a yielded block into its object store, but Ray Data may keep the
    block (or an Arrow table built on its memory, zero-copy) for a while before that: a
    buffer is handed out again only when this pool holds the sole reference to it, so a
    block still in use is never overwritten."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.bufs: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype`` that nobody else refers to."""
        dtype = np.dtype(dtype)
        for i in range(len(self.bufs)):
            # references: the list's, and getrefcount's argument
            if sys.getrefcount(self.bufs[i]) == 2:
                buf = self.bufs[i]
                if buf.shape == shape and buf.dtype == dtype:
                    return buf
        buf = np.empty(shape, dtype)
        if len(self.bufs) < self.keep:
            self.bufs.append(buf)
        return buf


def _node_of(path: str, coordinator: Coordinator | None) -> str | None:
    if coordinator is None:
        return None
    v2 = os.path.join(path, ".zarray")
    meta = v2 if os.path.exists(v2) else os.path.join(path, "zarr.json")
    return coordinator.node_of(meta)


def _read(
    src: ZarrBoxesDatasource,
    parallelism: int | None,
    ray_args: dict[str, Any],
) -> ray.data.Dataset:
    import ray
    import ray.data

    args = dict(ray_args)
    if src.node is not None and "label_selector" not in args:
        args["label_selector"] = {ray._raylet.RAY_NODE_ID_KEY: src.node}
    if parallelism is None and "override_num_blocks" not in args:
        # One read task per CPU of the cluster: Ray's own default (many small tasks, each
        # paying task and block costs and its own array open) was 2.1x slower here
        # (``scripts/bench-datasource.py``, benchmarks/results/ray-data.md).
        parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if parallelism is not None:
        args["override_num_blocks"] = int(parallelism)
    ds = ray.data.read_datasource(src, **args)
    # Ray Data merges a read task's blocks until they reach the dataset's
    # target_max_block_size (128 MiB by default): a copy of every crop into a fresh
    # block, and a read task's first rows held back until 128 MiB are decoded.  Our
    # blocks are already sized (block_bytes), so the dataset (its own copy of the
    # DataContext) takes them as they are.
    full = src.rows_per_block * src.crop_nbytes
    ctx = ds.context
    if ctx.target_max_block_size is None or ctx.target_max_block_size > full:
        ctx.target_max_block_size = full
    return ds


def read_zarr_crops(
    path: str | os.PathLike[str],
    crop_shape: Iterable[int],
    count: int,
    *,
    seed: int | None = 0,
    parallelism: int | None = None,
    prefetch: int = 16,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    coordinator: Coordinator | None = None,
    decode_block: int = 0,
    per_cell: int = 0,
    cell: Iterable[int] | None = None,
    direct: bool | None = None,
    **read_args: Any,
) -> ray.data.Dataset:
    """A dataset of ``count`` random crops of ``crop_shape`` from the array at ``path``.

    Rows: ``crop``, ``index``, ``lo`` (see the module doc).  ``seed`` alone decides the
    crops (the same as ``Array.random_crops`` with that seed); ``parallelism``: read
    tasks (default: one per CPU of the cluster); ``prefetch``: crops in flight per task;
    ``block_bytes``: target block size; ``coordinator``: place read tasks where its
    locality says the array lives.

    ``decode_block``: the decode-aware sampler (:mod:`lsio_ray.zarr.sampler`): each read
    task decodes its crops ``decode_block`` at a time (e.g. 512), reading and decoding
    every chunk they touch once instead of once per crop -- for (8,256,256) crops of
    (1,256,256) chunks, 2.5x fewer decodes at 512.  The rows are exactly the same (same
    crops, same order); the costs are memory (``decode_block`` crops per read task, 1 GiB
    for 512 float32 (8,256,256) crops) and the latency of a whole group before its first
    row.  0 (default) reads crop by crop.  Codecs the C decoder does not handle (see
    ``Array.layout.codec.c_codec``) read crop by crop either way.

    ``per_cell``: the clustered sampler (``Array.clustered_crops``, the same crops for
    the same seed, ``per_cell`` and ``cell``): crops drawn ``per_cell`` at a time from
    one ``cell`` of start corners (default per axis: the larger of the chunk and the
    crop), each still uniform over the array, the cell's chunks decoded once.  The
    trade-off: a cell's crops are neighbours, so a minibatch of ``B`` crops holds about
    ``B / per_cell`` independent places.  0 (default): independent crops.

    ``direct``: read tasks read with O_DIRECT (``lsio_ray.zarr.open(..., direct=)``;
    default: the workers' ``direct`` setting, env ``LSIO_DIRECT``).  Each worker process
    that runs such a task then holds the process-wide direct loader, whose pool
    (``pool_bytes``, 256 MiB) is registered with io_uring and so resident.

    Other keyword arguments go to ``ray.data.read_datasource`` (``num_cpus``,
    ``concurrency``, ...)."""
    arr = lz.open_array(path)
    crop = tuple(int(c) for c in crop_shape)
    if int(per_cell) > 0:
        plan = arr.clustered_starts(crop, count, seed=seed, per_cell=int(per_cell), cell=cell)
    else:
        plan = random_box_starts(arr.shape, crop, count, seed)
    src = ZarrBoxesDatasource(
        arr.path,
        crop,
        count,
        _Slicer(plan),
        dtype=arr.dtype,
        prefetch=prefetch,
        block_bytes=block_bytes,
        node=_node_of(arr.path, coordinator),
        name="ZarrCrops",
        decode_block=decode_block,
        per_cell=max(0, int(per_cell)),
        direct=direct,
    )
    return _read(src, parallelism, read_args)


def read_zarr_windows(
    path: str | os.PathLike[str],
    window_shape: Iterable[int],
    *,
    stride: Iterable[int] | None = None,
    parallelism: int | None = None,
    prefetch: int = 16,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    coordinator: Coordinator | None = None,
    direct: bool | None = None,
    **read_args: Any,
) -> ray.data.Dataset:
    """A full scan: every whole window of ``window_shape`` at multiples of ``stride``
    (default: the window, i.e. non-overlapping tiles) in C order of their corners.

    Rows and the other arguments as :func:`read_zarr_crops`."""
    arr = lz.open_array(path)
    win = tuple(int(w) for w in window_shape)
    axes = window_starts(arr.shape, win, None if stride is None else tuple(stride))
    count = int(np.prod([len(a) for a in axes], dtype=np.int64))
    src = ZarrBoxesDatasource(
        arr.path,
        win,
        count,
        _Grid(axes),
        dtype=arr.dtype,
        prefetch=prefetch,
        block_bytes=block_bytes,
        node=_node_of(arr.path, coordinator),
        name="ZarrWindows",
        direct=direct,
    )
    return _read(src, parallelism, read_args)


def _restrict(
    starts: Callable[[int, int], np.ndarray], a: int, b: int
) -> Callable[[int, int], np.ndarray]:
    restrict = getattr(starts, "restrict", None)
    return starts if restrict is None else restrict(a, b)


class _Slicer:
    """Boxes of a plan held as one array (planned in the driver); ``restrict`` keeps a
    read task's share only, so each task carries its own boxes and no more."""

    def __init__(self, plan: np.ndarray, first: int = 0) -> None:
        self.plan, self.first = plan, first

    def restrict(self, a: int, b: int) -> _Slicer:
        """The boxes ``a:b`` only."""
        return _Slicer(self.plan[a - self.first : b - self.first].copy(), a)

    def __call__(self, a: int, b: int) -> np.ndarray:
        return self.plan[a - self.first : b - self.first]


class _Grid:
    """Boxes ``a:b`` of a window grid, computed on demand (a full scan can be huge)."""

    def __init__(self, axes: tuple[np.ndarray, ...]) -> None:
        self.axes = axes

    def __call__(self, a: int, b: int) -> np.ndarray:
        idx = np.unravel_index(np.arange(a, b, dtype=np.int64), [len(x) for x in self.axes])
        return np.stack([ax[i] for ax, i in zip(self.axes, idx, strict=True)], axis=1).astype(
            np.int64
        )
