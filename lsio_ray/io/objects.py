"""Small whole-object operations on object storage and HTTP, synchronous: metadata
documents, listings, deletes -- what the Zarr layer and the conversion job need beside
the bulk reads and writes of the IO service (:mod:`lsio_ray.io.remote`).

Every call goes through the store of :func:`lsio_ray.io.stores.store_for` (its retries
and timeouts), and every error names the URL.  Reads are bounded (``max_bytes``): a
metadata document is not allowed to be a multi-gigabyte object.
"""

from __future__ import annotations

import errno
from typing import Any

from lsio_ray.io import url
from lsio_ray.io.stores import describe, errno_of, store_for

__all__ = [
    "delete_objects",
    "delete_prefix",
    "list_dir",
    "list_prefix",
    "object_size",
    "put_object",
    "put_object_if_absent",
    "read_object",
]

#: the largest object :func:`read_object` reads by default (a metadata document)
MAX_DOCUMENT_BYTES = 64 << 20


def _split(u: str) -> tuple[Any, str]:
    store_url, key = url.split(u)
    return store_for(store_url), key


def _error(exc: BaseException, u: str, what: str) -> OSError:
    code = -errno_of(exc)
    return OSError(code, f"{what}: {describe(exc)}", u)


def read_object(u: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes | None:
    """The bytes of the object at URL ``u``, or None when there is none (404).  An
    object larger than ``max_bytes`` is refused with ``ValueError`` naming it."""
    import obstore

    store, key = _split(u)
    try:
        res = obstore.get(store, key)
        size = int(res.meta["size"])
        if size > max_bytes:
            raise ValueError(f"{u}: {size} bytes, more than the {max_bytes} allowed here")
        return bytes(res.bytes())
    except ValueError:
        raise
    except Exception as exc:
        if errno_of(exc) == -errno.ENOENT:
            return None
        raise _error(exc, u, "read") from None


def object_size(u: str) -> int | None:
    """The size of the object at ``u``, or None when there is none."""
    import obstore

    store, key = _split(u)
    try:
        return int(obstore.head(store, key)["size"])
    except Exception as exc:
        if errno_of(exc) == -errno.ENOENT:
            return None
        raise _error(exc, u, "head") from None


def put_object(u: str, data: Any) -> None:
    """Write ``data`` (bytes-like) as the object at ``u`` (atomic on object stores: a
    reader sees the old object or the new one)."""
    import obstore

    store, key = _split(u)
    url.check_key(key, u)
    try:
        obstore.put(store, key, memoryview(data))
    except Exception as exc:
        raise _error(exc, u, "write") from None


def list_prefix(u: str, limit: int | None = None) -> list[tuple[str, int]]:
    """``(key relative to u, size)`` of every object under the prefix ``u`` (sorted);
    ``limit``: stop listing after that many objects (the first ones the store lists).
    HTTP has no listing: ``ValueError`` naming the URL."""
    import obstore

    if url.scheme_of(u) in ("http", "https"):
        raise ValueError(f"{u}: HTTP servers have no listing of objects (object storage has)")
    store, key = _split(u)
    prefix = key.rstrip("/")
    out: list[tuple[str, int]] = []
    try:
        for batch in obstore.list(store, prefix=prefix or None):
            for meta in batch:
                path = str(meta["path"])
                if prefix and not (path == prefix or path.startswith(prefix + "/")):
                    continue  # object_store lists whole path segments; be sure anyway
                out.append((path[len(prefix) :].lstrip("/"), int(meta["size"])))
            if limit is not None and len(out) >= limit:
                del out[limit:]
                break
    except Exception as exc:
        raise _error(exc, u, "list") from None
    out.sort()
    return out


def delete_prefix(u: str) -> int:
    """Delete every object under the prefix ``u``; returns how many."""
    import obstore

    store, key = _split(u)
    prefix = key.rstrip("/")
    if not prefix:
        raise ValueError(f"{u}: refusing to delete a whole bucket")
    names = [n for n, _ in list_prefix(u)]
    paths = [f"{prefix}/{n}" if n else prefix for n in names]
    try:
        for i in range(0, len(paths), 1000):
            obstore.delete(store, paths[i : i + 1000])
    except Exception as exc:
        raise _error(exc, u, "delete") from None
    return len(paths)


def put_object_if_absent(u: str, data: Any) -> bool:
    """Write ``data`` as the object at ``u`` unless one is there already (atomically, a
    conditional PUT); True when written."""
    import obstore

    store, key = _split(u)
    url.check_key(key, u)
    try:
        obstore.put(store, key, memoryview(data), mode="create")
    except Exception as exc:
        if type(exc).__name__ in ("AlreadyExistsError", "PreconditionError"):
            return False
        raise _error(exc, u, "write") from None
    return True


def list_dir(u: str) -> tuple[list[str], list[str]]:
    """``(objects, prefixes)`` directly under the prefix ``u``: names relative to it."""
    import obstore

    store, key = _split(u)
    prefix = key.rstrip("/")
    try:
        res = obstore.list_with_delimiter(store, prefix or None)
    except Exception as exc:
        raise _error(exc, u, "list") from None
    cut = len(prefix) + 1 if prefix else 0
    objs = [str(m["path"])[cut:] for m in res["objects"]]
    dirs = [str(p)[cut:] for p in res["common_prefixes"]]
    return sorted(objs), sorted(dirs)


def delete_objects(urls: list[str]) -> None:
    """Delete the objects at ``urls`` (one that is not there is fine), a batch request
    per store and 1000 keys."""
    import obstore

    by_store: dict[str, list[str]] = {}
    for u in urls:
        store_url, key = url.split(u)
        by_store.setdefault(store_url, []).append(url.check_key(key, u))
    for store_url, keys in by_store.items():
        store = store_for(store_url)
        for i in range(0, len(keys), 1000):
            try:
                obstore.delete(store, keys[i : i + 1000])
            except Exception as exc:
                if errno_of(exc) == -errno.ENOENT:
                    continue
                raise _error(exc, f"{store_url}/{keys[i]}", "delete") from None
