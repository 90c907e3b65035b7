"""Ray Data datasources over Zarr arrays (v2 and v3, sharded or not).

>>> import lsio_ray.data
>>> ds = lsio_ray.data.read_zarr_crops("train.zarr", (8, 64, 64), count=100_000, seed=0)
>>> for batch in ds.iter_batches(batch_size=256):      # {"crop", "index", "lo"}
...     step(batch["crop"])
>>> scan = lsio_ray.data.read_zarr_windows("train.zarr", (8, 256, 256))   # a full scan

Every row is one crop: ``crop`` (a numpy array of the crop's shape), ``index`` (its
number in the plan) and ``lo`` (the coordinates of its first element; the crop covers
``lo[d] : lo[d] + crop_shape[d]`` on each axis), and with ``include_paths=True`` also
``path``, the array's absolute path.  Aligned samples of several arrays (an image and its
label, ``arrays=["image", "label"]``): one column per array, see :mod:`lsio_ray.data_aligned`.

The readers take their arguments as Ray Data's own readers (``read_parquet``,
``read_images``) take theirs: see :func:`read_zarr_crops` and :mod:`lsio_ray.data_plan`.

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

``decode_block=N`` (the decode-aware sampler: the same rows, each chunk under N crops
decoded once) and ``per_cell=K`` (the clustered sampler: crops drawn K at a time from one
small cell, read tasks and blocks cut at cell boundaries): see :func:`read_zarr_crops`.

Placement: when a :class:`~lsio_ray.ray.Coordinator` is given and its locality (declared
roots or discovery) says one node holds the arrays, every read task is pinned to that
node (the files cannot be read anywhere else); otherwise Ray's default scheduling is
used (shared storage, and object storage or HTTP URLs: read tasks spread over every
node).  Ray Data has no per-read-task placement, so arrays spread over several nodes'
local disks are not supported by these readers (refused).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

import lsio_ray.data_aligned as aligned_reads
import lsio_ray.zarr as lz
from lsio_ray.data_plan import BlockPool as _BlockPool
from lsio_ray.data_plan import (
    Grid,
    Slicer,
    array_paths,
    arrays_in,
    crop_plan,
    node_of_all,
    open_all,
    resolve_num_blocks,
    restrict,
    store_options,
    strict_keywords,
    task_ranges,
    window_starts,
)
from lsio_ray.data_plan import node_of as _node_of  # noqa: F401 (tests use it)
from lsio_ray.data_shards import node_shards, read_dataset
from lsio_ray.io import stores
from lsio_ray.io.url import resolve
from lsio_ray.zarr import random_box_starts

if TYPE_CHECKING:
    from collections.abc import Mapping

    from lsio_ray.ray.coordinator import Coordinator

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "ZarrBoxesDatasource",
    "node_shards",
    "random_box_starts",
    "read_zarr_crops",
    "read_zarr_windows",
    "window_starts",
]

DEFAULT_BLOCK_BYTES = 32 << 20

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


class ZarrBoxesDatasource(Datasource):
    """Equal-shaped boxes of one or more Zarr arrays as a Ray Data datasource.

    ``starts(a, b)`` returns the ``(b - a, ndim)`` start corners of boxes ``a`` to ``b``
    of the plan (``count`` boxes in all); each box has shape ``crop_shape``.  With
    several ``paths``, ``sources(a, b)`` returns the array (its number in ``paths``) of
    each of those boxes (None: all from the first).  Read tasks take contiguous index
    ranges of the plan.  ``node``: pin read tasks to this node id.  ``direct``: open the
    arrays with ``direct=`` (O_DIRECT reads; None: the workers' setting).
    ``include_paths``: a ``path`` column.  ``pad``: a box that runs past its array's end
    is read padded with the array's fill value (otherwise such a box is an error).
    """

    def __init__(
        self,
        path: Paths,
        crop_shape: Sequence[int],
        count: int,
        starts: Callable[[int, int], np.ndarray],
        *,
        dtype: np.dtype,
        sources: Callable[[int, int], np.ndarray] | None = None,
        prefetch: int = 16,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        node: str | None = None,
        name: str = "ZarrCrops",
        decode_block: int = 0,
        per_cell: int = 0,
        direct: bool | None = None,
        include_paths: bool = False,
        pad: bool = False,
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
        one = isinstance(path, str | os.PathLike)
        self.paths = tuple(resolve(p) for p in ([path] if one else path))
        if not self.paths:
            raise ValueError("ZarrBoxesDatasource needs at least one path")
        self.store_options = store_options(self.paths)  # shipped to the read tasks
        self.path = self.paths[0]
        self.crop_shape = tuple(int(c) for c in crop_shape)
        self.count = int(count)
        self.starts = starts
        self.sources = sources
        self.dtype = np.dtype(dtype)
        self.prefetch = int(prefetch)
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        self.block_bytes = int(block_bytes)
        self.node = node
        self._name = name
        self.include_paths = bool(include_paths)
        self.pad = bool(pad)
        self.span: tuple[int, int] | None = None  # one shard's rows (data_shards)

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
        """Decoded bytes of all the crops (of the shard's, :attr:`span`)."""
        a, b = self.span or (0, self.count)
        return (b - a) * self.crop_nbytes

    @property
    def task_unit(self) -> int:
        """Rows a read task (and a shard) takes whole: a cell's with ``per_cell``."""
        return self.per_cell

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, **_kw: Any
    ) -> list[ReadTask]:
        """One read task per contiguous index range of the plan (at most ``parallelism``)."""
        tasks = []
        for a, b in task_ranges(self.span or (0, self.count), parallelism, self.per_cell):
            ids = arrays_in(self.sources, a, b)
            meta = BlockMetadata(
                num_rows=b - a,
                size_bytes=(b - a) * self.crop_nbytes,
                input_files=[self.paths[k] for k in ids],
                exec_stats=None,
            )
            body = _ReadRange(
                self,
                a,
                b,
                restrict(self.starts, a, b),
                None if self.sources is None else restrict(self.sources, a, b),
                ids,
            )
            tasks.append(ReadTask(body, meta, per_task_row_limit=per_task_row_limit))
        return tasks


class _ReadRange:
    """A read task's body: boxes ``a:b`` of the plan, in blocks."""

    def __init__(
        self,
        src: ZarrBoxesDatasource,
        a: int,
        b: int,
        starts: Callable[[int, int], np.ndarray],
        sources: Callable[[int, int], np.ndarray] | None,
        ids: list[int],
    ) -> None:
        self.paths = {k: src.paths[k] for k in ids}  # the arrays this range reads
        self.crop, self.a, self.b = src.crop_shape, a, b
        self.starts, self.sources = starts, sources
        self.prefetch = src.prefetch
        self.rows = src.rows_per_block
        self.decode_block = src.decode_block
        self.per_cell = src.per_cell
        self.direct = src.direct
        self.include_paths = src.include_paths
        self.pad = src.pad
        self.store_options = src.store_options

    def _sources(self, a: int, b: int) -> np.ndarray:
        if self.sources is None:
            return np.zeros(b - a, dtype=np.int64)
        return np.asarray(self.sources(a, b), dtype=np.int64)

    def _block(self, a: int, b: int, lo: np.ndarray, src: np.ndarray, crops: np.ndarray) -> Any:
        cols = {"crop": crops, "index": np.arange(a, b, dtype=np.int64), "lo": lo}
        if self.include_paths:
            cols["path"] = np.array([self.paths[int(k)] for k in src], dtype=object)
        return BlockAccessor.batch_to_block(cols)

    def __call__(self) -> Iterator[Any]:
        stores.apply(self.store_options)  # the driver's storage_options, in this worker
        arrays = {k: lz.open_array(p, direct=self.direct) for k, p in self.paths.items()}
        if self.decode_block > 1 and all(arr.decodes_in_c for arr in arrays.values()):
            yield from self._decode_aware(arrays)
        else:
            yield from self._plain(arrays)

    def _plain(self, arrays: dict[int, Any]) -> Iterator[Any]:
        pool = _BlockPool()
        dtype = next(iter(arrays.values())).dtype
        # crops are read a group at a time (one Array.start_boxes task, straight into the
        # block's rows) where the C decoder applies: one plan and one set of decode calls
        # per group instead of per crop (as Array.crops does)
        groups = {k: arr.box_group(self.crop, self.prefetch) for k, arr in arrays.items()}
        prefetch = self.prefetch
        for k, group in groups.items():
            if self.per_cell and group > 1:  # a cell is a group: its chunks decoded once
                groups[k] = self.per_cell
                prefetch = max(prefetch, 2 * self.per_cell)  # one cell decodes, one copied
        # The window of `prefetch` crops in flight runs on across block boundaries: a block
        # is yielded (and copied into the object store by Ray) while the next one's crops
        # are being read and decoded (draining the window at every block stalled the
        # decode threads at each boundary).
        blocks: collections.deque[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]
        blocks = collections.deque()
        # (read, its crops, crops [a, mark) decoded once it is done)
        window: collections.deque[tuple[Any, int, int]] = collections.deque()
        inflight = 0
        done = self.a  # crops [a, done) are decoded

        def ready() -> Iterator[Any]:
            while blocks and blocks[0][1] <= done:
                yield self._block(*blocks.popleft())

        try:
            for lo_idx in range(self.a, self.b, self.rows):
                hi_idx = min(self.b, lo_idx + self.rows)
                lo = self.starts(lo_idx, hi_idx)
                src = self._sources(lo_idx, hi_idx)
                out = pool.take((hi_idx - lo_idx, *self.crop), dtype)
                blocks.append((lo_idx, hi_idx, lo, src, out))
                reads = self._block_reads(arrays, groups, lo, src)
                for j, (k, rows, edge) in enumerate(reads):
                    task = self._start(arrays[k], groups[k] > 1, lo, rows, out, edge)
                    window.append((task, len(rows), hi_idx if j == len(reads) - 1 else lo_idx))
                    inflight += len(rows)
                    while inflight >= prefetch:
                        task, n, done = window.popleft()
                        task.wait()
                        inflight -= n
                        yield from ready()
            while window:
                task, _, done = window.popleft()
                task.wait()
                yield from ready()
        finally:
            lz.Array.abandon(task for task, _, _ in window)

    def _block_reads(
        self, arrays: dict[int, Any], groups: dict[int, int], lo: np.ndarray, src: np.ndarray
    ) -> list[tuple[int, np.ndarray, bool]]:
        """The reads that fill one block: ``(array, rows, edge)``, an array's rows in
        groups of its ``box_group``, and each box running past its array's end (``pad``)
        on its own."""
        size = np.asarray(self.crop, dtype=np.int64)
        reads = []
        for k in np.unique(src).tolist():
            rows = np.flatnonzero(src == k)
            edge = np.empty(0, dtype=np.int64)
            if self.pad:
                over = (lo[rows] + size > np.asarray(arrays[k].shape)).any(axis=1)
                rows, edge = rows[~over], rows[over]
            g = groups[k]
            reads.extend((k, rows[i : i + g], False) for i in range(0, len(rows), g))
            reads.extend((k, edge[i : i + 1], True) for i in range(len(edge)))
        return reads

    def _start(
        self, arr: Any, grouped: bool, lo: np.ndarray, rows: np.ndarray, out: np.ndarray, edge: bool
    ) -> Any:
        """Start reading the boxes of ``rows`` into their rows of ``out``."""
        if edge:  # the part inside the array into the row's corner, the rest fill value
            start = lo[rows[0]]
            stop = np.minimum(start + np.asarray(self.crop), np.asarray(arr.shape))
            row = out[rows[0]]
            row[...] = arr.fill_value
            corner = row[tuple(slice(0, int(n)) for n in stop - start)]
            return arr.start_read(start, stop, corner)
        if grouped:
            return arr.start_boxes(lo[rows], boxes=[out[r] for r in rows])
        r = rows[0]  # each crop straight into its row of the block
        return arr.start_read(lo[r], lo[r] + np.asarray(self.crop), out[r])

    def _decode_aware(self, arrays: dict[int, Any]) -> Iterator[Any]:
        """The same rows, decoded ``decode_block`` crops at a time: each chunk those
        crops touch is read and decoded once (:meth:`lsio_ray.zarr.Array.start_boxes`)."""
        dtype = next(iter(arrays.values())).dtype
        buf = np.empty((min(self.decode_block, self.b - self.a), *self.crop), dtype=dtype)
        pool = _BlockPool()
        for first in range(self.a, self.b, self.decode_block):
            last = min(self.b, first + self.decode_block)
            lo = self.starts(first, last)
            src = self._sources(first, last)
            tasks = []
            try:
                for k in np.unique(src).tolist():
                    rows = np.flatnonzero(src == k)
                    if len(rows) == last - first:
                        tasks.append(arrays[k].start_boxes(lo, buf[: last - first]))
                    else:
                        boxes = [buf[r] for r in rows]
                        tasks.append(arrays[k].start_boxes(lo[rows], boxes=boxes))
                while tasks:
                    tasks[0].wait()
                    tasks.pop(0)
            finally:
                lz.Array.abandon(tasks)
            for a in range(first, last, self.rows):
                b = min(last, a + self.rows)
                crops = pool.take((b - a, *self.crop), dtype)
                np.copyto(crops, buf[a - first : b - first])  # buf is reused
                yield self._block(
                    a, b, lo[a - first : b - first], src[a - first : b - first], crops
                )


@strict_keywords
def read_zarr_crops(
    paths: Paths | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    crop_shape: Iterable[int],
    count: int,
    *,
    arrays: Sequence[str] | Mapping[str, str] | None = None,
    seed: int | None = 0,
    prefetch: int = 16,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    coordinator: Coordinator | None = None,
    decode_block: int = 0,
    per_cell: int = 0,
    cell: Iterable[int] | None = None,
    direct: bool | None = None,
    include_paths: bool = False,
    filesystem: Any = None,
    override_num_blocks: int | None = None,
    concurrency: int | None = None,
    compute: Any = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: float | None = None,
    label_selector: dict[str, str] | None = None,
    fallback_strategy: list[dict[str, Any]] | None = None,
    max_calls: int | None = None,
    resources: dict[str, float] | None = None,
    accelerator_type: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    ray_remote_args: dict[str, Any] | None = None,
    parallelism: int | None = None,
    storage_options: dict[str, Any] | None = None,
    shard: tuple[int, int] | None = None,
) -> ray.data.Dataset:
    """A dataset of ``count`` random crops of ``crop_shape`` from the array at ``paths``
    (or from the arrays, if a list).

    Rows: ``crop``, ``index``, ``lo`` (and ``path``, see the module doc).  ``seed`` alone
    decides the crops (with one path, the same as ``Array.random_crops`` with that seed);
    ``prefetch``: crops in flight per task; ``block_bytes``: target block size;
    ``coordinator``: place read tasks where its locality says the arrays live.

    Several arrays: each crop is drawn from array ``k`` with probability proportional
    to its number of crop positions, so every crop position of every array is equally
    likely, and the arrays' crops come interleaved in the plan.  The draws are
    ``numpy.random.SeedSequence(seed).spawn(len(paths) + 1)``: the last child picks the
    arrays, child ``k`` places array ``k``'s crops (as ``random_box_starts`` or
    ``clustered_starts`` with it as the seed).  The arrays must share one dtype.

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
    ``B / per_cell`` independent places.  0 (default): independent crops.  With several
    arrays, each cell's array is drawn as above.

    Aligned samples of several arrays (an image and its label): ``arrays=["image",
    "label"]`` with ``paths`` a group (or a list of groups), or ``paths`` a dict
    ``{"image": path, "label": path}``; one column per array instead of ``crop``, the
    crop covering the last axes of every array (:mod:`lsio_ray.data_aligned`).

    ``direct``: read tasks read with O_DIRECT (``lsio_ray.zarr.open(..., direct=)``;
    default: the workers' ``direct`` setting, env ``LSIO_DIRECT``).  Each worker process
    that runs such a task then holds the process-wide direct loader, whose pool
    (``pool_bytes``, 256 MiB) is registered with io_uring and so resident.

    Paths and the arguments of Ray Data's readers: ``paths``, one path or URL
    (``s3://``, ``gs://``, ``az://``, ``http(s)://``) or a list of them (read into one
    dataset); ``storage_options``: the store options of every URL among them (as
    :func:`lsio_ray.zarr.open`), shipped to the read tasks; ``include_paths``: a ``path``
    column, the array's absolute path or URL; ``filesystem``: None or a local filesystem
    (else ``ValueError``);
    ``override_num_blocks``: the number of read tasks (default: one per CPU of the
    cluster); ``concurrency``, ``compute``, ``num_cpus``, ``num_gpus``, ``memory``,
    ``label_selector``, ``fallback_strategy``, ``max_calls``, ``resources``,
    ``accelerator_type``, ``runtime_env``, ``ray_remote_args``: as for
    ``ray.data.read_datasource``; ``parallelism``: the deprecated old name of
    ``override_num_blocks`` (``DeprecationWarning``).  An unknown keyword argument is a
    ``TypeError`` naming it.

    ``shard=(i, n)``: only the ``i``-th of ``n`` contiguous shares of the rows (whole
    cells with ``per_cell``), for one of ``n`` consumers; the ``n`` shards are exactly
    the rows without ``shard``.  :func:`node_shards` gives one per trainer node, read on
    that node (:mod:`lsio_ray.data_shards`).
    """
    params = dict(locals())  # the arguments, the Ray Data ones among them
    if aligned_reads.is_aligned(paths, arrays):  # an image and its label...
        num = resolve_num_blocks(override_num_blocks, parallelism, "read_zarr_crops")
        return aligned_reads.aligned_crops(params, num, read_dataset)
    name = "read_zarr_crops"
    num_blocks = resolve_num_blocks(override_num_blocks, parallelism, name)
    arrays = open_all(array_paths(paths, filesystem, name, storage_options))
    crop = tuple(int(c) for c in crop_shape)
    plan, which = crop_plan(arrays, crop, int(count), seed, max(0, int(per_cell)), cell)
    src = ZarrBoxesDatasource(
        [arr.path for arr in arrays],
        crop,
        count,
        Slicer(plan),
        sources=None if which is None else Slicer(which),
        dtype=arrays[0].dtype,
        prefetch=prefetch,
        block_bytes=block_bytes,
        node=node_of_all([arr.path for arr in arrays], coordinator),
        name="ZarrCrops",
        decode_block=decode_block,
        per_cell=max(0, int(per_cell)),
        direct=direct,
        include_paths=include_paths,
    )
    return read_dataset(src, num_blocks, params)


@strict_keywords
def read_zarr_windows(
    paths: Paths | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    window_shape: Iterable[int],
    *,
    arrays: Sequence[str] | Mapping[str, str] | None = None,
    stride: Iterable[int] | None = None,
    partial: str = "pad",
    prefetch: int = 16,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    coordinator: Coordinator | None = None,
    direct: bool | None = None,
    include_paths: bool = False,
    filesystem: Any = None,
    override_num_blocks: int | None = None,
    concurrency: int | None = None,
    compute: Any = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: float | None = None,
    label_selector: dict[str, str] | None = None,
    fallback_strategy: list[dict[str, Any]] | None = None,
    max_calls: int | None = None,
    resources: dict[str, float] | None = None,
    accelerator_type: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    ray_remote_args: dict[str, Any] | None = None,
    parallelism: int | None = None,
    storage_options: dict[str, Any] | None = None,
    shard: tuple[int, int] | None = None,
) -> ray.data.Dataset:
    """A full scan: the windows of ``window_shape`` at multiples of ``stride`` (default:
    the window, i.e. non-overlapping tiles) in C order of their corners, array after
    array for a list of paths (``index`` runs on across them).

    ``partial``: the windows at an axis's far end, where the whole windows stop short of
    it (a (32, 256, 256) array in (8, 100, 100) windows: 200:256 on the last two axes).
    ``"pad"`` (default) reads them too, each row full size, the part past the array's
    end filled with the array's fill value, so every element is read (unless ``stride``
    is larger than the window: then the gaps between windows are skipped, by request);
    a row is padded where ``lo + window_shape`` exceeds the array's shape.  ``"drop"``:
    whole windows only (the elements past the last whole window are never read).
    ``"error"``: ``ValueError`` if there are any such elements.
    (:func:`~lsio_ray.data_plan.window_starts` gives the window corners per axis.)

    Rows and the other arguments (``shard`` among them) as :func:`read_zarr_crops`."""
    params = dict(locals())  # the arguments, the Ray Data ones among them
    if aligned_reads.is_aligned(paths, arrays):  # an image and its label...
        num = resolve_num_blocks(override_num_blocks, parallelism, "read_zarr_windows")
        return aligned_reads.aligned_windows(params, num, read_dataset)
    name = "read_zarr_windows"
    num_blocks = resolve_num_blocks(override_num_blocks, parallelism, name)
    arrays = open_all(array_paths(paths, filesystem, name, storage_options))
    win = tuple(int(w) for w in window_shape)
    step = None if stride is None else tuple(int(s) for s in stride)
    grids = []
    for arr in arrays:
        try:
            grids.append(window_starts(arr.shape, win, step, partial))
        except ValueError as exc:
            raise ValueError(f"{arr.path}: {exc}") from None
    grid = Grid(grids)
    src = ZarrBoxesDatasource(
        [arr.path for arr in arrays],
        win,
        grid.count,
        grid,
        sources=grid.sources() if len(arrays) > 1 else None,
        dtype=arrays[0].dtype,
        prefetch=prefetch,
        block_bytes=block_bytes,
        node=node_of_all([arr.path for arr in arrays], coordinator),
        name="ZarrWindows",
        direct=direct,
        include_paths=include_paths,
        pad=partial == "pad",
    )
    return read_dataset(src, num_blocks, params)
