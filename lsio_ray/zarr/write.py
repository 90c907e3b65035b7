"""Writing arrays: create, save, and regions of existing arrays.

The unit of writing is the stored object: a chunk, or a whole shard.  Each is encoded
in memory and written with the engine's ``LSIO_OP_WRITE_FILE`` (temp file, write,
rename), so a reader sees either the old object or the new one, never a mix.  A unit
the region covers only in part is read first (through the normal read path) and
merged.  Metadata is written the same way, and by :func:`save` only after every chunk,
so a reader never sees a half-made array.  Encoding runs on the decode pool (numcodecs
releases the GIL), one bounded batch of units at a time.

A process killed while writing (``kill -9``, OOM) leaves the temp file of each write in
flight (``NAME.lsio-tmp.PID.N...``, as large as the unit).  :func:`create` and
:func:`save` remove those of writers that are gone from the array's directory before
writing (:func:`lsio_ray.paths.remove_stray_temp_files`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from typing import Any

import numpy as np

from lsio_ray._lsio import lib
from lsio_ray.paths import check_disjoint, remove_stray_temp_files
from lsio_ray.zarr import _zarr_compat
from lsio_ray.zarr.array import Array
from lsio_ray.zarr.batches import FilePlan, file_plan
from lsio_ray.zarr.layout import ArrayLayout
from lsio_ray.zarr.loader import Loader, Task, default_loader
from lsio_ray.zarr.plan import select_chunks

__all__ = ["WriteTask", "create", "save", "write_region"]

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
        addr = np.array([d.ctypes.data if d.nbytes else 0 for d in self._keep], dtype=np.uint64)
        self.plan: FilePlan = file_plan(
            self.group,
            blob,
            width,
            np.ones(n, np.int64),
            np.zeros(n, np.int64),
            np.array([d.nbytes for d in self._keep], dtype=np.int64),
            kind=lib.LSIO_OP_WRITE_FILE,
            flags=lib.LSIO_F_FSYNC if fsync else 0,
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


def _write_files(
    loader: Loader, array: str, paths: list[str], datas: list[np.ndarray], fsync: bool = False
) -> None:
    if paths:
        task = WriteTask(loader, array, paths, datas, fsync=fsync)
        loader.start(task)
        task.wait()


def _make_dirs(paths: list[str], made: set[str]) -> None:
    for p in paths:
        d = os.path.dirname(p)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)


# -- encoding units ----------------------------------------------------------------------


def _encode_shard(
    layout: ArrayLayout, loader: Loader, shard: np.ndarray, start: np.ndarray
) -> np.ndarray:
    """Encode a full shard array (shard shape, padded) into its stored bytes."""
    idx_codec = layout.index
    assert idx_codec is not None
    inner = np.asarray(layout.chunks)
    cps = layout.chunks_per_shard
    n = int(np.prod(cps, dtype=np.int64))
    locals_ = (
        np.stack(np.unravel_index(np.arange(n), cps), axis=1) if cps else np.zeros((1, 0), np.int64)
    )
    origin = start + locals_ * inner  # array coordinates of each inner chunk
    inside = np.all(origin < np.asarray(layout.shape), axis=1)

    def enc(i: int) -> np.ndarray:
        lo = locals_[i] * inner
        box = tuple(slice(a, a + c) for a, c in zip(lo.tolist(), inner.tolist(), strict=True))
        return layout.codec.encode(shard[box])

    todo = np.flatnonzero(inside).tolist()
    encoded = loader.map(enc, todo)
    table = np.full((n, 2), 2**64 - 1, dtype=np.uint64)
    sizes = np.array([e.nbytes for e in encoded], dtype=np.uint64)
    base = idx_codec.nbytes if idx_codec.location == "start" else 0
    offs = (
        np.uint64(base) + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
        if len(sizes)
        else np.zeros(0, np.uint64)
    )
    table[todo, 0] = offs
    table[todo, 1] = sizes
    index = idx_codec.encode(table)
    out = np.empty(int(sizes.sum()) + index.nbytes, dtype=np.uint8)
    pos = base
    for e in encoded:
        out[pos : pos + e.nbytes] = e
        pos += e.nbytes
    if idx_codec.location == "start":
        out[: index.nbytes] = index
    else:
        out[pos:] = index
    return out


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


def write_region(
    array: Array, lo: tuple[int, ...], hi: tuple[int, ...], data: np.ndarray, *, fsync: bool = False
) -> None:
    """Write ``data`` (the box's shape) into the box ``[lo, hi)`` of ``array``."""
    layout = array.layout
    loader = array.loader
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

        def encode(i: int, olds: dict[int, Any] = olds) -> np.ndarray:
            old = olds[i].out if i in olds else None
            full = _unit_array(layout, starts[i], lo_a, hi_a, data, old)
            if layout.shards is None:
                return layout.codec.encode(full)
            return _encode_shard(layout, loader, full, starts[i])

        if layout.shards is None:
            datas = loader.map(encode, idx.tolist())
        else:
            datas = [encode(i) for i in idx.tolist()]
        paths = [layout.file_path(c) for c in sel.coords[idx].tolist()]
        _make_dirs(paths, made)
        _write_files(loader, layout.path, paths, datas, fsync)
        if layout.shards is not None:
            array.index_cache.invalidate(
                np.ravel_multi_index(tuple(sel.coords[idx].T), layout.file_grid)
                if layout.ndim
                else [0]
            )


# -- creating arrays ---------------------------------------------------------------------


def _source_dir(data: Any) -> str | None:
    """The directory a lazily read array ``data`` comes from: an lsio_ray
    :class:`~lsio_ray.zarr.Array`, or a zarr-python array on a local store (zarr's
    ``LocalStore`` or :class:`lsio_ray.zarr.Store`); None for anything else."""
    if isinstance(data, Array):
        return data.path
    store_path = getattr(data, "store_path", None)
    root = getattr(getattr(store_path, "store", None), "root", None)
    if isinstance(root, (str, os.PathLike)):
        return os.path.join(os.fspath(root), *(getattr(store_path, "path", "") or "").split("/"))
    return None


def _prepare_dir(path: str, overwrite: bool) -> None:
    exists = any(os.path.exists(os.path.join(path, m)) for m in ("zarr.json", ".zarray", ".zgroup"))
    if exists and not overwrite:
        raise FileExistsError(errno.EEXIST, "a Zarr node exists already (overwrite=False)", path)
    if exists or (overwrite and os.path.isdir(path) and os.listdir(path)):
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    # temp files of earlier writers killed mid-write (an interrupted save leaves its
    # chunks and no metadata; saved again without overwrite, they are still there)
    remove_stray_temp_files(path)


def _metadata(path: str, kwargs: dict[str, Any]) -> tuple[dict[str, bytes], ArrayLayout]:
    docs = _zarr_compat.create_metadata_docs(**kwargs)
    parsed = {k: json.loads(v) for k, v in docs.items()}
    meta = _zarr_compat.parse_metadata(path, parsed)
    return docs, ArrayLayout(path, meta)


def _write_metadata(loader: Loader, path: str, docs: dict[str, bytes], fsync: bool) -> None:
    # v2: attributes first, so the array appears (with its .zarray) complete
    order = sorted(docs, key=lambda k: (k == ".zarray", k))
    for name in order:
        _write_files(
            loader,
            path,
            [os.path.join(path, name)],
            [np.frombuffer(docs[name], dtype=np.uint8)],
            fsync,
        )


def _create_kwargs(
    shape: Any, dtype: Any, chunks: Any, filters: Any, compressors: Any, serializer: Any, **kw: Any
) -> dict[str, Any]:
    """``zarr.create_array`` arguments.  ``filters`` and ``compressors`` go as given, as
    zarr-python takes them: ``"auto"`` its defaults, None none at all (uncompressed);
    ``serializer=None`` is ``"auto"``.  The other arguments are passed when not None."""
    out = {
        "shape": tuple(int(s) for s in shape),
        "dtype": dtype,
        "chunks": tuple(int(c) for c in chunks),
        "filters": filters,
        "compressors": compressors,
        "serializer": "auto" if serializer is None else serializer,
    }
    out.update({k: v for k, v in kw.items() if v is not None})
    return out


def create(
    path: str | os.PathLike[str],
    *,
    shape: Any,
    dtype: Any,
    chunks: Any,
    shards: Any = None,
    zarr_format: int = 3,
    filters: Any = "auto",
    compressors: Any = "auto",
    serializer: Any = "auto",
    fill_value: Any = None,
    order: str | None = None,
    attributes: dict[str, Any] | None = None,
    chunk_key_encoding: Any = None,
    dimension_names: Any = None,
    overwrite: bool = False,
    fsync: bool = False,
    loader: Loader | None = None,
) -> Array:
    """Create an empty array (all fill value) and return it open for writing.

    Arguments are zarr-python's ``create_array`` ones, with its defaults and meanings
    (codec objects from ``zarr.codecs`` or numcodecs for v2): ``filters``,
    ``compressors`` and ``serializer`` default to ``"auto"`` (zarr-python's defaults:
    zstd for v3 and v2), ``compressors=None`` writes the chunks uncompressed.
    zarr-python builds the metadata, which is written atomically.  ``overwrite=True``
    removes what is at ``path`` first."""
    root = os.path.abspath(os.fspath(path))
    kwargs = _create_kwargs(
        shape,
        dtype,
        chunks,
        shards=shards,
        zarr_format=zarr_format,
        filters=filters,
        compressors=compressors,
        serializer=serializer,
        fill_value=fill_value,
        order=order,
        attributes=attributes,
        chunk_key_encoding=chunk_key_encoding,
        dimension_names=dimension_names,
    )
    docs, layout = _metadata(root, kwargs)
    loader = loader or default_loader()
    _prepare_dir(root, overwrite)
    _write_metadata(loader, root, docs, fsync)
    return Array(layout, loader)


def save(
    path: str | os.PathLike[str],
    data: Any,
    *,
    chunks: Any,
    shards: Any = None,
    zarr_format: int = 3,
    filters: Any = "auto",
    compressors: Any = "auto",
    serializer: Any = "auto",
    fill_value: Any = None,
    order: str | None = None,
    attributes: dict[str, Any] | None = None,
    chunk_key_encoding: Any = None,
    dimension_names: Any = None,
    overwrite: bool = False,
    fsync: bool = False,
    loader: Loader | None = None,
) -> Array:
    """Write a whole numpy array as a new Zarr array: every chunk (or shard) first, the
    metadata last, so the array appears complete or not at all.  Arguments as for
    :func:`create`.  ``data`` may be an array read from disk (an lsio_ray or zarr-python
    array on a local directory): ``path`` must then not be that directory, lie inside it
    or hold it (symbolic links resolved), else :class:`ValueError` -- with
    ``overwrite=True`` that would remove the array being saved."""
    root = os.path.abspath(os.fspath(path))
    source = _source_dir(data)
    if source is not None:
        check_disjoint(source, root)  # before reading (and later removing) anything
    arr = np.asarray(data)
    kwargs = _create_kwargs(
        arr.shape,
        arr.dtype,
        chunks,
        shards=shards,
        zarr_format=zarr_format,
        filters=filters,
        compressors=compressors,
        serializer=serializer,
        fill_value=fill_value,
        order=order,
        attributes=attributes,
        chunk_key_encoding=chunk_key_encoding,
        dimension_names=dimension_names,
    )
    docs, layout = _metadata(root, kwargs)
    loader = loader or default_loader()
    _prepare_dir(root, overwrite)
    out = Array(layout, loader)
    write_region(out, (0,) * arr.ndim, arr.shape, arr, fsync=fsync)
    _write_metadata(loader, root, docs, fsync)
    return out
