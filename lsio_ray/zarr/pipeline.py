"""A zarr-python codec pipeline that reads local chunks through lsio_ray's C decoder.

zarr-python's own pipeline (:class:`~zarr.core.codec_pipeline.BatchedCodecPipeline`)
reads each chunk through the store, decodes it with numcodecs in asyncio tasks and copies
it into the output through a Buffer / NDBuffer object per chunk.  :class:`LsioCodecPipeline`
keeps all of that for writes and for anything it does not handle, and replaces the read of
local, unsharded raw / zstd / blosc chunks with one lsio read task: the chunks' files go
to the engine in batches and ``lsio_decode_batch`` decodes them in C, straight from the
engine's pool buffers into the output array (box copies included), on the loader's decode
threads, with no Python per chunk past building the plan.

Turn it on with :func:`use_lsio_pipeline` (zarr's config key ``codec_pipeline.path``),
for the whole process or for a ``with`` block; it applies to arrays *opened* while it is
set:

>>> import xarray as xr, lsio_ray.zarr as lz
>>> with lz.use_lsio_pipeline():
...     v = xr.open_zarr(lz.Store("data.zarr"))["v"].values

A read takes the lsio path when every chunk's store is an :class:`lsio_ray.zarr.Store`
or a zarr ``LocalStore`` (one store, one array directory holding ``zarr.json`` or
``.zarray``), the array is not sharded, its codecs are ones the C decoder handles (raw,
one zstd or one blosc stage; no transpose, byte swap, filters or checksum), the on-disk
metadata matches the array's codecs, chunk shape, dtype and fill value, every chunk
selection is a slice with step 1 or an integer, there are no ``drop_axes``, and the
output is a writable numpy-backed NDBuffer.  Anything else falls back to
``BatchedCodecPipeline.read`` unchanged.  Missing chunk files read as the fill value;
IO and decode errors raise (the first one wins, the rest of the read is cancelled).
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs.sharding import ShardingCodec
from zarr.core.codec_pipeline import BatchedCodecPipeline, fill_value_or_default
from zarr.registry import register_pipeline
from zarr.storage import LocalStore

from lsio_ray.zarr import _zarr_compat
from lsio_ray.zarr.array import Array, open_array
from lsio_ray.zarr.layout import ArrayLayout
from lsio_ray.zarr.loader import Loader
from lsio_ray.zarr.plan import Selection
from lsio_ray.zarr.read import BoxRead
from lsio_ray.zarr.store import Store

if TYPE_CHECKING:
    from donfig.config_obj import ConfigSet
    from zarr.abc.store import ByteGetter
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import NDBuffer
    from zarr.core.indexing import SelectorTuple

__all__ = [
    "DEFAULT_PIPELINE_PATH",
    "PIPELINE_PATH",
    "ChunkListTask",
    "LsioCodecPipeline",
    "clear_cache",
    "use_lsio_pipeline",
]

#: the ``codec_pipeline.path`` value that selects :class:`LsioCodecPipeline`
PIPELINE_PATH = "lsio_ray.zarr.pipeline.LsioCodecPipeline"
#: zarr-python's default ``codec_pipeline.path``
DEFAULT_PIPELINE_PATH = "zarr.core.codec_pipeline.BatchedCodecPipeline"

_METADATA = ("zarr.json", ".zarray")
_CACHE_SIZE = 64


def use_lsio_pipeline(enabled: bool = True) -> ConfigSet:
    """Make zarr-python open arrays with :class:`LsioCodecPipeline` (``enabled=False``:
    with zarr's default pipeline).

    Takes effect at once, for the whole process; used as a context manager
    (``with use_lsio_pipeline(): ...``) it restores the previous setting on exit.  Only
    arrays opened while it is set use the pipeline (zarr picks an array's pipeline when
    the array is opened)."""
    path = PIPELINE_PATH if enabled else DEFAULT_PIPELINE_PATH
    return zarr.config.set({"codec_pipeline.path": path})


# -- chunk keys to an lsio array ----------------------------------------------------------


@dataclass(frozen=True)
class _Resolved:
    """An lsio array opened for a store directory, and how its chunk keys look."""

    array: Array | None  # None: lsio cannot read it (the pipeline falls back)
    stamp: tuple[int, int, int]  # (mtime_ns, size, inode) of the metadata file
    head: str  # store key prefix of the array's chunk keys ("v/c/" for v3 "v", default)
    sep: str  # the chunk key separator
    signature: Any  # the codec chain as JSON, to compare with the pipeline's


class _ArrayCache:
    """Store directory -> lsio array, reopened when the metadata file changes (LRU)."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._dirs: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
        self._arrays: collections.OrderedDict[tuple[str, str], _Resolved] = (
            collections.OrderedDict()
        )

    def _put(self, cache: collections.OrderedDict, key: Any, value: Any) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > self._size:
                cache.popitem(last=False)

    def _get(self, cache: collections.OrderedDict, key: Any) -> Any:
        with self._lock:
            value = cache.get(key)
            if value is not None:
                cache.move_to_end(key)
            return value

    def resolve(self, root: str, key: str) -> _Resolved | None:
        """The array whose chunk has store key ``key`` in the store at ``root``."""
        parent = key.rpartition("/")[0]
        rel = self._get(self._dirs, (root, parent))
        stamp = _stamp(root, rel) if rel is not None else None
        if stamp is None:
            rel, stamp = _find_array_dir(root, parent)
            if rel is None or stamp is None:
                return None
            self._put(self._dirs, (root, parent), rel)
        hit: _Resolved | None = self._get(self._arrays, (root, rel))
        if hit is not None and hit.stamp == stamp:
            return hit
        res = _open(root, rel, stamp)
        self._put(self._arrays, (root, rel), res)
        return res

    def clear(self) -> None:
        """Forget every cached array."""
        with self._lock:
            self._dirs.clear()
            self._arrays.clear()


def _stamp(root: str, rel: str) -> tuple[int, int, int] | None:
    for name in _METADATA:
        try:
            st = os.stat(os.path.join(root, rel, name))
        except OSError:
            continue
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    return None


def _find_array_dir(root: str, parent: str) -> tuple[str | None, tuple[int, int, int] | None]:
    """The nearest directory at or above ``parent`` (a store key prefix) holding array
    metadata: chunk keys may hold "/" themselves ("c/0/1"), arrays do not nest."""
    rel = parent
    while True:
        stamp = _stamp(root, rel)
        if stamp is not None:
            return rel, stamp
        if not rel:
            return None, None
        rel = rel.rpartition("/")[0]


def _open(root: str, rel: str, stamp: tuple[int, int, int]) -> _Resolved:
    try:
        arr = open_array(os.path.join(root, rel))
        layout = arr.layout
        sep = layout.meta.separator
        head = ("c" + sep) if layout.meta.key_encoding == "default" else ""
        sig = _layout_signature(layout)
    except Exception:  # not an array lsio_ray reads (or not an array at all)
        return _Resolved(None, stamp, "", "", None)
    prefix = rel + "/" if rel else ""
    return _Resolved(arr, stamp, prefix + head, sep, sig)


def _layout_signature(layout: ArrayLayout) -> Any:
    meta = layout.meta
    if meta.zarr_format == 3:
        return ("v3", list(meta.codecs))
    comp = meta.compressor.get_config() if meta.compressor is not None else None
    return ("v2", [f.get_config() for f in meta.filters], comp)


_CACHE = _ArrayCache()


# -- the read task ------------------------------------------------------------------------


class ChunkListTask(BoxRead):
    """A :class:`~lsio_ray.zarr.read.BoxRead` over a given list of chunks: row ``i`` of
    ``sel`` says which chunk (``coords``), which part of it (``src_lo``..``src_hi``) and
    where that part goes in ``out`` (``dst_lo``..``dst_hi``, ``out`` having the chunk's
    rank).  ``on_done`` is called (on a loader thread) once the task is finished."""

    def __init__(
        self,
        array: Array,
        loader: Loader,
        out: np.ndarray,
        sel: Selection,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self._given = sel
        self._on_done = on_done
        super().__init__(array, loader, out, None, None)

    def _select(self, lo: Any, hi: Any) -> Selection:
        return self._given

    def _finish(self) -> None:
        super()._finish()
        if self._on_done is not None:
            self._on_done()


# -- the pipeline -------------------------------------------------------------------------

_BatchInfo = tuple["ByteGetter", "ArraySpec", "SelectorTuple", "SelectorTuple", bool]


@dataclass(frozen=True)
class LsioCodecPipeline(BatchedCodecPipeline):
    """zarr-python's batched pipeline with reads of local, unsharded raw / zstd / blosc
    chunks done by lsio_ray (engine IO, C decoding straight into the output); every
    other read, and every write, is ``BatchedCodecPipeline``'s.  Select it with
    :func:`use_lsio_pipeline` (see the module docstring for when a read takes the lsio
    path)."""

    @cached_property
    def _signature(self) -> Any:
        """The codec chain in the form :func:`_layout_signature` gives, or None."""
        try:
            codecs = list(self)
            if len(codecs) == 1 and type(codecs[0]).__name__ == "V2Codec":
                v2: Any = codecs[0]
                comp = v2.compressor.get_config() if v2.compressor is not None else None
                return ("v2", [f.get_config() for f in v2.filters or ()], comp)
            return ("v3", [_zarr_compat._plain(c.to_dict()) for c in codecs])
        except Exception:
            return None

    async def read(
        self,
        batch_info: Iterable[_BatchInfo],
        out: NDBuffer,
        drop_axes: tuple[int, ...] = (),
    ) -> None:
        """Read the chunks of ``batch_info`` into ``out`` (see the class docstring)."""
        items = batch_info if isinstance(batch_info, list) else list(batch_info)
        plan = self._plan(items, out, drop_axes)
        if plan is None:
            await super().read(items, out, drop_axes)
            return
        await _run(*plan)

    def _plan(
        self, items: list[_BatchInfo], out: NDBuffer, drop_axes: tuple[int, ...]
    ) -> tuple[Array, np.ndarray, Selection] | None:
        """(array, destination, selection) for the lsio path, or None to fall back."""
        if drop_axes or not items or isinstance(self.array_bytes_codec, ShardingCodec):
            return None
        dst = out.as_ndarray_like()
        if type(dst) is not np.ndarray or not dst.flags.writeable:
            return None
        getter, spec, csel0, _, _ = items[0]
        store = getattr(getter, "store", None)
        if not isinstance(store, (Store, LocalStore)) or getattr(store, "url", None):
            return None  # the lsio path reads local directories (a URL store: zarr's)
        root = os.path.abspath(os.fspath(store.root))
        key0 = getter.path
        res = _CACHE.resolve(root, key0)
        if res is None or res.array is None or res.signature != self._signature:
            return None
        arr = res.array
        lay = arr.layout
        nd = lay.ndim
        if lay.shards is not None or lay.codec.c_codec is None or nd == 0 or nd > 8:
            return None
        if tuple(spec.shape) != lay.chunks or dst.dtype != lay.dtype:
            return None
        try:
            if np.dtype(spec.dtype.to_native_dtype()) != lay.dtype:
                return None
            fill = np.asarray(fill_value_or_default(spec), dtype=lay.dtype)
            if fill.tobytes() != lay.fill_value.tobytes():
                return None
        except Exception:
            return None
        if not isinstance(csel0, tuple) or len(csel0) != nd:
            return None
        ints = [d for d, s in enumerate(csel0) if _is_int(s)]
        if dst.ndim != nd - len(ints):
            return None
        sel = _selection(items, store, res, nd, ints)
        if sel is None:
            return None
        view = np.expand_dims(dst, tuple(ints)) if ints else dst
        if not _boxes_ok(sel, lay.chunks, view.shape):
            return None
        return arr, view, sel


def _is_int(s: Any) -> bool:
    return isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_))


def _selection(
    items: list[_BatchInfo], store: Any, res: _Resolved, nd: int, ints: list[int]
) -> Selection | None:
    """The chunks of ``items`` as a :class:`Selection`, or None if one is not a plain
    box of a chunk of this array (another store, another array, a step, an array index)."""
    head, sep = res.head, res.sep
    cut = len(head)
    tails: list[str] = []
    src: list[int] = []
    dst: list[int] = []
    int_set = set(ints)
    try:
        for getter, _spec, csel, osel, _ in items:
            if getter.store is not store:
                return None
            key = getter.path
            if not key.startswith(head):
                return None
            tails.append(key[cut:])
            if len(csel) != nd or len(osel) != nd - len(ints):
                return None
            j = 0
            for d, s in enumerate(csel):
                if d in int_set:
                    if not _is_int(s):
                        return None
                    i = int(s)
                    src += (i, i + 1)
                    dst += (0, 1)
                    continue
                o = osel[j]
                j += 1
                if (
                    type(s) is not slice
                    or type(o) is not slice
                    or s.step not in (None, 1)
                    or o.step not in (None, 1)
                ):
                    return None
                src += (s.start, s.stop)
                dst += (o.start, o.stop)
        n = len(tails)
        coords = np.array([t.split(sep) for t in tails]).astype(np.int64).reshape(n, nd)
        src_a = np.asarray(src, dtype=np.int64).reshape(n, nd, 2)
        dst_a = np.asarray(dst, dtype=np.int64).reshape(n, nd, 2)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None
    if coords.size and coords.min() < 0:
        return None
    src_lo, src_hi = src_a[:, :, 0].copy(), src_a[:, :, 1].copy()
    chunks = np.asarray(res.array.chunks if res.array is not None else (), dtype=np.int64)
    full = (src_lo == 0).all(axis=1) & (src_hi == chunks).all(axis=1)
    return Selection(coords, src_lo, src_hi, dst_a[:, :, 0].copy(), dst_a[:, :, 1].copy(), full)


def _boxes_ok(sel: Selection, chunks: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Every source box inside its chunk, every destination box inside the output, the
    two of the same shape (C writes through these: nothing may fall outside)."""
    c = np.asarray(chunks, dtype=np.int64)
    s = np.asarray(shape, dtype=np.int64)
    ext = sel.src_hi - sel.src_lo
    return bool(
        (sel.src_lo >= 0).all()
        and (sel.src_hi <= c).all()
        and (ext > 0).all()
        and (sel.dst_lo >= 0).all()
        and (sel.dst_hi <= s).all()
        and (sel.dst_hi - sel.dst_lo == ext).all()
    )


async def _run(array: Array, out: np.ndarray, sel: Selection) -> None:
    """Run one :class:`ChunkListTask` and wait for it without blocking the event loop."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    def on_done() -> None:  # a loader thread
        try:
            loop.call_soon_threadsafe(wake)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    loader = array.loader
    task = ChunkListTask(array, loader, out, sel, on_done)
    loader.start(task)
    try:
        await fut
    except BaseException:
        task.cancel()
        raise
    task.wait(0)


def clear_cache() -> None:
    """Forget the lsio arrays the pipeline opened (they are reopened on their next read;
    a changed metadata file is noticed without this)."""
    _CACHE.clear()


register_pipeline(LsioCodecPipeline)
