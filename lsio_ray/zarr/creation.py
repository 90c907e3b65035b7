"""Making arrays: :func:`create` (empty, all fill value) and :func:`save` (a whole
numpy array), both returning the new :class:`~lsio_ray.zarr.Array`.

zarr-python builds the metadata documents; the chunks go through
:func:`lsio_ray.zarr.write.write_units` and the documents through
:func:`lsio_ray.zarr.write.write_files`, both atomic per file, the metadata last.

On object storage (``s3://bucket/prefix``...: :mod:`lsio_ray.io.url`) the array is the
prefix: chunks and shards are objects written whole through the IO service, the
metadata documents objects written last (:func:`lsio_ray.io.objects.put_object`), and
``overwrite=True`` deletes every object under the prefix first.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from typing import Any

import numpy as np

from lsio_ray.io import objects
from lsio_ray.io.url import is_remote, join, resolve
from lsio_ray.paths import check_disjoint, remove_stray_temp_files
from lsio_ray.zarr.array import Array
from lsio_ray.zarr.layout import ArrayLayout, layout_from_docs, metadata_docs
from lsio_ray.zarr.loader import Loader, default_loader
from lsio_ray.zarr.write import write_files, write_units

__all__ = ["create", "save"]


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


def _root(path: str | os.PathLike[str]) -> str:
    root = resolve(path)
    return root.rstrip("/") if is_remote(root) else root


def _prepare_prefix(root: str, overwrite: bool) -> None:
    """:func:`_prepare_dir` for an array on object storage: refuse an existing node
    unless ``overwrite``, which deletes everything under the prefix."""
    names = ("zarr.json", ".zarray", ".zgroup")
    exists = any(objects.object_size(join(root, m)) is not None for m in names)
    if exists and not overwrite:
        raise FileExistsError(errno.EEXIST, "a Zarr node exists already (overwrite=False)", root)
    if overwrite:
        objects.delete_prefix(root)


def _prepare_dir(path: str, overwrite: bool) -> None:
    if is_remote(path):
        _prepare_prefix(path, overwrite)
        return
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
    docs = metadata_docs(**kwargs)
    parsed = {k: json.loads(v) for k, v in docs.items()}
    return docs, layout_from_docs(path, parsed)


def _write_metadata(loader: Loader, path: str, docs: dict[str, bytes], fsync: bool) -> None:
    # v2: attributes first, so the array appears (with its .zarray) complete
    order = sorted(docs, key=lambda k: (k == ".zarray", k))
    for name in order:
        if is_remote(path):
            objects.put_object(join(path, name), docs[name])
            continue
        write_files(
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
    write_empty_chunks: bool = False,
) -> Array:
    """Create an empty array (all fill value) and return it open for writing.

    Arguments are zarr-python's ``create_array`` ones, with its defaults and meanings
    (codec objects from ``zarr.codecs`` or numcodecs for v2): ``filters``,
    ``compressors`` and ``serializer`` default to ``"auto"`` (zarr-python's defaults:
    zstd for v3 and v2), ``compressors=None`` writes the chunks uncompressed.
    zarr-python builds the metadata, which is written atomically.  ``overwrite=True``
    removes what is at ``path`` first.  ``path``: a directory, or an object-storage URL
    (``s3://bucket/prefix``; see the module docstring).  ``write_empty_chunks``: zarr-python's array
    config of that name (default False: chunks all fill value are not stored, see
    :mod:`lsio_ray.zarr.encode`), for the writes through the returned array."""
    root = _root(path)
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
    return Array(layout, loader, write_empty_chunks=write_empty_chunks)


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
    write_empty_chunks: bool = False,
) -> Array:
    """Write a whole numpy array as a new Zarr array: every chunk (or shard) first, the
    metadata last, so the array appears complete or not at all.  Arguments as for
    :func:`create`.  ``data`` may be an array read from disk (an lsio_ray or zarr-python
    array on a local directory or an object-storage URL): ``path`` must then not be that
    directory or prefix, lie inside it or hold it (symbolic links resolved), else
    :class:`ValueError` -- with
    ``overwrite=True`` that would remove the array being saved.  Chunks all fill value
    are not stored unless ``write_empty_chunks=True``, as in zarr-python."""
    root = _root(path)
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
    out = Array(layout, loader, write_empty_chunks=write_empty_chunks)
    write_units(out, (0,) * arr.ndim, arr.shape, arr, fsync=fsync, fresh=True)
    _write_metadata(loader, root, docs, fsync)
    return out
