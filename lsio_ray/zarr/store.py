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

The store only moves bytes: zarr-python decodes.  ``lz.use_lsio_pipeline()``
(:mod:`lsio_ray.zarr.pipeline`) hands reads of unsharded raw / zstd / blosc chunks of a
local store to lsio_ray's C decoder (xarray: 3.1x zarr's LocalStore warm, 3.5x cold on 2
cores; benchmarks/results/xarray.md).  ``Store("s3://bucket/prefix")`` keeps its values
on object storage (:mod:`lsio_ray.zarr.store_remote`).
"""

from __future__ import annotations

import asyncio
import os
import stat
import weakref
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.store import (
    ByteRequest,
)
from zarr.abc.store import (
    Store as _ZarrStore,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from lsio_ray.engine import Engine
from lsio_ray.errors import BufferPoolTooSmallError, RangePastEOFError
from lsio_ray.io.ops import OpGroup, get_ranges, put_file
from lsio_ray.io.url import is_remote, resolve
from lsio_ray.paths import is_within, remove_stray_temp_files, temp_file_pid
from lsio_ray.zarr.store_io import read_plain, remove, shared_engine, to_range
from lsio_ray.zarr.store_remote import ObjectLocation

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Store", "shared_engine"]

_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)

_CHECKED_DIRS_MAX = 1 << 16  # directories a store remembers as checked (then starts over)


class Store(_ZarrStore):
    """A zarr-python store for a local directory or a URL, read and written through an
    lsio engine.

    ``root``: the directory (made on open unless read-only), or a URL of object storage
    (``s3://bucket/prefix``, ``gs://``, ``az://``; ``http(s)://`` is always read-only):
    see :mod:`lsio_ray.zarr.store_remote`; ``url`` is that URL (None for a directory).
    ``storage_options`` (URLs only) go to :func:`lsio_ray.io.stores.configure` for the
    bucket and travel with the pickle (else: the environment's).  ``engine``: the
    :class:`~lsio_ray.Engine` to use (default: one shared per process).  The store pickles
    as its root and mode; the engine is not carried over (the receiver uses its own).

    Keys never leave the root, unlike zarr's ``LocalStore``: a key (or prefix) that is
    absolute or has an empty, ``.`` or ``..`` component (``"../x"``, ``"/etc/x"``,
    ``"a/../../x"``, ``"a//b"``) raises :class:`ValueError` naming it, in every method.
    Symbolic links inside the store are followed only while they stay inside the root
    (realpath'd): a key reaching a link that leads out of it -- to read, write, delete
    or list -- raises :class:`ValueError` naming the key and the link, and nothing is
    read or written through it.  Deleting (``delete``, ``delete_dir``, ``clear``)
    removes links themselves, never what they point to; listings skip links leading
    out.  The check runs on every call, just before the engine opens the path: it is
    not atomic with the open, so another process with write access to the store's
    directories could still swap a directory for a link in between.

    Writes are atomic: the value goes to ``KEY.lsio-tmp.PID.N...`` beside the key, then
    is renamed over it.  A writer killed between the two (``kill -9``, OOM, power loss)
    leaves that temp file behind, as large as the value.  The first write of a store
    into a directory removes the temp files there of writers that are gone (PID not
    alive on this machine, unmodified for a minute; see
    :func:`lsio_ray.paths.remove_stray_temp_files`); listings never show temp files."""

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True
    supports_partial_writes: bool = False

    root: Path  # a directory; on object storage the URL (a str), as `url`

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        read_only: bool = False,
        engine: Engine | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(
                f"'root' must be a string or Path instance. Got an instance of {type(root)} "
                "instead."
            )
        where = resolve(root)
        self._remote: ObjectLocation | None = None
        if is_remote(where):
            self._remote = ObjectLocation(where, storage_options)
            if self._remote.http:
                read_only = True  # HTTP serves reads only
            self.root = self._remote.url  # type: ignore[assignment]
        elif storage_options:
            raise ValueError(f"{where}: storage_options are for URLs, not local directories")
        else:
            self.root = Path(where)
        super().__init__(read_only=read_only)
        self._engine = engine
        # key directories ("a/c/0") a read found free of links leading out
        self._checked_dirs: set[str] = set()
        # directories this store wrote into, their stray temp files removed
        self._swept_dirs: set[str] = set()
        # gets waiting for the next read, per event loop (see get); a loop closed before
        # its read took them does not keep them
        self._pending: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            list[tuple[BufferPrototype, str, ByteRequest | None, asyncio.Future[Buffer | None]]],
        ] = weakref.WeakKeyDictionary()

    # -- identity, pickling, mode --------------------------------------------------------
    @property
    def url(self) -> str | None:
        """The store's URL (``s3://bucket/prefix``) on object storage, else None."""
        return None if self._remote is None else self._remote.url

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
        state["_checked_dirs"] = set()
        state["_swept_dirs"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pending = weakref.WeakKeyDictionary()
        if self._remote is not None:
            self._remote.configure()

    def with_read_only(self, read_only: bool = False) -> Self:
        """A new (unopened) store on the same root and engine with the given mode."""
        if self._remote is not None:
            return type(self)(
                self._remote.url,
                read_only=read_only,
                engine=self._engine,
                storage_options=self._remote.storage_options or None,
            )
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
        if self._remote is not None:
            self._remote.check_bucket()
            return
        if not self.read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.exists():
            raise FileNotFoundError(f"{self.root} does not exist")

    def _ensure_open_sync(self) -> None:
        if not self._is_open:
            self._prepare()
            self._is_open = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self._where == other._where

    def __hash__(self) -> int:
        return hash((type(self), self._where))

    @property
    def _where(self) -> str:
        return self.root.as_posix() if self._remote is None else self._remote.url

    def __str__(self) -> str:
        return f"lsio://{self._where}" if self._remote is None else self._where

    def __repr__(self) -> str:
        return f"lsio_ray.zarr.Store('{self._where}')"

    # -- keys: relative paths that stay inside the root --------------------------------
    def _parts(self, key: str, *, prefix: bool = False) -> list[str]:
        """The components of ``key`` (a prefix: one trailing ``/`` allowed, ``""`` is the
        root); :class:`ValueError` naming the key when it is absolute or has an empty,
        ``.`` or ``..`` component -- it would name a path outside the store."""
        if not isinstance(key, str):
            raise TypeError(f"a store key must be a str, not {type(key)}")
        text = key[:-1] if prefix and key.endswith("/") else key
        if not text:
            if prefix:
                return []
            raise ValueError(f"store key {key!r} is empty ({self})")
        parts = text.split("/")
        if any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise ValueError(
                f"store key {key!r} is not a path inside {self}: keys are relative, "
                "with no empty, '.' or '..' component"
            )
        return parts

    def _path(self, key: str, *, prefix: bool = False, read: bool = False) -> str:
        """The file of ``key`` under the root, after checking that it stays there: a
        valid key (:meth:`_parts`) whose existing components are not symbolic links
        leading out of the root (:class:`ValueError` naming the key and the link).
        Links inside the store that stay inside it are followed.

        Every component is checked (an ``lstat`` each) for writes, deletes and
        listings.  ``read=True``: the directories a read already found free of links
        leading out are remembered (an ``lstat`` costs as much as a quarter of a small
        cached chunk's read), so a read checks its file only; they are forgotten when
        this store deletes anything."""
        parts = self._parts(key, prefix=prefix)
        root = os.fspath(self.root)
        if not parts:
            return root
        rel = "/".join(parts)
        full = f"{root}/{rel}"
        parent = rel.rpartition("/")[0]
        if read and parent in self._checked_dirs:
            to_check = [full]  # the directories were found fine by an earlier read
        else:
            to_check = []
            path = root
            for name in parts:
                path = f"{path}/{name}"
                to_check.append(path)
        for path in to_check:
            try:
                st = os.lstat(path)
            except OSError:
                # missing (the rest is too), or unreachable (ENAMETOOLONG, EACCES...):
                # what lstat cannot reach the engine's open cannot either, and it
                # reports the error (a missing key, or the OSError) as for any key
                return full
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(path)
                if not is_within(target, os.path.realpath(root)):
                    raise ValueError(
                        f"store key {key!r} leads out of {self}: {path} is a symbolic link "
                        f"to {target}"
                    )
        if read and parent and len(to_check) > 1:
            if len(self._checked_dirs) >= _CHECKED_DIRS_MAX:
                self._checked_dirs.clear()
            self._checked_dirs.add(parent)
        return full

    def _inside(self, path: str) -> bool:
        """Whether the entry ``path`` (under the root) is not a symbolic link leading
        out of the root."""
        if not os.path.islink(path):
            return True
        return is_within(os.path.realpath(path), os.path.realpath(self.root))

    # -- reading -------------------------------------------------------------------------
    def _read_many(
        self, prototype: BufferPrototype, key_ranges: list[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        """All ranges as one engine group; missing keys give None."""
        if not key_ranges:
            return []
        if self._remote is not None:
            return self._remote.read_many(self.engine, prototype, key_ranges, _as_value)
        ops = [get_ranges(self._path(k, read=True), [to_range(r)]) for k, r in key_ranges]
        engine = self.engine
        result = engine.submit(OpGroup(ops), order="operation", errors="return")
        out: list[Buffer | None] = [None] * len(key_ranges)
        half = engine.pool_bytes // 2
        for i, chunk in enumerate(result):  # errors="return": failures are chunks too
            key, req = key_ranges[i]
            if chunk.error is None:
                out[i] = _as_value(engine, chunk, prototype, half)
            elif isinstance(
                chunk.error, (FileNotFoundError, IsADirectoryError, NotADirectoryError)
            ):
                out[i] = None
            elif isinstance(chunk.error, (RangePastEOFError, BufferPoolTooSmallError)):
                # a range cut by the end of the file, or larger than the pool
                try:
                    path = self._path(key, read=True)
                    out[i] = prototype.buffer.from_bytes(read_plain(path, req))
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
        if self._remote is not None:
            return await asyncio.to_thread(self._remote.exists, key)
        return os.path.isfile(self._path(key))

    async def getsize(self, key: str) -> int:
        """The stored size of ``key`` in bytes."""
        if self._remote is not None:
            return await asyncio.to_thread(self._remote.getsize, key)
        return os.path.getsize(self._path(key))

    # -- writing -------------------------------------------------------------------------
    def _write(self, key: str, value: Buffer) -> None:
        if not isinstance(value, Buffer):
            raise TypeError(
                f"lsio_ray.zarr.Store.set(): `value` must be a Buffer instance. Got an "
                f"instance of {type(value)} instead."
            )
        if self._remote is not None:
            self._remote.write(self.engine, key, value)
            return
        path = self._path(key)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        if parent not in self._swept_dirs:
            # temp files of writers killed mid-write (see remove_stray_temp_files)
            remove_stray_temp_files(parent, recursive=False)
            if len(self._swept_dirs) >= _CHECKED_DIRS_MAX:
                self._swept_dirs.clear()
            self._swept_dirs.add(parent)
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
        """Store ``value`` under ``key`` unless it already holds one (on object
        storage: one conditional PUT, atomic)."""
        if self._remote is not None:
            if not self._is_open:
                await self._open()
            self._check_writable()
            await asyncio.to_thread(self._remote.write_if_absent, key, value)
        elif not await self.exists(key):
            await self.set(key, value)

    def _delete(self, key: str) -> None:
        if self._remote is not None:
            self._remote.delete(key)
            return
        self._checked_dirs.clear()
        remove(self._path(key))

    def delete_sync(self, key: str) -> None:
        """Remove ``key`` (a directory: everything under it); missing keys are fine."""
        self._ensure_open_sync()
        self._check_writable()
        self._delete(key)

    async def delete(self, key: str) -> None:
        """Remove ``key`` (a directory: everything under it); missing keys are fine."""
        self._check_writable()
        await asyncio.to_thread(self._delete, key)

    def _delete_dir(self, prefix: str) -> None:
        if self._remote is not None:
            self._remote.delete_dir(prefix)
            return
        self._checked_dirs.clear()
        path = self._path(prefix, prefix=True)
        if path == os.fspath(self.root):
            self._clear_root()
        elif os.path.isfile(path) and not os.path.islink(path):
            raise ValueError(f"delete_dir was passed a {prefix=!r} that is a file")
        elif os.path.lexists(path):
            remove(path)

    def _clear_root(self) -> None:
        """Remove everything in the root directory (the directory itself stays: it may
        be a symbolic link's target, or a mount point)."""
        self._checked_dirs.clear()
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            names = []
        for name in names:
            remove(os.path.join(self.root, name))

    async def delete_dir(self, prefix: str) -> None:
        """Remove every key under ``prefix`` (``""``: every key).  Symbolic links are
        removed, never followed."""
        self._check_writable()
        await asyncio.to_thread(self._delete_dir, prefix)

    async def clear(self) -> None:
        """Remove every key.  Symbolic links are removed, never followed; the root
        directory itself stays."""
        self._check_writable()
        if self._remote is not None:
            await asyncio.to_thread(self._remote.delete_dir, "")
            return
        await asyncio.to_thread(self._clear_root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- listing -------------------------------------------------------------------------
    def _walk(self, base: str) -> list[str]:
        """The keys under the directory ``base``: its regular files, and links to
        files inside the root; links to directories are not descended."""
        root = os.fspath(self.root)
        out = []
        for d, _, files in os.walk(base):
            for name in files:
                if temp_file_pid(name) is not None:
                    continue  # an engine temp file (a write in flight, or a stray)
                p = os.path.join(d, name)
                if self._inside(p) and os.path.isfile(p):
                    out.append(os.path.relpath(p, root).replace(os.sep, "/"))
        return out

    async def list(self) -> AsyncIterator[str]:
        """Every key in the store."""
        if self._remote is not None:
            for key in await asyncio.to_thread(self._remote.list_prefix, ""):
                yield key
            return
        for key in self._walk(os.fspath(self.root)):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Every key under ``prefix`` (:class:`ValueError` for a prefix naming a path
        outside the store)."""
        if self._remote is not None:
            for key in await asyncio.to_thread(self._remote.list_prefix, prefix):
                yield key
            return
        for key in self._walk(self._path(prefix, prefix=True)):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """The keys and "directories" directly under ``prefix`` (:class:`ValueError` for
        a prefix naming a path outside the store)."""
        if self._remote is not None:
            for name in await asyncio.to_thread(self._remote.list_dir, prefix):
                yield name
            return
        base = self._path(prefix, prefix=True)
        try:
            names = [
                n
                for n in os.listdir(base)
                if temp_file_pid(n) is None and self._inside(os.path.join(base, n))
            ]
        except (FileNotFoundError, NotADirectoryError):
            names = []
        for name in names:
            yield name


def _as_value(engine: Engine, chunk: Any, prototype: BufferPrototype, half: int = -1) -> Buffer:
    """A read chunk as zarr's value.  Ownership: the value is the pool buffer itself (no
    copy: a copy into fresh memory cost more than the read, ~40 us per 80 KiB chunk),
    given back to the pool when zarr drops the last array viewing it.  While values held
    by zarr fill half the pool, the rest are copied (and their buffers given back at
    once), so reads always have room to land."""
    if half < 0:
        half = engine.pool_bytes // 2
    if engine.stats()["pool_in_use"] <= half:
        data = chunk.data
    else:
        with chunk:
            data = chunk.data.copy()
    return prototype.buffer.from_array_like(data)
