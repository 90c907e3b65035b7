"""The object-storage side of :class:`lsio_ray.zarr.Store`: ``Store("s3://bucket/prefix")``.

Reads go through the engine as op groups (``get_ranges("s3://...")``), so they get the
IO service's remote backend: ranges coalesced into few GETs, a bound on requests in
flight, retries with backoff.  Writes are ``put_file`` ops (one PUT each: atomic on an
object store); ``set_if_not_exists`` is a conditional PUT.  Sizes, listings and deletes
are the small synchronous calls of :mod:`lsio_ray.io.objects`.  The same code serves
``gs://``, ``az://`` and ``http(s)://`` (read-only) through obstore.

Keys are hostile: each is checked (:func:`lsio_ray.io.url.check_key`) before it is
joined to the store's prefix, so no key names an object outside it.
"""

from __future__ import annotations

import errno
from typing import Any

import numpy as np
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from lsio_ray.engine import Engine
from lsio_ray.errors import RangePastEOFError
from lsio_ray.io import objects, stores, url
from lsio_ray.io.ops import ByteRange, OpGroup, get_ranges, put_file
from lsio_ray.zarr.store_io import to_range

__all__ = ["ObjectLocation"]


def _clamped(req: ByteRequest | None, size: int) -> ByteRange:
    """``req`` cut to an object of ``size`` bytes, as zarr's LocalStore cuts it."""
    if isinstance(req, RangeByteRequest):
        start = min(req.start, size)
        return ByteRange(start, min(size, max(start, req.end)))
    if isinstance(req, OffsetByteRequest):
        return ByteRange(min(req.offset, size), size)
    if isinstance(req, SuffixByteRequest):
        return ByteRange(max(0, size - req.suffix), size)
    return ByteRange(0, size)


class ObjectLocation:
    """Where a remote store's values live: ``url`` (``scheme://bucket/prefix``, no
    trailing ``/``), its keys checked and joined under it."""

    def __init__(self, location: str, storage_options: dict[str, Any] | None = None) -> None:
        store_url, prefix = url.split(location)
        prefix = prefix.rstrip("/")
        if prefix:
            url.check_key(prefix, location)
        self.store_url = store_url
        self.url = f"{store_url}/{prefix}" if prefix else store_url
        self.storage_options = dict(storage_options or {})
        if storage_options:
            stores.configure(store_url, **storage_options)
        self.http = store_url.split("://", 1)[0] in ("http", "https")

    def configure(self) -> None:
        """Give the process this store's options again (after unpickling)."""
        if self.storage_options:
            stores.configure(self.store_url, **self.storage_options)

    # -- keys ------------------------------------------------------------------------------
    def key_url(self, key: str, *, prefix: bool = False) -> str:
        """The URL of ``key`` (``prefix``: a trailing ``/`` allowed, ``""`` the store);
        :class:`ValueError` naming the key when it would leave the store's prefix."""
        if not isinstance(key, str):
            raise TypeError(f"a store key must be a str, not {type(key)}")
        text = key[:-1] if prefix and key.endswith("/") else key
        if not text:
            if prefix:
                return self.url
            raise ValueError(f"store key {key!r} is empty ({self.url})")
        bad = text.startswith("/") or "\0" in text or any(c in text for c in "?#")
        try:
            url.check_key(text, self.url)
        except ValueError:
            bad = True
        if bad:
            raise ValueError(
                f"store key {key!r} is not a key inside {self.url}: keys are relative, with "
                "no empty, '.' or '..' segment, backslash, '?' or '#'"
            )
        return f"{self.url}/{text}"

    def check_bucket(self) -> None:
        """:class:`FileNotFoundError` naming the URL when the bucket does not exist (a
        listing; HTTP has no listing, and a store that may not list is taken as is)."""
        if self.http:
            return
        try:
            objects.list_dir(self.url)
        except OSError as exc:
            if exc.errno == errno.ENOENT or "NoSuchBucket" in str(exc):
                raise FileNotFoundError(
                    errno.ENOENT, f"no such bucket or container ({exc.strerror})", self.url
                ) from None
            if exc.errno == errno.EACCES:
                return
            raise

    # -- reading ---------------------------------------------------------------------------
    def read_many(
        self,
        engine: Engine,
        prototype: BufferPrototype,
        key_ranges: list[tuple[str, ByteRequest | None]],
        as_value: Any,
    ) -> list[Buffer | None]:
        """All ranges as one op group; missing keys give None; ranges past the end are
        cut (a second read of what is there)."""
        ops = [get_ranges(self.key_url(k), [to_range(r)]) for k, r in key_ranges]
        result = engine.submit(OpGroup(ops), order="operation", errors="return")
        out: list[Buffer | None] = [None] * len(key_ranges)
        for i, chunk in enumerate(result):
            key, req = key_ranges[i]
            if chunk.error is None:
                out[i] = as_value(engine, chunk, prototype)
            elif isinstance(chunk.error, FileNotFoundError):
                out[i] = None
            elif isinstance(chunk.error, RangePastEOFError) and chunk.error.file_size is not None:
                rng = _clamped(req, chunk.error.file_size)
                if rng.end == rng.start:
                    out[i] = prototype.buffer.from_bytes(b"")
                    continue
                again = engine.submit(OpGroup([get_ranges(self.key_url(key), [rng])]))
                got = [c.tobytes() for c in again]
                out[i] = prototype.buffer.from_bytes(got[0])
            else:
                raise chunk.error
        return out

    def getsize(self, key: str) -> int:
        """The size of ``key``'s object (:class:`FileNotFoundError` when there is none)."""
        u = self.key_url(key)
        size = objects.object_size(u)
        if size is None:
            raise FileNotFoundError(errno.ENOENT, "no such key", u)
        return size

    def exists(self, key: str) -> bool:
        """True when ``key`` holds a value (a HEAD)."""
        return objects.object_size(self.key_url(key)) is not None

    # -- writing ---------------------------------------------------------------------------
    def write(self, engine: Engine, key: str, value: Buffer) -> None:
        """``value`` as the object of ``key`` (one PUT through the engine)."""
        data = np.ascontiguousarray(value.as_numpy_array()).view(np.uint8).ravel()
        for _ in engine.submit(OpGroup([put_file(self.key_url(key), data)])):
            pass

    def write_if_absent(self, key: str, value: Buffer) -> None:
        """``value`` as the object of ``key`` unless there is one (a conditional PUT)."""
        data = np.ascontiguousarray(value.as_numpy_array()).view(np.uint8).ravel()
        objects.put_object_if_absent(self.key_url(key), data)

    def delete(self, key: str) -> None:
        """Delete ``key``'s object (missing is fine)."""
        u = self.key_url(key)
        objects.delete_objects([u])

    def delete_dir(self, prefix: str) -> None:
        """Delete every object under ``prefix`` (``""``: every object of the store)."""
        u = self.key_url(prefix, prefix=True)
        base = u.rstrip("/")
        names = [f"{base}/{n}" for n, _ in objects.list_prefix(u) if n]
        if names:
            objects.delete_objects(names)

    # -- listing ---------------------------------------------------------------------------
    def list_prefix(self, prefix: str) -> list[str]:
        """Keys (relative to the store) under ``prefix``, whole segments only."""
        u = self.key_url(prefix, prefix=True)
        rel = u[len(self.url) :].lstrip("/")
        return [f"{rel}/{n}" if rel else n for n, _ in objects.list_prefix(u) if n]

    def list_dir(self, prefix: str) -> list[str]:
        """Names of the keys and "directories" directly under ``prefix``."""
        objs, dirs = objects.list_dir(self.key_url(prefix, prefix=True))
        return sorted(set(objs) | set(dirs))
