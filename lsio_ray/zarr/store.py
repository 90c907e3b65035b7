"""A zarr-python v3 store on the lsio engine: ``zarr.open(store=lsio_ray.zarr.Store(path))``.

Reads go through a local :class:`lsio_ray.Engine` (io_uring or pread threads):
:meth:`Store.get_partial_values` hands *all* the ranges of a call to the engine as one op
group, and the ``get`` calls started in one turn of the event loop (zarr starts up to
``async.concurrency`` at once) are read together the same way: one batch and one thread
hop instead of one per key.  A value is the engine's pool buffer itself (no copy), given
back when zarr drops it; once such values fill half the pool, the rest are copies, so
reads always have room to land.  Writes are atomic (temp file, write, rename) through
the engine's ``put_file``.  Listing and deletion use the file system directly.  The async
methods run the blocking engine calls in a worker thread; the ``*_sync`` methods call
them directly, so zarr's synchronous fast path needs no event loop hop at all.

>>> import zarr, lsio_ray.zarr as lz
>>> z = zarr.open(store=lz.Store("data.zarr"), mode="r")

The store only moves bytes: zarr-python still decodes every chunk itself.  For fast
reads, open arrays with lsio_ray's codec pipeline as well (:mod:`lsio_ray.zarr.pipeline`):
``lz.use_lsio_pipeline()`` (for the process, or ``with lz.use_lsio_pipeline(): ...``)
makes zarr hand reads of unsharded raw / zstd / blosc chunks to lsio_ray's C decoder,
which writes them straight into zarr's output (xarray: ``with lz.use_lsio_pipeline():
xr.open_zarr(lz.Store(path))["v"].values`` is 3.1x zarr's LocalStore warm and 3.5x cold
on 2 cores, BENCHMARKS.md issue 5).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import weakref
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    SuffixByteRequest,
)
from zarr.abc.store import (
    Store as _ZarrStore,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from lsio_ray.engine import Engine
from lsio_ray.errors import BufferPoolTooSmallError, RangePastEOFError
from lsio_ray.ops import ByteRange, OpGroup, get_ranges, put_file

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Store", "shared_engine"]

_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)

_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()
_ENGINE_PID = -1


def shared_engine() -> Engine:
    """The process-wide engine that stores use unless given one (made on first use)."""
    global _ENGINE, _ENGINE_PID
    with _ENGINE_LOCK:
        if _ENGINE is None or _ENGINE_PID != os.getpid():
            _ENGINE = Engine()
            _ENGINE_PID = os.getpid()
        return _ENGINE


def _to_range(req: ByteRequest | None) -> ByteRange:
    if req is None:
        return ByteRange()
    if isinstance(req, RangeByteRequest):
        return ByteRange(req.start, max(req.start, req.end))
    if isinstance(req, OffsetByteRequest):
        return ByteRange(req.offset)
    if isinstance(req, SuffixByteRequest):
        return ByteRange.last(req.suffix) if req.suffix > 0 else ByteRange(0, 0)
    raise TypeError(f"Unexpected byte_range, got {req}.")


def _read_plain(path: str, req: ByteRequest | None) -> bytes:
    """A plain-Python read with LocalStore's clamping rules (ranges past the end are cut)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if req is None:
            f.seek(0)
            return f.read()
        if isinstance(req, RangeByteRequest):
            f.seek(min(req.start, size))
            return f.read(max(0, req.end - req.start))
        if isinstance(req, OffsetByteRequest):
            f.seek(min(req.offset, size))
            return f.read()
        if isinstance(req, SuffixByteRequest):
            f.seek(max(0, size - req.suffix))
            return f.read()
    raise TypeError(f"Unexpected byte_range, got {req}.")


class Store(_ZarrStore):
    """A zarr-python store for a local directory, read and written through an lsio engine.

    ``root``: the directory (made on open unless read-only).  ``engine``: the
    :class:`~lsio_ray.Engine` to use (default: one shared per process).  The store pickles
    as its root and mode; the engine is not carried over (the receiver uses its own)."""

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True
    supports_partial_writes: bool = False

    root: Path

    def __init__(
        self, root: str | os.PathLike[str], *, read_only: bool = False, engine: Engine | None = None
    ) -> None:
        super().__init__(read_only=read_only)
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(
                f"'root' must be a string or Path instance. Got an instance of {type(root)} "
                "instead."
            )
        self.root = Path(os.path.abspath(os.fspath(root)))
        self._engine = engine
        # gets waiting for the next read, per event loop (see get); a loop closed before
        # its read took them does not keep them
        self._pending: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            list[tuple[BufferPrototype, str, ByteRequest | None, asyncio.Future[Buffer | None]]],
        ] = weakref.WeakKeyDictionary()

    # -- identity, pickling, mode --------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The engine this store reads and writes through."""
        if self._engine is None:
            return shared_engine()
        return self._engine

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_engine"] = None
        del state["_pending"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pending = weakref.WeakKeyDictionary()

    def with_read_only(self, read_only: bool = False) -> Self:
        """A new (unopened) store on the same root and engine with the given mode."""
        return type(self)(self.root, read_only=read_only, engine=self._engine)

    @classmethod
    async def open(cls, *args: Any, **kwargs: Any) -> Self:
        """Make the store and open it (``mode`` is accepted and ignored, as LocalStore)."""
        kwargs.pop("mode", None)
        store = cls(*args, **kwargs)
        await store._open()
        return store

    async def _open(self) -> None:
        self._prepare()
        await super()._open()

    def _prepare(self) -> None:
        if not self.read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.exists():
            raise FileNotFoundError(f"{self.root} does not exist")

    def _ensure_open_sync(self) -> None:
        if not self._is_open:
            self._prepare()
            self._is_open = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self.root == other.root

    def __hash__(self) -> int:
        return hash((type(self), self.root))

    def __str__(self) -> str:
        return f"lsio://{self.root.as_posix()}"

    def __repr__(self) -> str:
        return f"lsio_ray.zarr.Store('{self.root.as_posix()}')"

    def _path(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"a store key must be a str, not {type(key)}")
        return os.path.join(self.root, key)

    # -- reading -------------------------------------------------------------------------
    def _read_many(
        self, prototype: BufferPrototype, key_ranges: list[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        """All ranges as one engine group; missing keys give None."""
        if not key_ranges:
            return []
        ops = [get_ranges(self._path(k), [_to_range(r)]) for k, r in key_ranges]
        engine = self.engine
        result = engine.submit(OpGroup(ops), order="operation", errors="return")
        out: list[Buffer | None] = [None] * len(key_ranges)
        half = engine.stats()["pool_bytes"] // 2
        for i, chunk in enumerate(result):  # errors="return": failures are chunks too
            key, req = key_ranges[i]
            if chunk.error is None:
                # Ownership: the value is the pool buffer itself (no copy: a copy into
                # fresh memory cost more than the read, ~40 us per 80 KiB chunk), given
                # back to the pool when zarr drops the last array viewing it.  While
                # values held by zarr fill half the pool, the rest are copied (and their
                # buffers given back at once), so reads always have room to land.
                if engine.stats()["pool_in_use"] <= half:
                    data = chunk.data
                else:
                    with chunk:
                        data = chunk.data.copy()
                out[i] = prototype.buffer.from_array_like(data)
            elif isinstance(
                chunk.error, (FileNotFoundError, IsADirectoryError, NotADirectoryError)
            ):
                out[i] = None
            elif isinstance(chunk.error, (RangePastEOFError, BufferPoolTooSmallError)):
                # a range cut by the end of the file, or larger than the pool
                try:
                    out[i] = prototype.buffer.from_bytes(_read_plain(self._path(key), req))
                except _MISSING:
                    out[i] = None
            else:
                raise chunk.error
        return out

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """The value of ``key`` (or a byte range of it); None when missing."""
        self._ensure_open_sync()
        return self._read_many(prototype or default_buffer_prototype(), [(key, byte_range)])[0]

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """The value of ``key`` (or a byte range of it); None when missing.

        Gets made in the same turn of the event loop (zarr-python starts up to
        ``async.concurrency`` of them at once) are read together: one thread hop and one
        engine group for all of them, instead of one each."""
        if not self._is_open:
            await self._open()
        proto = prototype or default_buffer_prototype()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Buffer | None] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._flush, loop)
        pending.append((proto, key, byte_range, fut))
        return await fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the gets gathered in this turn of ``loop`` (one worker thread call)."""
        batch = self._pending.pop(loop, [])
        if not batch:
            return

        def read() -> list[Buffer | BaseException | None]:
            out: list[Buffer | BaseException | None] = [None] * len(batch)
            protos: dict[int, list[int]] = {}
            for i, item in enumerate(batch):
                protos.setdefault(id(item[0]), []).append(i)
            for idx in protos.values():
                proto = batch[idx[0]][0]
                try:
                    got: list[Any] = self._read_many(proto, [batch[i][1:3] for i in idx])
                except Exception:  # one key's error must not fail the others: each alone
                    got = []
                    for i in idx:
                        try:
                            got.append(self._read_many(proto, [batch[i][1:3]])[0])
                        except Exception as exc:
                            got.append(exc)
                for i, value in zip(idx, got, strict=True):
                    out[i] = value
            return out

        def done(f: asyncio.Future[list[Buffer | BaseException | None]]) -> None:
            exc = None if f.cancelled() else f.exception()
            for i, (_, _, _, fut) in enumerate(batch):
                if fut.done():  # its caller was cancelled
                    continue
                if f.cancelled():
                    fut.cancel()
                elif exc is not None:
                    fut.set_exception(exc)
                else:
                    value = f.result()[i]
                    if isinstance(value, BaseException):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)

        try:
            loop.run_in_executor(None, read).add_done_callback(done)
        except RuntimeError as exc:  # e.g. the loop's executor is shut down
            for _, _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Many ranges of many keys, submitted to the engine as one batch."""
        if not self._is_open:
            await self._open()
        return await asyncio.to_thread(self._read_many, prototype, list(key_ranges))

    async def exists(self, key: str) -> bool:
        """True when ``key`` holds a value."""
        return os.path.isfile(self._path(key))

    async def getsize(self, key: str) -> int:
        """The stored size of ``key`` in bytes."""
        return os.path.getsize(self._path(key))

    # -- writing -------------------------------------------------------------------------
    def _write(self, key: str, value: Buffer) -> None:
        if not isinstance(value, Buffer):
            raise TypeError(
                f"lsio_ray.zarr.Store.set(): `value` must be a Buffer instance. Got an "
                f"instance of {type(value)} instead."
            )
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = np.ascontiguousarray(value.as_numpy_array()).view(np.uint8).ravel()
        for _ in self.engine.submit(OpGroup([put_file(path, data)])):
            pass

    def set_sync(self, key: str, value: Buffer) -> None:
        """Store ``value`` under ``key`` (atomically: temp file, write, rename)."""
        self._ensure_open_sync()
        self._check_writable()
        self._write(key, value)

    async def set(self, key: str, value: Buffer) -> None:
        """Store ``value`` under ``key`` (atomically: temp file, write, rename)."""
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(self._write, key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Store ``value`` under ``key`` unless it already holds one."""
        if not await self.exists(key):
            await self.set(key, value)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def delete_sync(self, key: str) -> None:
        """Remove ``key`` (a directory: everything under it); missing keys are fine."""
        self._ensure_open_sync()
        self._check_writable()
        self._delete(key)

    async def delete(self, key: str) -> None:
        """Remove ``key`` (a directory: everything under it); missing keys are fine."""
        self._check_writable()
        await asyncio.to_thread(self._delete, key)

    async def delete_dir(self, prefix: str) -> None:
        """Remove every key under ``prefix``."""
        self._check_writable()
        path = self._path(prefix)
        if os.path.isdir(path):
            await asyncio.to_thread(shutil.rmtree, path)
        elif os.path.isfile(path):
            raise ValueError(f"delete_dir was passed a {prefix=!r} that is a file")

    async def clear(self) -> None:
        """Remove every key."""
        self._check_writable()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- listing -------------------------------------------------------------------------
    def _walk(self, base: Path) -> list[str]:
        root = self.root.as_posix() + "/"
        return [p.as_posix().replace(root, "", 1) for p in base.rglob("*") if p.is_file()]

    async def list(self) -> AsyncIterator[str]:
        """Every key in the store."""
        for key in self._walk(self.root):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Every key under ``prefix``."""
        for key in self._walk(self.root / prefix.rstrip("/")):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """The keys and "directories" directly under ``prefix``."""
        base = self.root / prefix
        try:
            names = [p.name for p in base.iterdir()]
        except (FileNotFoundError, NotADirectoryError):
            names = []
        for name in names:
            yield name
