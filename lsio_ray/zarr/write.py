"""Writing regions of arrays (:func:`write_region`, ``a[...] = x``) and whole files.

The unit of writing is the stored object: a chunk, or a whole shard.  Each is encoded
in memory and written with the engine's ``LSIO_OP_WRITE_FILE`` (temp file, write,
rename), so a reader sees either the old object or the new one, never a mix.  A unit
the region covers only in part is read first (through the normal read path) and
merged.  Metadata is written the same way (:func:`write_files`), and by
:func:`lsio_ray.zarr.save` only after every chunk, so a reader never sees a half-made
array (making arrays: :mod:`lsio_ray.zarr.creation`).  Encoding runs on the decode pool
(numcodecs releases the GIL), one bounded batch of units at a time.

Chunks whose every element is the fill value are not stored (zarr-python's
``write_empty_chunks=False``, its default; ``write_empty_chunks=True`` to
``lz.create``, ``lz.save`` or ``lz.open`` stores them): a write leaving a unit all
fill value removes the file stored there.  The encoder, with the rules for shards and
for what counts as the fill value, is :mod:`lsio_ray.zarr.encode`, shared with the
re-chunk job.

On object storage (an array at an ``s3://...`` URL) each unit is an object written
whole through the IO service's remote backend (a partial update reads the whole unit,
merges and writes it back), a unit left all fill value is deleted, and no temp file
is ever left: an object store's PUT is atomic.

A process killed while writing (``kill -9``, OOM) leaves the temp file of each write in
flight (``NAME.lsio-tmp.PID.N...``, as large as the unit).  ``lz.create`` and
``lz.save`` remove those of writers that are gone from the array's directory before
writing (:func:`lsio_ray.paths.remove_stray_temp_files`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from lsio_ray.io import F_FSYNC, OP_WRITE_FILE, address, objects
from lsio_ray.io.url import is_remote
from lsio_ray.zarr.batches import FilePlan, file_plan
from lsio_ray.zarr.encode import encode_unit
from lsio_ray.zarr.layout import ArrayLayout
from lsio_ray.zarr.loader import Loader, Task
from lsio_ray.zarr.plan import select_chunks

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = ["WriteTask", "write_files", "write_region", "write_units"]

_BATCH_BYTES = 256 << 20  # decoded bytes of units encoded and written per batch


class WriteTask(Task):
    """Write whole files atomically; ``datas[i]`` (uint8 arrays) go to ``paths[i]``."""

    def __init__(
        self,
        loader: Loader,
        array: str,
        paths: list[str],
        datas: list[np.ndarray],
        *,
        fsync: bool = False,
    ) -> None:
        super().__init__(loader)
        self.array = array
        self._keep = [np.ascontiguousarray(d, dtype=np.uint8).reshape(-1) for d in datas]
        raw = np.array([os.fsencode(p) for p in paths], dtype="S")
        width = raw.dtype.itemsize + 1
        blob = raw.astype(f"S{width}").tobytes()
        n = len(paths)
        addr = np.array([address(d) for d in self._keep], dtype=np.uint64)
        self.plan: FilePlan = file_plan(
            self.group,
            blob,
            width,
            np.ones(n, np.int64),
            np.zeros(n, np.int64),
            np.array([d.nbytes for d in self._keep], dtype=np.int64),
            kind=OP_WRITE_FILE,
            flags=F_FSYNC if fsync else 0,
            data=addr,
        )

    def has_batches(self) -> bool:
        return self.plan.has_batches()

    def next_batch(self, budget: int) -> tuple[np.ndarray, np.ndarray, bytes] | None:
        return self.plan.next_batch(budget)

    def on_completions(self, comps: np.ndarray) -> int:
        _, resolved, failures = self.plan.resolve(comps)
        for rs, k in failures:
            err = -int(comps["error"][k])
            path = self.plan.path(int(self.plan.range_file[rs[0]]))
            key = os.path.relpath(path, self.array)
            self.fail(OSError(err, f"{self.array}: cannot write {key}: {os.strerror(err)}", path))
        return resolved


def write_files(
    loader: Loader, array: str, paths: list[str], datas: list[np.ndarray], fsync: bool = False
) -> None:
    """Write ``datas[i]`` as the whole file (or object, for URLs) ``paths[i]`` of the
    array ``array``, each atomically, through ``loader``'s IO service; raises
    ``OSError`` naming the first that failed."""
    if paths:
        task = WriteTask(loader, array, paths, datas, fsync=fsync)
        loader.start(task)
        task.wait()


def _make_dirs(paths: list[str], made: set[str]) -> None:
    for p in paths:
        if is_remote(p):  # object stores have no directories
            continue
        d = os.path.dirname(p)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)


# -- writing units ---------------------------------------------------------------------


def _unit_array(
    layout: ArrayLayout,
    start: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    data: np.ndarray,
    old: np.ndarray | None,
) -> np.ndarray:
    """The full unit (chunk or shard shape) at ``start``: old content or fill value, with
    the part of ``data`` (the region ``[lo, hi)``) that falls inside it on top."""
    unit = np.asarray(layout.file_shape)
    stop_in = np.minimum(start + unit, layout.shape)
    full = np.empty(tuple(unit.tolist()), dtype=layout.dtype)
    in_box = tuple(slice(0, int(b - a)) for a, b in zip(start, stop_in, strict=True))
    edge = bool(np.any(stop_in < start + unit))
    if old is not None:
        if edge:
            full[...] = layout.fill_value
        full[in_box] = old
    elif edge:
        full[...] = layout.fill_value
    a = np.maximum(lo, start)
    b = np.minimum(hi, stop_in)
    dst = tuple(slice(int(x - s), int(y - s)) for x, y, s in zip(a, b, start, strict=True))
    src = tuple(slice(int(x - s), int(y - s)) for x, y, s in zip(a, b, lo, strict=True))
    full[dst] = data[src]
    return full


def _remove_files(paths: list[str]) -> None:
    """Remove stored units now all fill value (a missing unit reads as the fill value);
    one that is not there is fine."""
    remote = [p for p in paths if is_remote(p)]
    if remote:
        objects.delete_objects(remote)
    for p in paths:
        if is_remote(p):
            continue
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def write_region(
    array: Array, lo: tuple[int, ...], hi: tuple[int, ...], data: np.ndarray, *, fsync: bool = False
) -> None:
    """Write ``data`` (the box's shape) into the box ``[lo, hi)`` of ``array``.

    Units (chunks, or shards) left all fill value are not stored, and one stored there
    before is removed, unless the array was opened or made with
    ``write_empty_chunks=True`` (:mod:`lsio_ray.zarr.encode`)."""
    write_units(array, lo, hi, data, fsync=fsync, fresh=False)


def write_units(
    array: Array,
    lo: tuple[int, ...],
    hi: tuple[int, ...],
    data: np.ndarray,
    *,
    fsync: bool,
    fresh: bool,
) -> None:
    """:func:`write_region`; ``fresh``: the array's directory holds no unit yet (a
    save), so units all fill value have nothing to remove."""
    layout = array.layout
    loader = array.loader
    empty_too = array.write_empty_chunks
    if data.shape != tuple(h - a for a, h in zip(lo, hi, strict=True)):
        raise ValueError(f"data of shape {data.shape} for a box of {lo}..{hi}")
    unit = np.asarray(layout.file_shape, dtype=np.int64)
    shape = np.asarray(layout.shape, dtype=np.int64)
    lo_a, hi_a = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    sel = select_chunks(lo, hi, layout.file_shape)
    if len(sel) == 0:
        return
    starts = sel.coords * unit
    stops_in = np.minimum(starts + unit, shape)
    covered = np.all((starts >= lo_a) & (stops_in <= hi_a), axis=1)
    unit_bytes = int(np.prod(unit)) * layout.dtype.itemsize
    per_batch = max(1, _BATCH_BYTES // max(unit_bytes, 1))
    made: set[str] = set()
    for b0 in range(0, len(sel), per_batch):
        idx = np.arange(b0, min(b0 + per_batch, len(sel)))
        olds: dict[int, Any] = {}
        for i in idx[~covered[idx]].tolist():
            olds[i] = array.start_read(starts[i], stops_in[i])
        for task in olds.values():
            task.wait()

        def encode(i: int, olds: dict[int, Any] = olds) -> np.ndarray | None:
            old = olds[i].out if i in olds else None
            full = _unit_array(layout, starts[i], lo_a, hi_a, data, old)
            # a shard's inner chunks are encoded on the decode pool, one shard at a time
            inner_map = None if layout.shards is None else loader.map
            return encode_unit(layout, full, starts[i], write_empty_chunks=empty_too, map=inner_map)

        if layout.shards is None:
            encoded = loader.map(encode, idx.tolist())
        else:
            encoded = [encode(i) for i in idx.tolist()]
        paths = [layout.file_path(c) for c in sel.coords[idx].tolist()]
        keep = [k for k, e in enumerate(encoded) if e is not None]
        if not fresh:
            _remove_files([paths[k] for k, e in enumerate(encoded) if e is None])
        paths = [paths[k] for k in keep]
        datas = [encoded[k] for k in keep]
        _make_dirs(paths, made)
        write_files(loader, layout.path, paths, datas, fsync)
        if layout.shards is not None:
            array.index_cache.invalidate(
                np.ravel_multi_index(tuple(sel.coords[idx].T), layout.file_grid)
                if layout.ndim
                else [0]
            )
